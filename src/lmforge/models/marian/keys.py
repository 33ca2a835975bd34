"""Marian's checkpoint keys: BART's names (`models/bart/keys.py`) without `layernorm_embedding`, with these
differences:

    model.shared.weight                                (V, C)    share_encoder_decoder_embeddings=True: one table
    model.encoder.embed_tokens.weight                  (V, C)    tied to model.shared, or the source table
    model.decoder.embed_tokens.weight                  (V_t, C)  tied to model.shared, or the target table
    model.{encoder,decoder}.embed_positions.weight     (P, C)    sinusoids: computed, never saved, never loaded
    final_logits_bias                                  (1, V_t)  non-zero in the released checkpoints
    lm_head.weight                                     (V_t, C)  tied to the decoder's table (not written)
"""

from __future__ import annotations

import re

from ...hub import KeyRules

SHARED_BASE = {"encoder.embed_tokens.weight": "shared.weight", "decoder.embed_tokens.weight": "shared.weight"}


def tied_weights(shared: bool, prefix: str, lm_head: bool) -> dict[str, str]:
    """target key -> source key of the tied tables, for one configuration of the model."""
    tied = {f"{prefix}{k}": f"{prefix}{v}" for k, v in SHARED_BASE.items()} if shared else {}
    if lm_head:
        tied["lm_head.weight"] = f"{prefix}shared.weight" if shared else f"{prefix}decoder.embed_tokens.weight"
    return tied


KEY_RULES = KeyRules(
    ignored=(
        # Older conversions saved the sinusoids; they are computed from the shape, never overwritten by a file.
        re.compile(r"(^|\.)(encoder|decoder)\.embed_positions\.weight$"),
        re.compile(r"(^|\.)(encoder|decoder)\.version$"),
    ),
)
