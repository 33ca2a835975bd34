"""HF-compatible Tokenizer over the `tokenizers` library: HF folders (loading.py), per-family templates
(templates.py), training (training.py); `Tokenizer`, `BatchEncoding`, `AutoTokenizer` in tokenizer.py.

Folder format (read and written): `tokenizer.json` (preferred) or `vocab.txt` (BERT WordPiece),
`tokenizer_config.json`, `special_tokens_map.json`. Saved folders load in `transformers.AutoTokenizer`.

`train_tokenizer` trains a WordPiece (BERT) or byte-level BPE vocabulary from a stream of texts. Both
BERT kinds ("wordpiece", "bpe") start with BERT's special tokens `[PAD] [UNK] [CLS] [SEP] [MASK]` (ids 0-4)
and use BERT's `[CLS] A [SEP] B [SEP]` template, so every BERT head (MLM included) works with either; "gpt2"
is byte-level BPE for causal LMs (`<|endoftext|>` as BOS/EOS/UNK, `<|pad|>`, no template, case kept). The
same texts and options give byte-identical files in every process.
"""

from .tokenizer import AutoTokenizer, BatchEncoding, Tokenizer
from .training import train_tokenizer

__all__ = ["AutoTokenizer", "BatchEncoding", "Tokenizer", "train_tokenizer"]
