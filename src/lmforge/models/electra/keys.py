"""ELECTRA's checkpoint keys, literally: module names equal HF's, so a state dict moves between the libraries
untouched; only these rules differ from a plain load.

    electra.embeddings.{word,position,token_type}_embeddings.weight  (V|P|S, E)
    electra.embeddings.LayerNorm.{weight,bias}                       (E,)
    electra.embeddings_project.{weight,bias}                         (C, E)   only when E != C
    electra.encoder.layer.{i}.*                                      BERT's encoder layer, same names
    discriminator_predictions.{dense (C, C), dense_prediction (1, C)}          ElectraForPreTraining
    generator_predictions.{dense (E, C), LayerNorm (E,)}                      ElectraForMaskedLM
    generator_lm_head.{weight (V, E): tied to the word embeddings, bias (V,)}
    classifier.{dense (C, C), out_proj (L, C)}                               ElectraForSequenceClassification
    classifier.{weight,bias} (L, C)                                          ElectraForTokenClassification
There is no pooler. TF-era LayerNorm names (gamma/beta) are renamed as for BERT.
"""

from __future__ import annotations

import re

from ...hub import KeyRules
from ..bert.keys import LEGACY_KEY_RENAMES

BASE_MODEL_PREFIX = "electra"
TIED_WEIGHTS = {"generator_lm_head.weight": "electra.embeddings.word_embeddings.weight"}
# Buffers some checkpoints carry (HF's embeddings register position_ids / token_type_ids): dropped silently.
IGNORED_KEY_PATTERNS = (
    re.compile(r"(^|\.)embeddings\.position_ids$"),
    re.compile(r"(^|\.)embeddings\.token_type_ids$"),
)
KEY_RULES = KeyRules(renames=LEGACY_KEY_RENAMES, ignored=IGNORED_KEY_PATTERNS)
