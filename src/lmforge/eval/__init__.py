"""Metrics (metrics.py: accuracy, F1, MCC, correlations, entity F1), and scoring a model on encoded examples
(scoring.py)."""
