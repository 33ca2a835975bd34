"""MarianConfig: BartConfig's fields with Marian's defaults, plus separate target vocabularies."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ..bart.config import BartConfig
from ..config import ConfigError, positive_int


@dataclass
class MarianConfig(BartConfig):
    model_type: ClassVar[str] = "marian"
    default_num_labels: ClassVar[int] = 2

    vocab_size: int = 58101
    decoder_vocab_size: int | None = None  # target vocabulary when not shared; None means vocab_size
    max_position_embeddings: int = 1024
    d_model: int = 1024
    activation_function: str = "gelu"
    scale_embedding: bool = False
    pad_token_id: int | None = 58100
    bos_token_id: int | None = None  # HF's field; not in the pre-trained files that leave it out
    eos_token_id: int | None = 0
    decoder_start_token_id: int | None = 58100  # Marian starts decoding from the pad token
    forced_eos_token_id: int | None = 0
    share_encoder_decoder_embeddings: bool = True  # one table (`model.shared`) for source and target

    def __post_init__(self) -> None:
        if self.decoder_vocab_size is None:
            self.decoder_vocab_size = self.vocab_size  # as HF, written back to config.json
        super().__post_init__()

    def _validate(self) -> None:
        super()._validate()
        positive_int(self, "decoder_vocab_size")
        if self.share_encoder_decoder_embeddings and self.decoder_vocab_size != self.vocab_size:
            raise ConfigError(f"decoder_vocab_size ({self.decoder_vocab_size}) differs from vocab_size "
                              f"({self.vocab_size}) but share_encoder_decoder_embeddings is true")
        if not 0 <= self.pad_token_id < self.target_vocab_size:
            raise ConfigError(f"pad_token_id ({self.pad_token_id}) must be in [0, decoder_vocab_size="
                              f"{self.target_vocab_size}): the decoder pads and starts with it")

    @property
    def target_vocab_size(self) -> int:
        return self.vocab_size if self.share_encoder_decoder_embeddings else self.decoder_vocab_size
