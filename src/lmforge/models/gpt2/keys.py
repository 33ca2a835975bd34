"""GPT-2's checkpoint keys, literally: module names equal HF's, Conv1D weights are stored (in, out) in both
libraries, so a state dict moves between them untouched; only these rules differ from a plain load.

    transformer.wte.weight                     (V, C)      token embeddings; lm_head.weight is tied to it
    transformer.wpe.weight                     (P, C)      learned positions
    transformer.h.{i}.ln_1.{weight,bias}
    transformer.h.{i}.attn.c_attn.{weight,bias}  (C, 3C)   Q|K|V, Conv1D layout (in, out)
    transformer.h.{i}.attn.c_proj.{weight,bias}  (C, C)
    transformer.h.{i}.ln_2.{weight,bias}
    transformer.h.{i}.mlp.c_fc.{weight,bias}     (C, I)
    transformer.h.{i}.mlp.c_proj.{weight,bias}   (I, C)
    transformer.h.{i}.crossattention.{c_attn (C, 2C): K|V, q_attn (C, C), c_proj}, ln_cross_attn  (add_cross_attention)
    transformer.ln_f.{weight,bias}
    lm_head.weight | score.weight | classifier.{weight,bias}
Checkpoints of the base model (OpenAI's original upload) have no `transformer.` prefix; the loader adds or strips it.
"""

from __future__ import annotations

import re

from ...hub import KeyRules

BASE_MODEL_PREFIX = "transformer"
TIED_WEIGHTS = {"lm_head.weight": "transformer.wte.weight"}
KEY_RULES = KeyRules(
    ignored=(
        # Old checkpoints carry the causal mask as buffers (a (1, 1, P, P) triangle and a -1e4 constant);
        # masks are built from the input now, as in transformers.
        re.compile(r"(^|\.)h\.\d+\.(attn|crossattention)\.(bias|masked_bias)$"),
    ),
)
