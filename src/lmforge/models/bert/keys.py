"""BERT checkpoint key rules: TF-era LayerNorm names, and keys some checkpoints carry that hold nothing."""

import re

from ...hub import KeyRules

# Foreign / legacy key fragments -> ours. Applied to every key on load.
LEGACY_KEY_RENAMES = {
    "LayerNorm.gamma": "LayerNorm.weight",
    "LayerNorm.beta": "LayerNorm.bias",
}
# Keys some checkpoints carry that hold nothing a model needs (buffers, or a duplicate of a
# tied parameter); dropped silently rather than reported as unexpected.
IGNORED_KEY_PATTERNS = (
    re.compile(r"(^|\.)embeddings\.position_ids$"),
    re.compile(r"(^|\.)embeddings\.token_type_ids$"),
    re.compile(r"^cls\.predictions\.decoder\.bias$"),  # HF ties it to cls.predictions.bias
)
# transformers reads the decoder's bias from its own key when the decoder is not tied to the word embeddings
# (tie_word_embeddings=False); tied, it shares cls.predictions.bias. Written in both cases, as HF's checkpoints do.
SAVED_COPIES = {"cls.predictions.decoder.bias": "cls.predictions.bias"}
BERT_KEY_RULES = KeyRules(renames=LEGACY_KEY_RENAMES, ignored=IGNORED_KEY_PATTERNS, saved_copies=SAVED_COPIES)
