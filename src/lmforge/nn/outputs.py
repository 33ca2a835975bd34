"""What a decoder stack hands back on request: the per-layer hidden states and attention probabilities."""

from __future__ import annotations

from torch import Tensor


class LayerOutputs:
    """Collects, only when asked (`output_hidden_states` / `output_attentions`), the stack's input and each
    layer's output, and each layer's attention probabilities; `tuples` returns them as transformers does."""

    def __init__(self, x: Tensor, output_hidden_states: bool, output_attentions: bool):
        self.hidden_states = [x] if output_hidden_states else None
        self.attentions = [] if output_attentions else None

    def add(self, x: Tensor, probs: Tensor | None) -> None:
        if self.hidden_states is not None:
            self.hidden_states.append(x)
        if self.attentions is not None:
            self.attentions.append(probs)

    def tuples(self, final: Tensor) -> tuple[tuple[Tensor, ...] | None, tuple[Tensor, ...] | None]:
        """(hidden_states, attentions), each None when not asked for. `final` (the final norm's output)
        replaces the last layer's output: as in HF, the last entry is the normed output."""
        hidden_states = None
        if self.hidden_states is not None:
            hidden_states = (*self.hidden_states[:-1], final)
        return hidden_states, tuple(self.attentions) if self.attentions is not None else None
