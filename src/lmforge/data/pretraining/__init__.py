"""BERT pretraining data: documents.py (tokenized documents), instances.py (NSP sentence pairs or packed
MLM instances), cache.py (the memory-mapped cache); dynamic masking and batches live in data/collators.py and
data/batches.py.

The recipe follows Google BERT's `create_pretraining_data.py`, with masking moved out of the
static data and into the collator (RoBERTa's "dynamic masking"), so every epoch sees new masks:

1. `tokenize_documents` turns documents (lists of sentences, from `lmforge.data.corpus`) into token
   ids, batch-encoded with the fast `tokenizers` backend, plus a word-start flag per token.
2. `create_instances` (in memory) / `build_or_load_cache` (on disk) cut each document into
   instances. With NSP: `[CLS] A [SEP] B [SEP]`, B being the true continuation or (50%) a random
   span of another document. Without NSP (MLM only): contiguous sentences packed as `[CLS] A [SEP]`.
3. `MaskingCollator` pads a list of instances and masks 15% of tokens (80% [MASK] / 10% random /
   10% unchanged), optionally whole words, from an explicitly passed `torch.Generator`.
4. `PretrainingBatches` is the resumable, shardable, infinite batch source for the training loop.

An *instance* is a dict of numpy arrays of one sequence length L:
`input_ids` int32 [L], `token_type_ids` int8 [L], `word_starts` bool [L] and, with NSP,
`next_sentence_label` int (0 = IsNext, 1 = NotNext, as in Hugging Face).

Internally an instance is first a *span*: token ranges of A and B in the flat token array of the
corpus. Sentences of a document are stored back to back, so "some contiguous sentences", "truncate
from the front" and "put the unused sentences back" are just integer range edits, no token copies.
"""
