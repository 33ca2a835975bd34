"""Reading and writing Hugging-Face-format checkpoint folders.

A folder holds `config.json` and weights in one of (first found wins):
    model.safetensors | model.safetensors.index.json (shards) | pytorch_model.bin | pytorch_model.bin.index.json

Key rules, as in `transformers`:
- a base-model checkpoint (keys `embeddings.*`) loads into a task model (keys `bert.embeddings.*`)
  and the reverse: the `base_model_prefix` is added or stripped;
- each family's `KeyRules` (the model class's `key_rules`) maps legacy key fragments (BERT's TF-era
  LayerNorm `gamma`/`beta`) and names keys to drop silently (buffers old checkpoints carry);
- tied weights (the MLM decoder = word embeddings; an encoder-decoder's `encoder.embed_tokens` = `shared`) are
  not written and need not be present (`tied_keys`).
Every error names the file it is about. `.bin` files are only read with `weights_only=True`.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from .files import atomic_write_text
from .nn.attention import DEFAULT_ATTN_IMPLEMENTATION

logger = logging.getLogger(__name__)

SAFE_WEIGHTS_NAME = "model.safetensors"
SAFE_WEIGHTS_INDEX_NAME = "model.safetensors.index.json"
WEIGHTS_NAME = "pytorch_model.bin"
WEIGHTS_INDEX_NAME = "pytorch_model.bin.index.json"

@dataclass(frozen=True)
class KeyRules:
    """How one family's checkpoints differ from its module names (each model class sets `key_rules`)."""

    renames: dict[str, str] = field(default_factory=dict)  # legacy key fragment -> current, applied on load
    ignored: tuple[re.Pattern, ...] = ()  # keys holding nothing the model needs: dropped, not reported
    # key written on save as a copy of another weight, for readers that want both (ignored on load here)
    saved_copies: dict[str, str] = field(default_factory=dict)

    def is_ignored(self, key: str) -> bool:
        return any(p.search(key) for p in self.ignored)


DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "float64": torch.float64}


class CheckpointError(ValueError):
    """A checkpoint file cannot be used; the message names the file."""


@dataclass
class LoadingInfo:
    missing_keys: list[str] = field(default_factory=list)
    unexpected_keys: list[str] = field(default_factory=list)
    mismatched_keys: list[tuple[str, tuple, tuple]] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------- read
def _read_safetensors(file: Path) -> dict[str, Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(file))
    except (SafetensorError, OSError, RuntimeError, ValueError) as e:
        raise CheckpointError(f"{file}: cannot read safetensors file ({e}); it may be truncated or corrupt") from None


def _read_bin(file: Path) -> dict[str, Tensor]:
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(
            f"{file}: refusing to load: the pickle holds objects other than tensors ({first_line}). "
            "Only plain tensor state dicts are loaded (weights_only=True); convert it to safetensors."
        ) from None
    except (RuntimeError, EOFError, OSError) as e:
        raise CheckpointError(f"{file}: cannot read PyTorch weights file ({e}); it may be truncated or corrupt") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{file}: expected a state dict (name -> tensor), found {type(state).__name__}")
    for key, value in state.items():
        if not isinstance(value, Tensor):
            raise CheckpointError(f"{file}: entry {key!r} is a {type(value).__name__}, not a tensor")
    return state


