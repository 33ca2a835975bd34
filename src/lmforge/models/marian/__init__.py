"""Marian: MarianModel, MarianMTModel (BART's layers, sinusoidal positions, shared or separate vocabularies).
Importing this package registers the family with the Auto classes (model_type "marian")."""

from ...auto import register_model
from .config import MarianConfig
from .model import MarianModel, MarianMTModel

register_model("marian", MarianConfig, {"base": MarianModel, "seq2seq-lm": MarianMTModel})

__all__ = ["MarianConfig", "MarianMTModel", "MarianModel"]
