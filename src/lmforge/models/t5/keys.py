"""T5's checkpoint keys, literally. Module names equal HF's, so HF folders load as they are; this file lists
what else the loaders need.

    shared.weight                                                       (V, C)
    encoder.embed_tokens.weight, decoder.embed_tokens.weight            = shared.weight (never written)
    {encoder,decoder}.block.{i}.layer.0.SelfAttention.{q,k,v,o}.weight  (H*D, C) / (C, H*D), no biases
    {encoder,decoder}.block.0.layer.0.SelfAttention.relative_attention_bias.weight   (buckets, H): block 0 only
    {encoder,decoder}.block.{i}.layer.0.layer_norm.weight               (C,)
    decoder.block.{i}.layer.1.EncDecAttention.{q,k,v,o}.weight          cross-attention
    decoder.block.{i}.layer.1.layer_norm.weight
    encoder.block.{i}.layer.1.DenseReluDense.{wi,wo}.weight             v1.0; v1.1: wi_0, wi_1, wo
    decoder.block.{i}.layer.2.DenseReluDense...                         (the decoder's feed-forward is layer 2)
    {encoder,decoder}.block.{i}.layer.{1,2}.layer_norm.weight
    {encoder,decoder}.final_layer_norm.weight                           (C,)
    lm_head.weight                                                      (V, C): = shared.weight when tied (v1.0)
"""

from __future__ import annotations

import re

from ...hub import KeyRules

# T5Model and T5ForConditionalGeneration have the same keys (no base-model prefix); the latter adds lm_head.
BASE_MODEL_PREFIX = ""
SHARED_WEIGHTS = {"encoder.embed_tokens.weight": "shared.weight", "decoder.embed_tokens.weight": "shared.weight"}
ENCODER_SHARED_WEIGHTS = {"encoder.embed_tokens.weight": "shared.weight"}
TIED_WEIGHTS = {"lm_head.weight": "shared.weight"}
# Some old checkpoints carry a relative bias on the first cross-attention, which T5 never uses (HF ignores it).
_UNUSED_CROSS_BIAS = re.compile(r"^decoder\.block\.0\.layer\.1\.EncDecAttention\.relative_attention_bias\.weight$")
KEY_RULES = KeyRules(ignored=(_UNUSED_CROSS_BIAS,))
# T5EncoderModel reads the encoder half of a full checkpoint: the decoder and lm_head are not its concern.
ENCODER_KEY_RULES = KeyRules(ignored=(_UNUSED_CROSS_BIAS, re.compile(r"^(decoder\.|lm_head\.)")))
