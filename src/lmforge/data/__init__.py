"""Data pipelines: raw-text corpora, BERT pretraining instances and batches, fine-tuning task data."""
