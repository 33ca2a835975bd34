"""Auto classes: pick the config and model class from a folder's config.json.

Dispatch is on `model_type`, or on `architectures` when `model_type` is absent. The registry is
open: `register_model("gpt2", GPT2Config, {"causal-lm": GPT2LMHeadModel, ...})` adds a family.
"""

from __future__ import annotations

import os

from .config import BertConfig, ConfigError, read_config_json
from .modeling import bert

CONFIG_CLASSES: dict[str, type] = {}
MODEL_CLASSES: dict[str, dict[str, type]] = {}  # model_type -> task -> class


def register_model(model_type: str, config_class: type, models: dict[str, type]) -> None:
    CONFIG_CLASSES[model_type] = config_class
    MODEL_CLASSES.setdefault(model_type, {}).update(models)


register_model(
    "bert",
    BertConfig,
    {
        "base": bert.BertModel,
        "masked-lm": bert.BertForMaskedLM,
        "pretraining": bert.BertForPreTraining,
        "next-sentence": bert.BertForNextSentencePrediction,
        "sequence-classification": bert.BertForSequenceClassification,
        "token-classification": bert.BertForTokenClassification,
        "question-answering": bert.BertForQuestionAnswering,
        "multiple-choice": bert.BertForMultipleChoice,
    },
)


def _model_type_of(data: dict, source: os.PathLike) -> str:
    model_type = data.get("model_type")
    if model_type is None:
        for arch in data.get("architectures") or []:
            for known, tasks in MODEL_CLASSES.items():
                if any(cls.__name__ == arch for cls in tasks.values()):
                    return known
        raise ConfigError(f"{source}: no model_type, and architectures {data.get('architectures')!r} are unknown; "
                          f"supported model types: {sorted(CONFIG_CLASSES)}")
    if model_type not in CONFIG_CLASSES:
        raise ConfigError(f"{source}: model_type {model_type!r} is not supported; supported: {sorted(CONFIG_CLASSES)}")
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
        if model_type not in CONFIG_CLASSES:
            raise ConfigError(f"model_type {model_type!r} is not supported; supported: {sorted(CONFIG_CLASSES)}")
        return CONFIG_CLASSES[model_type](**fields)


class _AutoModel:
    task: str = "base"

    @classmethod
    def model_class(cls, model_type: str) -> type:
        tasks = MODEL_CLASSES.get(model_type, {})
        if cls.task not in tasks:
            have = sorted(t for t, m in MODEL_CLASSES.items() if cls.task in m)
            raise ConfigError(f"{cls.__name__}: model_type {model_type!r} has no {cls.task!r} model; supported: {have}")
        return tasks[cls.task]

    @classmethod
    def from_config(cls, config):
        return cls.model_class(config.model_type)(config)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, *, config=None, **options):
        """Same keyword options as `PreTrainedModel.from_pretrained` (num_labels, torch_dtype, ...)."""
        if config is None:
            config = AutoConfig.from_pretrained(path)
        return cls.model_class(config.model_type).from_pretrained(path, config=config, **options)


class AutoModel(_AutoModel):
    task = "base"


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
