"""Model FLOPs of a BERT encoder over real tokens (padding never counted): what `mfu.py` divides by,
and what `inference.py` reports as the cost of transformers' padding. No timing here, so both import it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from common import minilm_path


@dataclass
class EncoderShape:
    layers: int  # L
    hidden: int  # C
    intermediate: int  # I
    vocab: int  # V

    @classmethod
    def of(cls, config) -> EncoderShape:
        return cls(config.num_hidden_layers, config.hidden_size, config.intermediate_size, config.vocab_size)

    @property
    def layer_matmul_params(self) -> int:
        """Non-embedding matmul parameters of the encoder layers: L * (4 C^2 + 2 C I)."""
        return self.layers * (4 * self.hidden**2 + 2 * self.hidden * self.intermediate)


def encoder_flops(shape: EncoderShape, lengths: Sequence[int], training: bool = False, mlm_positions: int = 0,
                  pooler: bool = True) -> float:
    """Model FLOPs of a BERT encoder over sequences of real lengths T_i (padding never counted).

    A multiply-add is 2 FLOPs; only matmuls count (embedding lookups, LayerNorm, GELU, softmax and
    biases are a few percent and left out). With P = L (4 C^2 + 2 C I) (Q, K, V, output, and the
    two feed-forward matrices of each layer):

        forward  = 2 P sum_i T_i                 every real token through the layers' matmuls
                 + 4 L C sum_i T_i^2             Q K^T and attn @ V: each token against the T_i
                                                 tokens of its own sequence (2 T_i C FLOPs each)
                 + 2 C^2 n_sequences             the pooler, on [CLS] (when the model has one)
                 + 2 (C^2 + C V) mlm_positions   MLM head (transform + decoder) on predicted tokens only
        training = 3 forward                     backward = 2 x forward (grads of inputs and weights)

    i.e. per token 6 P + 12 L C T in training: "6 x non-embedding parameters" plus the attention term.
    Classifier / NSP heads (2 C x labels per sequence) are negligible and left out.
    """
    C = shape.hidden
    forward = 2 * shape.layer_matmul_params * sum(lengths)
    forward += 4 * shape.layers * C * sum(t * t for t in lengths)
    if pooler:
        forward += 2 * C * C * len(lengths)
    forward += 2 * (C * C + C * shape.vocab) * mlm_positions
    return float(3 * forward if training else forward)


def padding_flops_ratio(inference) -> float:
    """Model FLOPs of transformers' padded inference batches / those of the real tokens alone."""
    shape = minilm_shape()
    return encoder_flops(shape, inference.padded_lengths) / encoder_flops(shape, inference.lengths)


def minilm_shape() -> EncoderShape:
    from lmforge import AutoConfig

    return EncoderShape.of(AutoConfig.from_pretrained(minilm_path()))
