"""What task heads share: IGNORE_INDEX, the next-token loss, the encoder-decoder's label shift and loss, logits_to_keep slicing, last-token pooling, the classification loss rule,
and the masked-LM head with its projection + loss (sparse: only the masked positions)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .mlp import DenseActNorm

IGNORE_INDEX = -100  # label of positions no loss reads (PyTorch cross-entropy's default ignore_index)


def causal_lm_loss(logits: Tensor, labels: Tensor, attention_mask: Tensor | None = None) -> Tensor:
    """Mean cross-entropy of predicting token t+1 from positions <= t; labels of IGNORE_INDEX are ignored.

    `labels` are the input ids (or a copy with IGNORE_INDEX where no loss is wanted, e.g. padding): the shift happens
    here, as in transformers. logits (B, T, V), labels (B, T); computed in fp32. Predictions made at padding
    positions (`attention_mask` 0) are not scored either: with left padding the pad before a row's first token
    would otherwise "predict" it from nothing (transformers scores that term; it differs only there).
    """
    V = logits.size(-1)
    shifted_labels = labels[:, 1:].to(logits.device)  # (B, T-1)
    if attention_mask is not None:
        from_padding = attention_mask[:, -labels.size(1):-1] == 0  # (B, T-1): the predicting position is padding
        shifted_labels = shifted_labels.masked_fill(from_padding.to(logits.device), IGNORE_INDEX)
    shifted_logits = logits[:, :-1].float().reshape(-1, V)  # (B*(T-1), V)
    return F.cross_entropy(shifted_logits, shifted_labels.reshape(-1), ignore_index=IGNORE_INDEX)


def shift_tokens_right(labels: Tensor, pad_token_id: int | None, decoder_start_token_id: int | None) -> Tensor:
    """An encoder-decoder's decoder inputs from its labels (teacher forcing): the start token, then the labels
    without their last token; IGNORE_INDEX becomes the pad id. (B, T) -> (B, T), a new tensor."""
    if decoder_start_token_id is None:
        raise ValueError("config.decoder_start_token_id is not set: it is the decoder's first input (T5 uses the "
                         "pad id, 0); set it in config.json")
    if pad_token_id is None:
        raise ValueError("config.pad_token_id is not set: labels of -100 become the pad id in the decoder's inputs")
    shifted = labels.new_empty(labels.shape)
    shifted[:, 1:] = labels[:, :-1]
    shifted[:, 0] = decoder_start_token_id
    return shifted.masked_fill_(shifted == IGNORE_INDEX, pad_token_id)


def seq2seq_lm_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Mean cross-entropy of logits (B, T, V) against labels (B, T) at the same positions (the decoder's inputs
    are the labels shifted right, so no shift here); IGNORE_INDEX ignored; in fp32."""
    return F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), labels.to(logits.device).reshape(-1),
                           ignore_index=IGNORE_INDEX)


def keep_last_positions(h: Tensor, logits_to_keep: int, labels: Tensor | None) -> Tensor:
    """h (B, T, C) -> (B, logits_to_keep, C) when logits_to_keep > 0: generation reads only the last positions,
    so the LM head need not project the others. The loss needs them all, hence the refusal with labels."""
    if not logits_to_keep:
        return h
    if labels is not None:
        raise ValueError("labels need the logits of every position: leave logits_to_keep at 0")
    return h[:, -logits_to_keep:]


def last_token_index(input_ids: Tensor | None, pad_token_id: int | None, batch_size: int) -> Tensor | int:
    """Where a causal model reads a sequence's summary: each row's rightmost token that is not `pad_token_id`
    (so left and right padding both work), or the last position when there is no pad token / no input ids.
    transformers' rule, including its refusal of batches without a pad token."""
    if pad_token_id is None:
        if batch_size != 1:
            raise ValueError("cannot pool batches of more than one sequence without a pad token: set "
                             "config.pad_token_id (the padding id the tokenizer uses)")
        return -1
    if input_ids is None:
        return -1  # embeddings give no padding information; transformers warns and does the same
    not_pad = (input_ids != pad_token_id).to(torch.int32)  # (B, T)
    positions = torch.arange(input_ids.size(-1), device=input_ids.device, dtype=torch.int32)
    return (positions * not_pad).argmax(-1)  # (B,)


def sequence_classification_loss(logits: Tensor, labels: Tensor, num_labels: int, problem_type: str | None) -> Tensor:
    """transformers' rule: regression for one label; single-label cross-entropy for integer labels;
    multi-label BCE otherwise (or as `problem_type` says)."""
    if problem_type is None:
        if num_labels == 1:
            problem_type = "regression"
        elif labels.dtype in (torch.long, torch.int, torch.int16, torch.int8, torch.uint8):
            problem_type = "single_label_classification"
        else:
            problem_type = "multi_label_classification"
    logits = logits.float()
    if problem_type == "regression":
        if num_labels == 1:
            return F.mse_loss(logits.squeeze(), labels.squeeze().to(logits.dtype))
        return F.mse_loss(logits, labels.to(logits.dtype))
    if problem_type == "single_label_classification":
        return F.cross_entropy(logits.view(-1, num_labels), labels.view(-1))
    return F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))


class MaskedLMHead(nn.Module):
    """transform (dense -> act -> LayerNorm) -> decoder (weight tied to the word embeddings) + per-token bias:
    (..., C) -> (..., V). BERT's `cls.predictions` (HF's BertLMPredictionHead names)."""

    def __init__(self, hidden_size: int, vocab_size: int, hidden_act: str, eps: float):
        super().__init__()
        self.transform = DenseActNorm(hidden_size, hidden_size, hidden_act, eps)
        self.decoder = nn.Linear(hidden_size, vocab_size, bias=False)
        self.bias = nn.Parameter(torch.zeros(vocab_size))

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(self.transform(x), self.decoder.weight, self.bias)  # (..., V)

    def loss(self, x: Tensor, targets: Tensor) -> Tensor:
        """Mean cross-entropy of the logits of x (N, C) against targets (N,). (`cpu.losses` swaps in a version
        that never materialises the (N, V) logits for autograd.)"""
        return F.cross_entropy(self(x).float(), targets)


def mlm_logits_and_loss(
    head: MaskedLMHead, sequence_output: Tensor, labels: Tensor | None, sparse: bool
) -> tuple[Tensor, Tensor | None]:
    """A masked-LM head's logits and loss; `head` maps (..., C) -> (..., V) and has `loss(x, targets)` (BERT's
    `MaskedLMHead`, ELECTRA's generator head). Dense: logits for every position (B, T, V). Sparse: only where labels != IGNORE_INDEX, (N, V), and
    with gradients enabled no logits at all (None): `head.loss` gives the loss directly.

    The sparse path is Google BERT's gather of masked positions: with 15% masking it skips ~85%
    of the vocabulary projection, the largest matmul of a small BERT. The loss is the same.
    """
    if labels is None:
        return head(sequence_output), None
    if sparse:
        flat_labels = labels.reshape(-1)  # (B*T,)
        keep = flat_labels != IGNORE_INDEX
        masked = sequence_output.reshape(-1, sequence_output.size(-1))[keep]  # (N, C)
        if torch.is_grad_enabled():
            # Training: the loss only (fused with the projection in `cpu.losses`: no (N, V) logits kept).
            return None, head.loss(masked, flat_labels[keep])
        logits = head(masked)  # (N, V)
        return logits, F.cross_entropy(logits.float(), flat_labels[keep])
    logits = head(sequence_output)  # (B, T, V)
    return logits, F.cross_entropy(logits.float().view(-1, logits.size(-1)), labels.reshape(-1))