def _read_sharded(index_file: Path, read_shard) -> dict[str, Tensor]:
    try:
        index = json.loads(index_file.read_text(encoding="utf-8"))
        weight_map = index["weight_map"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise CheckpointError(f"{index_file}: not a valid shard index ({e})") from None
    state: dict[str, Tensor] = {}
    for shard in sorted(set(weight_map.values())):
        shard_file = index_file.parent / shard
        if not shard_file.is_file():
            raise CheckpointError(f"{index_file}: lists shard {shard!r}, which is missing from {index_file.parent}")
        state.update(read_shard(shard_file))
    missing = set(weight_map) - set(state)
    if missing:
        raise CheckpointError(f"{index_file}: keys listed in the index are absent from their shards: {sorted(missing)[:5]}")
    return state


def read_state_dict(folder: str | os.PathLike) -> tuple[dict[str, Tensor], Path]:
    """All weights of a checkpoint folder, and the file (or index) they came from."""
    folder = Path(folder)
    candidates = [
        (SAFE_WEIGHTS_NAME, _read_safetensors),
        (SAFE_WEIGHTS_INDEX_NAME, lambda f: _read_sharded(f, _read_safetensors)),
        (WEIGHTS_NAME, _read_bin),
        (WEIGHTS_INDEX_NAME, lambda f: _read_sharded(f, _read_bin)),
    ]
    for name, reader in candidates:
        file = folder / name
        if file.is_file():
            return reader(file), file
    raise FileNotFoundError(f"{folder}: no weights found (looked for {', '.join(n for n, _ in candidates)})")


def normalise_keys(state: dict[str, Tensor], rules: KeyRules) -> dict[str, Tensor]:
    out = {}
    for key, value in state.items():
        for old, new in rules.renames.items():
            key = key.replace(old, new)
        out[key] = value
    return out


def adapt_prefix(state: dict[str, Tensor], model: torch.nn.Module) -> dict[str, Tensor]:
    """Add or strip the base-model prefix so a base checkpoint fits a head model and vice versa."""
    prefix = getattr(model, "base_model_prefix", "")
    if not prefix:
        return state
    model_has_base = isinstance(getattr(model, prefix, None), torch.nn.Module)
    state_has_prefix = any(k.startswith(prefix + ".") for k in state)
    if model_has_base and not state_has_prefix:
        base_keys = {k.split(".", 1)[1] for k in model.state_dict() if k.startswith(prefix + ".")}
        return {(f"{prefix}.{k}" if k in base_keys else k): v for k, v in state.items()}
    if not model_has_base and state_has_prefix:
        return {(k[len(prefix) + 1:] if k.startswith(prefix + ".") else k): v for k, v in state.items()}
    return state


def _resolve_dtype(torch_dtype, config) -> torch.dtype:
    if torch_dtype is None:
        return torch.float32
    if torch_dtype == "auto":
        return DTYPES.get(config.torch_dtype or "float32", torch.float32)
    if isinstance(torch_dtype, torch.dtype):
        return torch_dtype
    if torch_dtype in DTYPES:
        return DTYPES[torch_dtype]
    raise ValueError(f"torch_dtype {torch_dtype!r} is not supported; choose one of {sorted(DTYPES)} or 'auto'")


def with_label_overrides(config, num_labels=None, id2label=None, label2id=None, problem_type=None):
    """A copy of `config` with the task-head arguments of from_pretrained applied (the config itself is kept)."""
    overrides = {}
    if id2label is not None:
        overrides["id2label"] = id2label
        if label2id is not None:
            overrides["label2id"] = label2id
    elif num_labels is not None and num_labels != config.num_labels:
        overrides["num_labels"] = num_labels
    if problem_type is not None:
        overrides["problem_type"] = problem_type
    return config.replace(**overrides) if overrides else config


def load_pretrained(
    cls,
    path,
    *,
    config=None,
    num_labels=None,
    id2label=None,
    label2id=None,
    problem_type=None,
    torch_dtype=None,
    device=None,
    ignore_mismatched_sizes=False,
    output_loading_info=False,
    attn_implementation=DEFAULT_ATTN_IMPLEMENTATION,
):
    folder = Path(path)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: checkpoint folder not found")
    if config is None:
        config = cls.config_class.from_pretrained(folder)
    config = with_label_overrides(config, num_labels, id2label, label2id, problem_type)
    dtype = _resolve_dtype(torch_dtype, config)

    state, source = read_state_dict(folder)
    state = normalise_keys(state, cls.key_rules)
    config = _untie_if_both_stored(cls, config, state, source)
    model = cls(config).set_attn_implementation(attn_implementation)
    state = adapt_prefix(state, model)
    info = _load_into(model, state, source, ignore_mismatched_sizes)
    _report(cls.__name__, source, info)

    model.to(dtype=dtype)
    if device is not None:
        model.to(device)
    model.eval()  # as HF: a loaded model starts in inference mode
    return (model, info) if output_loading_info else model


def _untie_if_both_stored(cls, config, state: dict[str, Tensor], source: Path):
    """A config that ties the output embeddings to the input ones, and a checkpoint holding both with different
    values: the checkpoint wins and they stay apart (transformers 5 does the same; it writes
    tie_word_embeddings=true for every T5, also for v1.1 models whose lm_head is its own)."""
    if not getattr(config, "tie_word_embeddings", False):
        return config
    for target, source_key in getattr(cls, "_tied_weights", {}).items():
        if target in state and source_key in state and not torch.equal(state[target], state[source_key]):
            logger.info("%s: %s differs from %s, so they are not tied (the config says tie_word_embeddings)",
                        source, target, source_key)
            return config.untied()
    return config


def tied_keys(model) -> set[str]:
    """Keys that hold another key's parameter: `_tied_weights` when the config ties embeddings, plus
    `_shared_weights` always (the encoder's and decoder's token embeddings of an encoder-decoder are `shared`)."""
    tied = set(getattr(model, "_tied_weights", {})) if model.config.tie_word_embeddings else set()
    return tied | set(getattr(model, "_shared_weights", {}))


def _load_into(model, state: dict[str, Tensor], source: Path, ignore_mismatched_sizes: bool) -> LoadingInfo:
    expected = model.state_dict()
    tied = tied_keys(model)
    info = LoadingInfo()
    usable: dict[str, Tensor] = {}
    for key, value in state.items():
        if key not in expected:
            if not model.key_rules.is_ignored(key) and key not in tied:
                info.unexpected_keys.append(key)
            continue
        if value.shape != expected[key].shape:
            if ignore_mismatched_sizes:
                info.mismatched_keys.append((key, tuple(value.shape), tuple(expected[key].shape)))
                continue
            raise CheckpointError(
                f"{source}: weight {key!r} has shape {tuple(value.shape)} but the config "
                f"({source.parent / 'config.json'}) makes it {tuple(expected[key].shape)}; the config does not "
                "match the weights (pass ignore_mismatched_sizes=True to re-initialise such weights)"
            )
        usable[key] = value
    info.missing_keys = [k for k in expected if k not in usable and k not in tied]
    with torch.no_grad():
        model.load_state_dict(usable, strict=False)
    model.tie_weights()
    return info


def _report(name: str, source: Path, info: LoadingInfo) -> None:
    if info.missing_keys:
        logger.warning(
            "%s: newly initialized (not in %s): %s — fine-tune before use.",
            name, source, ", ".join(info.missing_keys),
        )
    if info.mismatched_keys:
        details = ", ".join(f"{k} {a}->{b}" for k, a, b in info.mismatched_keys)
        logger.warning("%s: re-initialized because shapes differ from %s: %s", name, source, details)
    if info.unexpected_keys:
        logger.debug("%s: unused weights in %s (expected when the checkpoint has another head): %s",
                    name, source, ", ".join(info.unexpected_keys))


# ---------------------------------------------------------------------------------------------- write
def _parse_size(size: int | str) -> int:
    if isinstance(size, int):
        return size
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]i?B)?\s*", size, re.IGNORECASE)
    if not match:
        raise ValueError(f"max_shard_size {size!r}: use bytes or e.g. '500MB', '5GB'")
    unit = (match.group(2) or "B").upper()
    scale = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}[unit]
    return int(float(match.group(1)) * scale)


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def state_dict_for_saving(model) -> dict[str, Tensor]:
    """The model's weights minus tied copies (safetensors refuses shared storage)."""
    tied = tied_keys(model)
    return {k: v.detach().contiguous() for k, v in model.state_dict().items() if k not in tied}


