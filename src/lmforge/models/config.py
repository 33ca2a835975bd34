"""Model configuration: one typed dataclass per architecture, with Hugging Face field names.

`PretrainedConfig` holds what every family shares (task labels, (de)serialisation, validation
helpers); each family's config (`models/<family>/config.py`) subclasses it.
`from_json_file` / `to_json_file` read and write the `config.json` of an HF checkpoint folder. Keys we do not model (e.g. `_name_or_path`, `gradient_checkpointing`) are kept in `extra`
and written back on save, so a round trip through lmforge loses nothing.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

CONFIG_NAME = "config.json"

PROBLEM_TYPES = (None, "regression", "single_label_classification", "multi_label_classification")
TORCH_DTYPES = (None, "float32", "float16", "bfloat16", "float64", "auto")


class ConfigError(ValueError):
    """A config value is invalid; the message names the field (and the file when there is one)."""


def read_config_json(path: str | os.PathLike) -> tuple[dict[str, Any], Path]:
    """The JSON object of a config file (or of `<folder>/config.json`), and the file it came from."""
    path = Path(path)
    file = path / CONFIG_NAME if path.is_dir() else path
    if not file.is_file():
        raise FileNotFoundError(f"{file}: config file not found")
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ConfigError(f"{file}: invalid JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{file}: expected a JSON object, got {type(data).__name__}")
    return data, file


@dataclass
class PretrainedConfig:
    """What every model config shares: task-head labels, HF (de)serialisation, unknown keys kept.

    A family subclasses it with its own fields (HF names), `model_type`, and `_validate`; fields set to
    None that HF omits from config.json are listed in `_omit_if_none`.
    """

    model_type: ClassVar[str] = ""
    _omit_if_none: ClassVar[tuple[str, ...]] = ("torch_dtype", "problem_type")

    # Task-head fields. `num_labels` is derived from id2label when that is given (as in HF).
    num_labels: int | None = None
    id2label: dict[int, str] | None = None
    label2id: dict[str, int] | None = None
    problem_type: str | None = None
    architectures: list[str] | None = None
    torch_dtype: str | None = None
    # Everything else found in config.json, preserved verbatim on save.
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._normalise_labels()
        self._validate_common()
        self._validate()

    # ------------------------------------------------------------------ validation
    def _normalise_labels(self) -> None:
        if self.id2label is not None:
            try:
                self.id2label = {int(k): str(v) for k, v in self.id2label.items()}
            except (TypeError, ValueError) as e:
                raise ConfigError(f"id2label: keys must be integers, got {list(self.id2label)!r}") from e
            # As in HF, id2label is the source of truth for the label count.
            self.num_labels = len(self.id2label)
        else:
            if self.num_labels is None:
                self.num_labels = 2
            self.id2label = {i: f"LABEL_{i}" for i in range(self.num_labels)}
        if self.label2id is None or set(self.label2id.values()) != set(self.id2label):
            self.label2id = {v: k for k, v in self.id2label.items()}
        else:
            self.label2id = {str(k): int(v) for k, v in self.label2id.items()}

    def _validate_common(self) -> None:
        positive_int(self, "num_labels")
        if self.problem_type not in PROBLEM_TYPES:
            raise ConfigError(f"problem_type must be one of {PROBLEM_TYPES}, got {self.problem_type!r}")
        if self.torch_dtype not in TORCH_DTYPES:
            raise ConfigError(f"torch_dtype must be one of {TORCH_DTYPES}, got {self.torch_dtype!r}")

    def _validate(self) -> None:
        """Family-specific checks; raise ConfigError naming the field."""

    # ------------------------------------------------------------------ (de)serialisation
    @classmethod
    def field_names(cls) -> set[str]:
        return {f.name for f in dataclasses.fields(cls)} - {"extra"}

    @classmethod
    def _normalise_dict(cls, data: dict[str, Any]) -> dict[str, Any]:
        """Map older or newer spellings of a field onto ours (families extend this)."""
        # transformers >= 4.56 writes `dtype`; older versions write `torch_dtype`.
        if "dtype" in data and "torch_dtype" not in data:
            data["torch_dtype"] = data.pop("dtype")
        else:
            data.pop("dtype", None)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str | None = None):
        where = f"{source}: " if source else ""
        data = dict(data)
        found_type = data.pop("model_type", cls.model_type)
        if found_type != cls.model_type:
            raise ConfigError(f"{where}model_type is {found_type!r}, expected {cls.model_type!r}")
        try:
            data = cls._normalise_dict(data)
            known = cls.field_names()
            kwargs = {k: v for k, v in data.items() if k in known}
            extra = {k: v for k, v in data.items() if k not in known}
            return cls(**kwargs, extra=extra)
        except ConfigError as e:
            if source:
                raise ConfigError(f"{source}: {e}") from None
            raise

    @classmethod
    def from_json_file(cls, path: str | os.PathLike):
        data, file = read_config_json(path)
        return cls.from_dict(data, source=str(file))

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike):
        """From a checkpoint folder (its config.json) or a config file."""
        return cls.from_json_file(path)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = dict(self.extra)
        for f in dataclasses.fields(self):
            if f.name in ("extra", "num_labels"):
                continue
            out[f.name] = getattr(self, f.name)
        out["id2label"] = {str(k): v for k, v in self.id2label.items()}
        out["model_type"] = self.model_type
        for name in self._omit_if_none:
            if out.get(name, 0) is None:
                out.pop(name)
        return dict(sorted(out.items()))

    def to_json_string(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    def to_json_file(self, path: str | os.PathLike) -> None:
        Path(path).write_text(self.to_json_string(), encoding="utf-8")

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.to_json_file(directory / CONFIG_NAME)

    def untied(self):
        """A copy whose output embeddings are not tied to the input ones (a checkpoint stores both, different)."""
        return self.replace(tie_word_embeddings=False)

    def replace(self, **changes: Any):
        """A validated copy with some fields changed (configs are never mutated by models)."""
        current = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        if "num_labels" in changes and "id2label" not in changes:
            current["id2label"] = None
            current["label2id"] = None
        if "id2label" in changes and "label2id" not in changes:
            current["label2id"] = None
            current["num_labels"] = None
        current.update(changes)
        current["extra"] = dict(current["extra"])
        return type(self)(**current)


def positive_int(config: Any, name: str) -> None:
    value = getattr(config, name)
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}")


def probability(config: Any, name: str) -> None:
    value = getattr(config, name)
    if value is not None and not (isinstance(value, (int, float)) and 0.0 <= float(value) < 1.0):
        raise ConfigError(f"{name} must be in [0, 1), got {value!r}")
