"""The fine-tuned model folder (`<output_dir>/best`): model + tokenizer + finetune_info.json, written
atomically (a temp folder renamed into place), the tracker that decides which evaluation is best, and
loading the folder back with its task and label map."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..auto import AutoConfig, AutoModelForSequenceClassification, AutoModelForTokenClassification
from ..data.labels import TASKS, LabelMap
from ..eval.scoring import LOWER_IS_BETTER
from ..tokenizers import AutoTokenizer
from ..training import latest_checkpoint_path
from .common import pick_device, write_json

BEST_DIR = "best"


INFO_NAME = "finetune_info.json"


# ------------------------------------------------------------------------------------- best / state
def _better(value: float | None, best: float | None, lower: bool) -> bool:
    if value is None or math.isnan(value):
        return False
    if best is None or math.isnan(best):
        return True
    return value < best if lower else value > best


class BestTracker:
    """Evaluation history, best record and the count of evaluations since the last improvement."""

    def __init__(self, metric: str, patience: int = 0):
        self.metric = metric
        self.lower = metric in LOWER_IS_BETTER
        self.patience = patience
        self.history: list[dict[str, Any]] = []
        self.best: dict[str, Any] | None = None
        self.bad_evals = 0

    def update(self, record: dict[str, Any]) -> bool:
        """Add an evaluation record; True when it is the new best (the first one always is)."""
        self.history.append(record)
        if self.best is None or _better(record.get(self.metric), self.best.get(self.metric), self.lower):
            self.best = record
            self.bad_evals = 0
            return True
        self.bad_evals += 1
        return False

    @property
    def should_stop(self) -> bool:
        return self.patience > 0 and self.bad_evals >= self.patience

    @classmethod
    def replay(cls, metric: str, patience: int, history: Sequence[dict[str, Any]]) -> BestTracker:
        tracker = cls(metric, patience)
        for record in history:
            tracker.update(record)
        return tracker


def save_best(model, tokenizer, output_dir: Path, info: dict[str, Any]) -> Path:
    """Write model + tokenizer + finetune_info.json to `output_dir/best`: into a temp folder first,
    renamed into place (the previous best is renamed away, then deleted)."""
    final = output_dir / BEST_DIR
    tmp = output_dir / f".{BEST_DIR}-tmp-{os.getpid()}"
    old = output_dir / f".{BEST_DIR}-old-{os.getpid()}"
    for stale in (tmp, old):
        if stale.exists():
            shutil.rmtree(stale)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    write_json(tmp / INFO_NAME, info)
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    if old.exists():
        shutil.rmtree(old)
    return final


def recover_best(output_dir: Path) -> None:
    """After a crash between the two renames of `save_best`, put the previous best back."""
    if not (output_dir / BEST_DIR).exists():
        olds = sorted(output_dir.glob(f".{BEST_DIR}-old-*"))
        if olds:
            os.replace(olds[-1], output_dir / BEST_DIR)
    for stale in [*output_dir.glob(f".{BEST_DIR}-tmp-*"), *output_dir.glob(f".{BEST_DIR}-old-*")]:
        shutil.rmtree(stale, ignore_errors=True)


def read_info(folder: Path) -> dict[str, Any]:
    path = Path(folder) / INFO_NAME
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def checkpoint_step(output_dir: Path) -> int:
    path = latest_checkpoint_path(output_dir)
    match = re.match(r"^step-(\d+)$", path.name) if path is not None else None
    return int(match.group(1)) if match else 0


# --------------------------------------------------------------------------------------- the model
def auto_class(task: str):

    return AutoModelForTokenClassification if task == "token_classification" else AutoModelForSequenceClassification


def model_task(folder: str | os.PathLike, config) -> str:
    """The task a fine-tuned folder was trained for (finetune_info.json, else its config)."""
    task = read_info(Path(folder)).get("task")
    if task in TASKS:
        return task
    architectures = config.architectures or []
    if any(a.endswith("ForTokenClassification") for a in architectures):
        return "token_classification"
    if not any(a.endswith("ForSequenceClassification") for a in architectures):
        raise ValueError(f"{folder}: not a fine-tuned classification model (architectures: {architectures}); "
                         "run `lmforge finetune` first")
    if config.problem_type == "multi_label_classification":
        return "multi_label"
    if config.problem_type == "regression" or config.num_labels == 1:
        return "regression"
    return "single_label"


def load_finetuned(folder: str | os.PathLike, unpad: bool = True, device: str | None = None):
    """(model, tokenizer, task, label_map, info) of a fine-tuned folder."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: model folder not found")
    config = AutoConfig.from_pretrained(folder)
    task = model_task(folder, config)
    model = auto_class(task).from_pretrained(folder, config=config)
    model.set_attn_implementation("unpadded" if unpad else "sdpa").to(pick_device(device)).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    label_map = None if task == "regression" else LabelMap.from_config(config.id2label, config.label2id)
    return model, tokenizer, task, label_map, read_info(folder)


def max_length_for(requested: int | None, info: dict[str, Any], model, tokenizer) -> int:
    limit = model.config.max_position_embeddings
    if requested is None:
        requested = info.get("max_length") or min(tokenizer.model_max_length, limit)
    return min(int(requested), limit)
