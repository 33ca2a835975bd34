"""BART's checkpoint keys, literally: module names equal HF's, so a state dict moves between the two libraries
untouched; only these rules differ from a plain load. (Marian's are the same names: `models/marian/keys.py`.)

    model.shared.weight                                   (V, C)      token embeddings, encoder and decoder
    model.{encoder,decoder}.embed_tokens.weight           (V, C)      tied to model.shared (not written)
    model.{encoder,decoder}.embed_positions.weight        (P + 2, C)  learned positions, offset 2
    model.{encoder,decoder}.layernorm_embedding.{weight,bias}
    model.encoder.layers.{i}.self_attn.{q_proj,k_proj,v_proj,out_proj}.{weight,bias}
    model.encoder.layers.{i}.{self_attn_layer_norm,final_layer_norm}.{weight,bias}
    model.encoder.layers.{i}.{fc1 (F, C), fc2 (C, F)}.{weight,bias}
    model.decoder.layers.{i}.{self_attn,encoder_attn}.{q_proj,k_proj,v_proj,out_proj}.{weight,bias}
    model.decoder.layers.{i}.{self_attn_layer_norm,encoder_attn_layer_norm,final_layer_norm}.{weight,bias}
    model.decoder.layers.{i}.{fc1,fc2}.{weight,bias}
    final_logits_bias                                     (1, V)      a buffer, saved
    lm_head.weight                                        (V, C)      tied to model.shared (not written)
    classification_head.{dense (C, C), out_proj (L, C)}.{weight,bias}   BartForSequenceClassification
Checkpoints of the base model have no `model.` prefix; the loader adds or strips it.
"""

from __future__ import annotations

import re

from ...hub import KeyRules

BASE_MODEL_PREFIX = "model"
TIED_WEIGHTS_BASE = {"encoder.embed_tokens.weight": "shared.weight", "decoder.embed_tokens.weight": "shared.weight"}
TIED_WEIGHTS_HEAD = {f"model.{k}": f"model.{v}" for k, v in TIED_WEIGHTS_BASE.items()}
TIED_WEIGHTS_LM = {**TIED_WEIGHTS_HEAD, "lm_head.weight": "model.shared.weight"}
KEY_RULES = KeyRules(
    ignored=(
        # fairseq-converted checkpoints carry a version number per stack; it holds nothing the model reads.
        re.compile(r"(^|\.)(encoder|decoder)\.version$"),
    ),
)
