"""ELECTRA's configuration: `ElectraConfig`, with the field names and defaults of transformers' ElectraConfig."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ..bert.config import BertConfig
from ..config import positive_int


@dataclass
class ElectraConfig(BertConfig):
    """BERT's fields (ELECTRA's encoder is BERT's) plus `embedding_size`: the width of the token, position and
    segment embeddings, projected to `hidden_size` by `embeddings_project` when the two differ. The defaults
    are transformers' (ELECTRA-Small's discriminator). HF's `summary_*` fields (its multiple-choice head) are
    kept in `extra` and written back unchanged."""

    model_type: ClassVar[str] = "electra"

    embedding_size: int = 128
    hidden_size: int = 256
    num_attention_heads: int = 4
    intermediate_size: int = 1024

    def _validate(self) -> None:
        super()._validate()
        positive_int(self, "embedding_size")
