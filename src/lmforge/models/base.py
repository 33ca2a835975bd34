"""The small base class every lmforge model shares: init, weight tying, attention mode, CPU fast paths,
from/save_pretrained."""

from __future__ import annotations

import os
from typing import ClassVar

import torch
from torch import nn

from ..cpu import fast_paths
from ..hub import KeyRules
from ..nn.attention import DEFAULT_ATTN_IMPLEMENTATION, ENCODER_ATTN_IMPLEMENTATIONS
from .config import PretrainedConfig


def normal_init(module: nn.Linear | nn.Embedding, std: float) -> None:
    """N(0, std) weights; zero bias (linear layers, GPT-2's Conv1D) or zero padding row (embeddings).
    What BERT, GPT-2 and Llama initialise alike."""
    nn.init.normal_(module.weight, mean=0.0, std=std)
    if isinstance(module, nn.Embedding):
        if module.padding_idx is not None:
            with torch.no_grad():
                module.weight[module.padding_idx].zero_()
    elif module.bias is not None:
        nn.init.zeros_(module.bias)


class PreTrainedModel(nn.Module):
    config_class: ClassVar[type] = PretrainedConfig  # each family sets its own
    base_model_prefix: ClassVar[str] = ""
    key_rules: ClassVar[KeyRules] = KeyRules()  # the family's checkpoint key rules (legacy names, ignored keys)
    # Values `set_attn_implementation` accepts; None means the encoders' (`nn.attention.ENCODER_ATTN_IMPLEMENTATIONS`).
    attn_implementations: ClassVar[tuple[str, ...] | None] = None
    # target key -> source key, for parameters shared between modules (the MLM decoder and the
    # word embeddings). Tied targets are not written on save and need not be in a checkpoint.
    _tied_weights: ClassVar[dict[str, str]] = {}
    # target key -> source key, one parameter whatever the config says: an encoder-decoder's
    # `encoder.embed_tokens` and `decoder.embed_tokens` are its `shared` embedding (see `hub.tied_keys`).
    _shared_weights: ClassVar[dict[str, str]] = {}
    # False where dropping padding would change a public output (see BertForQuestionAnswering).
    supports_unpadding: ClassVar[bool] = True

    def __init__(self, config: PretrainedConfig):
        super().__init__()
        if not isinstance(config, self.config_class):
            raise TypeError(f"{type(self).__name__} expects a {self.config_class.__name__}, got {type(config).__name__}")
        self.config = config

    def _init_weights(self, module: nn.Module) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def post_init(self) -> None:
        self.apply(self._init_weights)
        self.tie_weights()
        # Every model starts on the default attention path; heads that cannot unpad get "sdpa".
        self.set_attn_implementation(DEFAULT_ATTN_IMPLEMENTATION)
        # The CPU fast paths replace the readable blocks they have one for (see `lmforge.cpu.fast_paths`).
        fast_paths.apply(self)

    def tie_weights(self) -> None:
        """Share parameters listed in `_tied_weights`; models with tied heads override."""

    def set_attn_implementation(self, name: str) -> PreTrainedModel:
        """"unpadded" (the default: padding dropped before the layers; outputs equal transformers' at
        real tokens, zero at padding) or "sdpa" (padded batches, transformers-identical everywhere).
        Models that cannot unpad (`supports_unpadding = False`: decoders, question answering) stay on
        "sdpa"; decoders also take "eager" (the written-out formula). Returns the model."""
        if name == "unpadded" and not self.supports_unpadding:
            name = "sdpa"
        allowed = self.attn_implementations or ENCODER_ATTN_IMPLEMENTATIONS
        if name not in allowed:
            raise ValueError(f"attn_implementation must be one of {allowed}, got {name!r}")
        for module in self.modules():
            if hasattr(module, "attn_implementation"):
                module.attn_implementation = name
        return self

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def num_parameters(self, trainable_only: bool = False) -> int:
        # parameters() yields shared (tied) parameters once.
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)

    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike,
        *,
        config: PretrainedConfig | None = None,
        num_labels: int | None = None,
        id2label: dict[int, str] | None = None,
        label2id: dict[str, int] | None = None,
        problem_type: str | None = None,
        torch_dtype: torch.dtype | str | None = None,
        dtype: torch.dtype | str | None = None,
        device: torch.device | str | None = None,
        ignore_mismatched_sizes: bool = False,
        output_loading_info: bool = False,
        attn_implementation: str = DEFAULT_ATTN_IMPLEMENTATION,
        gguf_file: str | os.PathLike | None = None,
    ):
        """Load an HF-format folder (config.json + model.safetensors / pytorch_model.bin / shards).

        Config overrides (num_labels, id2label, ...) are explicit arguments, as the common HF
        keyword arguments are. `torch_dtype="auto"` takes the dtype recorded in config.json.
        `attn_implementation="sdpa"` keeps padded batches, with outputs identical to transformers'
        at padding positions too (see `set_attn_implementation`).
        `gguf_file` (transformers' spelling): read a llama.cpp GGUF file instead, a name inside the
        folder `path` or a path of its own; its weights are dequantized (see `lmforge.gguf`).
        """
        from ..hub import load_pretrained

        if gguf_file is not None:
            from ..gguf import load_gguf_model

            return load_gguf_model(
                cls, path, gguf_file, config=config, num_labels=num_labels, id2label=id2label, label2id=label2id,
                problem_type=problem_type, torch_dtype=dtype if dtype is not None else torch_dtype, device=device,
                output_loading_info=output_loading_info, attn_implementation=attn_implementation,
            )

        return load_pretrained(
            cls, path, config=config, num_labels=num_labels, id2label=id2label, label2id=label2id,
            problem_type=problem_type, torch_dtype=dtype if dtype is not None else torch_dtype, device=device,
            ignore_mismatched_sizes=ignore_mismatched_sizes, output_loading_info=output_loading_info,
            attn_implementation=attn_implementation,
        )

    def save_pretrained(
        self, path: str | os.PathLike, *, safe_serialization: bool = True, max_shard_size: int | str = "5GB"
    ) -> None:
        """Write config.json and the weights (model.safetensors, sharded above max_shard_size)."""
        from ..hub import save_pretrained

        save_pretrained(self, path, safe_serialization=safe_serialization, max_shard_size=max_shard_size)
