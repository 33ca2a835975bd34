"""Raw-text corpora, named datasets, labelled files, tasks and labels, splits, collators, resumable batch
sources; BERT pretraining data in pretraining/.

corpus.py raw text (.txt / .jsonl) -> documents | datasets.py named datasets fetched at run time |
labelled.py CSV/TSV/JSONL/CoNLL -> Example/TaggedSentence | labels.py TASKS, problem types, LabelMap |
splits.py split files, seeded splits, label fractions | collators.py features, padding and masking collators |
batches.py resumable batch sources.
"""
