"""The training forward of an encoder-decoder (BART, Marian, T5) with teacher forcing: encoder and decoder, then
the cross-entropy (optionally label-smoothed) fused with the output projection (`cpu.losses.linear_cross_entropy`).

    h = lm.head_states(source, source_mask, shift_right(labels), decoder_mask)    (B, T, C)
    loss = CE(h[labels != -100] @ W_lm^T + final_logits_bias, labels[labels != -100], label_smoothing)

The (B, T, V) logits and their gradient are a small seq2seq model's largest tensors (32 x 48 targets x 16,000
words = 98 MB each in fp32), and most of their rows are padding; here only the real target tokens are
projected, and the fused loss turns their logits into the gradient in place, chunk by chunk. The loss and
gradients are those of `lm(input_ids, attention_mask, labels=labels).loss` (label_smoothing 0), or of
`F.cross_entropy(..., label_smoothing=e)`. `Seq2SeqLMTraining` adds no parameters: its state dict is the
model's under `lm.`.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..cpu import seq2seq
from ..cpu.losses import linear_cross_entropy
from ..nn.heads import IGNORE_INDEX
from ..outputs import Seq2SeqLMOutput


class Seq2SeqLMTraining(nn.Module):
    """`lm` (`BartForConditionalGeneration`, `MarianMTModel`, `T5ForConditionalGeneration`) with the fused loss;
    forward returns only `loss`."""

    def __init__(self, lm: nn.Module, label_smoothing: float = 0.0):
        super().__init__()
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        self.lm = lm
        self.label_smoothing = label_smoothing

    def forward(self, input_ids: Tensor, labels: Tensor, attention_mask: Tensor | None = None,
                decoder_attention_mask: Tensor | None = None,
                decoder_input_ids: Tensor | None = None) -> Seq2SeqLMOutput:
        """input_ids / attention_mask (B, S): the source; labels (B, T): the targets, -100 where no loss is
        wanted; the decoder reads them shifted right unless decoder_input_ids are given."""
        if decoder_input_ids is None:
            decoder_input_ids = self.lm.prepare_decoder_input_ids_from_labels(labels)
        labels = labels.to(decoder_input_ids.device)
        if input_ids.device.type == "cpu" and seq2seq.applies(self.lm):
            rows = _decoder_rows(labels, decoder_attention_mask)  # (B, T)
            h = seq2seq.packed_decoder_states(self.lm, input_ids, attention_mask, decoder_input_ids,
                                              decoder_attention_mask, rows)  # (M, C)
            targets = labels[rows]  # (M,)
        else:
            h = self.lm.head_states(input_ids, attention_mask, decoder_input_ids, decoder_attention_mask)  # (B, T, C)
            h, targets = h.reshape(-1, h.size(-1)), labels.reshape(-1)  # (B*T, C), (B*T,)
        keep = targets != IGNORE_INDEX
        head = self.lm.get_output_embeddings()
        bias = getattr(self.lm, "final_logits_bias", None)  # BART / Marian: a (1, V) buffer
        bias = bias.view(-1) if bias is not None else head.bias
        loss = linear_cross_entropy(h[keep], head.weight, bias, targets[keep], self.label_smoothing)
        return Seq2SeqLMOutput(loss=loss)


def _decoder_rows(labels: Tensor, decoder_attention_mask: Tensor | None) -> Tensor:
    """(B, T) bool: the decoder positions to compute on packed tokens: those the loss reads and every decoder
    token before a row's last one of them (the keys of its causal attention); nothing after it."""
    reads = labels != IGNORE_INDEX  # (B, T)
    position = torch.arange(labels.size(1), device=labels.device)  # (T,)
    last = torch.where(reads, position, -1).amax(dim=1, keepdim=True)  # (B, 1)
    if decoder_attention_mask is None:  # every position is a decoder token
        return (position <= last).expand_as(reads)
    return (reads | decoder_attention_mask.bool()) & (position <= last)
