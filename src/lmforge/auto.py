"""Auto classes: pick the config and model class from a folder's config.json.

Dispatch is on `model_type`, or on `architectures` when `model_type` is absent. The registry is
open: a family calls `register_model("gpt2", GPT2Config, {"causal-lm": GPT2LMHeadModel, ...})` when
its package is imported, and `models.FAMILIES` names the package to import for a model_type, so
families load on first use.
"""

from __future__ import annotations

import importlib
import os

from .models.config import ConfigError, read_config_json

CONFIG_CLASSES: dict[str, type] = {}
MODEL_CLASSES: dict[str, dict[str, type]] = {}  # model_type -> task -> class


def register_model(model_type: str, config_class: type, models: dict[str, type]) -> None:
    CONFIG_CLASSES[model_type] = config_class
    MODEL_CLASSES.setdefault(model_type, {}).update(models)


def _load_family(model_type: str) -> bool:
    """Import the family package of `model_type` if one is known; True if the type is registered after."""
    from .models import FAMILIES

    if model_type not in CONFIG_CLASSES and model_type in FAMILIES:
        importlib.import_module(FAMILIES[model_type])
    return model_type in CONFIG_CLASSES


def supported_model_types() -> list[str]:
    from .models import FAMILIES

    return sorted(set(CONFIG_CLASSES) | set(FAMILIES))


def _model_type_of(data: dict, source: os.PathLike) -> str:
    model_type = data.get("model_type")
    if model_type is None:
        for known in supported_model_types():
            _load_family(known)
        for arch in data.get("architectures") or []:
            for known, tasks in MODEL_CLASSES.items():
                if any(cls.__name__ == arch for cls in tasks.values()):
                    return known
        raise ConfigError(f"{source}: no model_type, and architectures {data.get('architectures')!r} are unknown; "
                          f"supported model types: {supported_model_types()}")
    if not _load_family(model_type):
        raise ConfigError(f"{source}: model_type {model_type!r} is not supported; supported: {supported_model_types()}")
    return model_type


class AutoConfig:
    @staticmethod
    def from_pretrained(path: str | os.PathLike):
        data, file = read_config_json(path)
        model_type = _model_type_of(data, file)
        data.setdefault("model_type", model_type)
        return CONFIG_CLASSES[model_type].from_dict(data, source=str(file))

    @staticmethod
    def for_model(model_type: str, **fields):
        if not _load_family(model_type):
            raise ConfigError(f"model_type {model_type!r} is not supported; supported: {supported_model_types()}")
        return CONFIG_CLASSES[model_type](**fields)


class _AutoModel:
    task: str = "base"

    @classmethod
    def model_class(cls, model_type: str) -> type:
        _load_family(model_type)
        tasks = MODEL_CLASSES.get(model_type, {})
        if cls.task not in tasks:
            for known in supported_model_types():
                _load_family(known)
            have = sorted(t for t, m in MODEL_CLASSES.items() if cls.task in m)
            raise ConfigError(f"{cls.__name__}: model_type {model_type!r} has no {cls.task!r} model; supported: {have}")
        return tasks[cls.task]

    @classmethod
    def from_config(cls, config):
        return cls.model_class(config.model_type)(config)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, *, config=None, gguf_file: str | os.PathLike | None = None,
                        **options):
        """Same keyword options as `PreTrainedModel.from_pretrained` (num_labels, torch_dtype, ...).
        `gguf_file`: read a llama.cpp GGUF file (in the folder `path`, or a path of its own) instead."""
        if gguf_file is not None:
            from .gguf import GGUFFile, load_gguf_model, read_gguf_config, resolve

            file = GGUFFile(resolve(path, gguf_file))  # parsed once, for the config and the weights
            config = read_gguf_config(path, gguf_file, file=file) if config is None else config
            return load_gguf_model(cls.model_class(config.model_type), path, gguf_file, config=config, file=file,
                                   **options)
        if config is None:
            config = AutoConfig.from_pretrained(path)
        return cls.model_class(config.model_type).from_pretrained(path, config=config, **options)


class AutoModel(_AutoModel):
    task = "base"


class AutoModelForCausalLM(_AutoModel):
    task = "causal-lm"


class AutoModelForSeq2SeqLM(_AutoModel):
    task = "seq2seq-lm"


class AutoModelForMaskedLM(_AutoModel):
    task = "masked-lm"


class AutoModelForPreTraining(_AutoModel):
    task = "pretraining"


class AutoModelForNextSentencePrediction(_AutoModel):
    task = "next-sentence"


class AutoModelForSequenceClassification(_AutoModel):
    task = "sequence-classification"


class AutoModelForTokenClassification(_AutoModel):
    task = "token-classification"


class AutoModelForQuestionAnswering(_AutoModel):
    task = "question-answering"


class AutoModelForMultipleChoice(_AutoModel):
    task = "multiple-choice"
