"""The training forward of causal-LM pretraining: the LM's base model, then the next-token loss fused with the
output projection (`cpu.losses.linear_cross_entropy`).

    h = base_model(input_ids)                        (B, T, C), causal attention without a mask (no padding)
    loss = CE(h[:, :-1] @ W_lm^T, labels[:, 1:])     mean over every prediction whose label is not -100

A small LM's largest tensors in a training step are its (B, T, V) logits and their gradient (32 x 128 tokens
x 8,000 words = 131 MB each in fp32); the fused loss writes the logits once and turns them into their gradient
in place, chunk by chunk. The loss and gradients are those of `lm(input_ids, labels=labels).loss`.
`CausalLMTraining` wraps the model that is exported and adds no parameters: its state dict is the model's
under `lm.`, so checkpoints of the training loop hold exactly the model.
"""

from __future__ import annotations

from torch import Tensor, nn

from ..cpu.losses import linear_cross_entropy
from ..nn.heads import IGNORE_INDEX
from ..outputs import CausalLMOutputWithPast


class CausalLMTraining(nn.Module):
    """`lm` (a `*ForCausalLM` / `*LMHeadModel`) with the fused next-token loss; forward returns only `loss`."""

    def __init__(self, lm: nn.Module):
        super().__init__()
        self.lm = lm

    def forward(self, input_ids: Tensor, labels: Tensor | None = None) -> CausalLMOutputWithPast:
        """input_ids (B, T) of unpadded blocks; labels (B, T) default to input_ids (shifted here, as in HF)."""
        labels = input_ids if labels is None else labels
        base = getattr(self.lm, self.lm.base_model_prefix)
        h = base(input_ids).last_hidden_state  # (B, T, C)
        hidden = h[:, :-1].reshape(-1, h.size(-1))  # (B*(T-1), C): position t predicts token t+1
        targets = labels[:, 1:].reshape(-1).to(h.device)  # (B*(T-1),)
        keep = targets != IGNORE_INDEX
        head = self.lm.get_output_embeddings()
        loss = linear_cross_entropy(hidden[keep], head.weight, head.bias, targets[keep])
        return CausalLMOutputWithPast(loss=loss)