def save_pretrained(model, path, *, safe_serialization: bool = True, max_shard_size: int | str = "5GB") -> None:
    from safetensors.torch import save_file

    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    state = state_dict_for_saving(model)
    for copy, source in model.key_rules.saved_copies.items():  # HF folders only, not training checkpoints
        if source in state and copy not in state:
            state[copy] = state[source].clone()
    config = model.config.replace(architectures=[type(model).__name__], torch_dtype=_dtype_name(model.dtype))

    limit = _parse_size(max_shard_size)
    shards: list[dict[str, Tensor]] = [{}]
    size = 0
    for key, tensor in state.items():
        nbytes = tensor.numel() * tensor.element_size()
        if shards[-1] and size + nbytes > limit:
            shards.append({})
            size = 0
        shards[-1][key] = tensor
        size += nbytes

    ext = "safetensors" if safe_serialization else "bin"
    single = SAFE_WEIGHTS_NAME if safe_serialization else WEIGHTS_NAME
    names = [single] if len(shards) == 1 else [f"model-{i + 1:05d}-of-{len(shards):05d}.{ext}" for i in range(len(shards))]
    if not safe_serialization and len(shards) > 1:
        names = [f"pytorch_model-{i + 1:05d}-of-{len(shards):05d}.bin" for i in range(len(shards))]

    for name, shard in zip(names, shards):
        tmp = folder / f".{name}.tmp-{os.getpid()}"
        try:
            if safe_serialization:
                save_file(shard, str(tmp), metadata={"format": "pt"})
            else:
                torch.save(shard, tmp)
            os.replace(tmp, folder / name)
        finally:
            tmp.unlink(missing_ok=True)

    # Remove weights of an earlier save with another layout, so loading cannot pick stale files.
    index_name = SAFE_WEIGHTS_INDEX_NAME if safe_serialization else WEIGHTS_INDEX_NAME
    stale = [SAFE_WEIGHTS_NAME, SAFE_WEIGHTS_INDEX_NAME, WEIGHTS_NAME, WEIGHTS_INDEX_NAME]
    stale += [p.name for p in folder.glob("model-*-of-*.safetensors")] + [p.name for p in folder.glob("pytorch_model-*-of-*.bin")]
    keep = set(names) | ({index_name} if len(shards) > 1 else set())
    for name in stale:
        if name not in keep:
            (folder / name).unlink(missing_ok=True)

    if len(shards) > 1:
        index = {
            "metadata": {"total_size": sum(t.numel() * t.element_size() for t in state.values())},
            "weight_map": {k: name for name, shard in zip(names, shards) for k in shard},
        }
        atomic_write_text(folder / index_name, json.dumps(index, indent=2, sort_keys=True) + "\n")
    # config.json last: a folder whose config is present has complete weights.
    atomic_write_text(folder / "config.json", config.to_json_string())
