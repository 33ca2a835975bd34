"""Marian (Junczys-Dowmunt et al. 2018; the OPUS-MT translation models): BART's post-LN encoder-decoder
(`models/bart/model.py`: the same layers, stacks and forward) with these differences:

- positions are fixed sinusoids (Vaswani et al. 2017), sin in the first half of the columns and cos in the
  second (not interleaved), computed from the shape: a non-persistent buffer, so initialisation, saving and
  loading never touch it (files that carry it have it ignored, keys.py);
- no embedding LayerNorm, no position offset; token embeddings scaled by sqrt(C) in the released models;
- source and target vocabularies one table (`model.shared`) or two (`share_encoder_decoder_embeddings=False`,
  target size `decoder_vocab_size`); the LM head reads the target table;
- decoding starts from the pad token (`decoder_start_token_id`).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..bart.model import BartDecoder, BartEncoder, ConditionalGenerationModel, EncoderDecoderModel
from . import keys
from .config import MarianConfig


def sinusoids(num_positions: int, dim: int) -> Tensor:
    """(P, C): column j uses the angle pos / 10000^(2 * (j // 2) / C); sin of the even columns' angles fills
    the first ceil(C / 2) columns, cos of the odd ones the rest (HF's MarianSinusoidalPositionalEmbedding)."""
    position = torch.arange(num_positions, dtype=torch.float64)[:, None]  # (P, 1)
    j = torch.arange(dim, dtype=torch.float64)
    angle = position / torch.pow(10000.0, 2 * torch.div(j, 2, rounding_mode="floor") / dim)  # (P, C)
    half = (dim + 1) // 2
    out = torch.empty(num_positions, dim, dtype=torch.float64)
    out[:, :half] = torch.sin(angle[:, 0::2])
    out[:, half:] = torch.cos(angle[:, 1::2])
    return out.float()


class MarianSinusoidalPositionalEmbedding(nn.Module):
    def __init__(self, num_positions: int, dim: int):
        super().__init__()
        self.register_buffer("weight", sinusoids(num_positions, dim), persistent=False)  # (P, C)

    def forward(self, past: int, T: int) -> Tensor:
        return self.weight[past:past + T]  # (T, C)


class MarianModel(EncoderDecoderModel):
    config_class = MarianConfig
    key_rules = keys.KEY_RULES

    def __init__(self, config: MarianConfig):
        super().__init__(config)
        C, P, pad = config.d_model, config.max_position_embeddings, config.pad_token_id
        if config.share_encoder_decoder_embeddings:
            self.shared = nn.Embedding(config.vocab_size, C, pad)
            source = target = self.shared
        else:
            source = nn.Embedding(config.vocab_size, C, pad)
            target = nn.Embedding(config.decoder_vocab_size, C, pad)
        self._tied_weights = keys.tied_weights(config.share_encoder_decoder_embeddings, "", lm_head=False)
        self.encoder = BartEncoder(config, source, MarianSinusoidalPositionalEmbedding(P, C), None)
        self.decoder = BartDecoder(config, target, MarianSinusoidalPositionalEmbedding(P, C), None)
        self.post_init()


class MarianMTModel(ConditionalGenerationModel):
    config_class = MarianConfig
    key_rules = keys.KEY_RULES
    base_model_class = MarianModel

    def __init__(self, config: MarianConfig):
        super().__init__(config)
        self._tied_weights = keys.tied_weights(config.share_encoder_decoder_embeddings, "model.", lm_head=True)
