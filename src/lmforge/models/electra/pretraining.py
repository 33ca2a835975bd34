"""ELECTRA's pretraining objective, replaced-token detection (Clark et al. 2020): `ElectraPretrainingModel`.

A small generator (an `ElectraForMaskedLM`) fills the masked positions of a batch with tokens sampled from its
softmax; the discriminator (an `ElectraForPreTraining`, the model that is kept) sees the filled-in text and
predicts, for every non-padding token, whether it was replaced. Both train together:

    loss = mlm_loss (generator, masked positions) + disc_weight * rtd_loss (discriminator, every real token)

- The generator is `generator_size` of the discriminator's width (hidden size, feed-forward size and heads;
  same layer count): ELECTRA-Small's 1/4. Too strong a generator makes the task too hard (the paper's Fig. 3).
- Token, position and segment embeddings (and their LayerNorm) are one module shared by both; the generator's
  LM head is tied to the shared word embeddings, so `embedding_size` is the same for both and a generator
  narrower than it projects up with its own `embeddings_project`.
- Sampling is outside the graph (no gradient flows from the discriminator into the generator). A sample equal
  to the original token counts as "original".
- disc_weight 50, as in the paper: the binary loss is ~50x smaller than the vocabulary-wide one.

Not a `PreTrainedModel`: it is a training-time pair. Its training checkpoints are plain safetensors of both
(the shared tensors once); the models that are kept are exported one by one (`.discriminator`, `.generator`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...nn.heads import IGNORE_INDEX
from ...outputs import ElectraPretrainingOutput
from ..config import ConfigError
from .config import ElectraConfig
from .model import ElectraForMaskedLM, ElectraForPreTraining, replaced_token_loss


def generator_config(config: ElectraConfig, generator_size: float) -> ElectraConfig:
    """The generator's config: the discriminator's, with hidden size, feed-forward size and head count scaled by
    `generator_size` (at least one head); same layers, embedding size and vocabulary."""
    if not 0 < generator_size <= 1:
        raise ConfigError(f"generator_size must be in (0, 1], got {generator_size!r}")
    hidden = max(1, round(config.hidden_size * generator_size))
    heads = max(1, round(config.num_attention_heads * generator_size))
    if hidden % heads:
        raise ConfigError(f"generator_size {generator_size} gives hidden size {hidden}, not divisible by its "
                          f"{heads} attention heads; choose another generator_size")
    return config.replace(hidden_size=hidden, num_attention_heads=heads,
                          intermediate_size=max(1, round(config.intermediate_size * generator_size)))


class ElectraPretrainingModel(nn.Module):
    """Generator + discriminator with shared embeddings. `forward(input_ids, attention_mask, token_type_ids,
    labels)` takes a masked batch (the MLM collator's: [MASK] at the positions whose label is not -100) and
    returns an `ElectraPretrainingOutput` whose `mlm_loss` / `rtd_loss` the training loop logs."""

    def __init__(self, config: ElectraConfig, generator_size: float = 0.25, disc_weight: float = 50.0):
        super().__init__()
        self.disc_weight = disc_weight
        self.generator = ElectraForMaskedLM(generator_config(config, generator_size))
        self.discriminator = ElectraForPreTraining(config)
        # One embedding module for both (its weights now come from the discriminator's initialisation);
        # the generator's LM head is re-tied to it.
        self.generator.electra.embeddings = self.discriminator.electra.embeddings
        self.generator.tie_weights()

    @property
    def config(self) -> ElectraConfig:
        return self.discriminator.config

    def set_attn_implementation(self, name: str) -> ElectraPretrainingModel:
        self.generator.set_attn_implementation(name)
        self.discriminator.set_attn_implementation(name)
        return self

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        token_type_ids: Tensor | None = None,
        labels: Tensor | None = None,
        sampling_generator: torch.Generator | None = None,
    ) -> ElectraPretrainingOutput:
        """labels (B, T): the original token where masked, -100 elsewhere. `sampling_generator` draws the
        replacements (default: torch's global generator, whose state training checkpoints keep)."""
        if labels is None:
            raise ValueError("ElectraPretrainingModel needs labels: the original ids at masked positions, -100 elsewhere")
        masked = labels != IGNORE_INDEX  # (B, T)
        targets = labels[masked]  # (N,)

        # Generator: masked-LM logits at the masked positions only (Google BERT's gather).
        hidden = self.generator.electra(input_ids, attention_mask, token_type_ids).last_hidden_state  # (B, T, Cg)
        generator_logits = self.generator.mlm_head()(hidden[masked])  # (N, V)
        mlm_loss = F.cross_entropy(generator_logits.float(), targets)

        # Replacements sampled from the generator's softmax, outside the graph.
        with torch.no_grad():
            probs = generator_logits.detach().float().softmax(-1)  # (N, V)
            sampled = torch.multinomial(probs, 1, generator=sampling_generator).squeeze(-1)  # (N,)
            corrupted = input_ids.clone()
            corrupted[masked] = sampled
            original = input_ids.masked_scatter(masked, targets)  # (B, T)
            replaced = corrupted != original  # (B, T): a sample equal to the original counts as original

        disc_logits = self.discriminator(corrupted, attention_mask, token_type_ids).logits  # (B, T)
        rtd_loss = replaced_token_loss(disc_logits, replaced, attention_mask)
        return ElectraPretrainingOutput(
            loss=mlm_loss + self.disc_weight * rtd_loss,
            generator_logits=generator_logits,
            logits=disc_logits,
            replaced=replaced,
            mlm_loss=mlm_loss.detach(),
            rtd_loss=rtd_loss.detach(),
        )
