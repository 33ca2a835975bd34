"""Fine-tuning recipe: labelled data -> fine-tuned model (best checkpoint) -> metrics; evaluate; predict.

    lmforge finetune --model runs/pretrain/final --data movie-sentences -o runs/ft
    lmforge finetune --config ft.yaml --label-fraction 0.1 --init random
    lmforge evaluate runs/ft/best --data movie-sentences --split test
    lmforge predict runs/ft/best input.csv -o predictions.jsonl

Tasks: single_label (softmax), multi_label (sigmoid, labels above 0.5), regression (one raw value) on
CSV / TSV / JSONL files or a named dataset (movie-sentences, movie-reviews); token_classification on
CoNLL files (token first, tag last). `--data` is a dataset name, a training file, or a folder of
train / validation / test files; `--validation-file` / `--test-file` add splits. A lone training file
is split 80/10/10 (seeded, stratified for single_label); a missing validation split is carved (10%)
out of the training split. The label map is built from the whole training split (so it does not change
with `--label-fraction`, which keeps a seeded, stratified fraction of the training examples) and is
stored in the model config (id2label / label2id).

Training uses the shared loop (`lmforge.training.train`) on length-grouped, shuffled batches with
dynamic padding, for `epochs x steps_per_epoch` optimizer steps. It runs in chunks that end at each
evaluation point (every epoch, or every `--eval-every` steps): every chunk is one `train()` call that
evaluates on the validation split and checkpoints at its end, and the next chunk resumes from that
checkpoint exactly (same lr schedule, data position and RNG states, so the result equals one
uninterrupted run). Between chunks the recipe decides, in plain code, whether to stop:
* best model: an evaluation whose `--metric-for-best` is strictly better than every earlier one
  (higher; lower for loss / mse) is saved to `<output_dir>/best` (model + tokenizer +
  finetune_info.json), written into a temp folder first and then renamed into place;
* early stopping: after `--early-stopping-patience` evaluations in a row without improvement the run
  stops (0 = off).
The evaluation history and best record are kept in `<output_dir>/finetune_state.json`, so `--resume`
continues an interrupted run from its latest checkpoint with the same best / patience state.
At the end `best` is evaluated on the test split and `<output_dir>/results.json` gets the validation
and test metrics, the history, the label map and the options.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import re
import shutil
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from ..data.batches import TaskBatches
from ..data.labels import PROBLEM_TYPES, TASKS
from ..data.splits import load_splits, raw_splits, subsample
from ..modeling import cpu_caps, onednn
from .common import option

# Metrics each task reports on evaluation; the first is the default `metric_for_best`.
TASK_METRICS = {
    "single_label": ("accuracy", "macro_f1", "mcc", "loss"),
    "multi_label": ("micro_f1", "macro_f1", "subset_accuracy", "loss"),
    "regression": ("pearson", "spearman", "mse", "loss"),
    "token_classification": ("entity_f1", "entity_precision", "entity_recall", "accuracy", "loss"),
}
LOWER_IS_BETTER = frozenset({"loss", "mse"})
BEST_DIR = "best"
RESULTS_NAME = "results.json"
STATE_NAME = "finetune_state.json"
INFO_NAME = "finetune_info.json"
SPLIT_CHOICES = ("train", "validation", "test", "all")


@dataclass
class FinetuneOptions:
    model: str | None = option(None, "pretrained checkpoint folder (HF format, with its tokenizer)")
    data: str | None = option(None, "dataset name (movie-sentences, movie-reviews), training file, or folder "
                                    "of train/validation/test files")
    validation_file: str | None = option(None, "validation file (default: from --data, or 10%% of the training data)")
    test_file: str | None = option(None, "test file (default: from --data, or 10%% of a lone training file)")
    output_dir: str = option("runs/finetune", "run folder: best/, results.json, metrics.jsonl, checkpoints",
                             short="-o")
    task: str = option("single_label", "task type", choices=list(TASKS))
    text_column: str = option("text", "column holding the text")
    text_pair_column: str | None = option(None, "column holding the second text of a pair")
    label_column: str = option("label", "column holding the label")
    label_delimiter: str = option("|", "separator of labels in a multi_label string ('a|b')")
    label_fraction: float = option(1.0, "fraction of training examples used (seeded; stratified for single_label)")
    init: str = option("pretrained", "encoder weights: the checkpoint's, or random (same architecture)",
                       choices=["pretrained", "random"])
    max_length: int = option(128, "tokens per sequence, special tokens included")
    batch_size: int = option(32, "examples per batch")
    eval_batch_size: int | None = option(None, "examples per evaluation batch (default: 2 x batch size)")
    epochs: int = option(3, "passes over the training examples")
    learning_rate: float = option(5e-5, "peak learning rate")
    weight_decay: float = option(0.01, "AdamW weight decay (not on biases and LayerNorm)")
    warmup_ratio: float = option(0.1, "fraction of steps of linear warm-up")
    schedule: str = option("linear", "decay after warm-up", choices=["linear", "cosine", "constant"])
    max_grad_norm: float = option(1.0, "gradient clipping (<= 0: off)")
    grad_accum_steps: int = option(1, "batches per optimizer step")
    bf16: bool = option(False, "bfloat16 autocast")
    eval_every: int = option(0, "evaluate every N optimizer steps (0: every epoch)")
    metric_for_best: str | None = option(None, "validation metric that picks the best model (default: accuracy, "
                                               "micro_f1, pearson or entity_f1 by task)")
    early_stopping_patience: int = option(0, "stop after N evaluations without improvement (0: off)")
    log_every: int = option(10, "steps between metrics.jsonl records")
    seed: int = option(0, "random seed (splits, label fraction, data order, head init, dropout)")
    resume: bool = option(False, "continue an interrupted run from the latest checkpoint in output_dir")
    overwrite: bool = option(False, "start over even if output_dir holds checkpoints of another run")
    unpad: bool = option(True, "drop padding tokens before the encoder layers (faster, same results)")
    device: str | None = option(None, "cpu, cuda, cuda:1, ... (default: cuda when available)")
    threads: int | None = option(None, "torch CPU threads")
    progress: bool = option(True, "progress bar")

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {self.task!r}")
        if self.init not in ("pretrained", "random"):
            raise ValueError(f"init must be 'pretrained' or 'random', got {self.init!r}")
        if not 0.0 < self.label_fraction <= 1.0:
            raise ValueError(f"label_fraction must be in (0, 1], got {self.label_fraction}")
        for name in ("max_length", "batch_size", "epochs", "grad_accum_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.eval_every < 0 or self.early_stopping_patience < 0:
            raise ValueError("eval_every and early_stopping_patience must be >= 0")
        if self.metric_for_best is not None:
            self.metric_for_best = _metric_name(self.metric_for_best, self.task)

    @property
    def best_metric(self) -> str:
        return self.metric_for_best or TASK_METRICS[self.task][0]


@dataclass
class EvaluateOptions:
    model: str | None = option(None, "fine-tuned model folder (e.g. runs/ft/best)")
    data: str | None = option(None, "dataset name, labelled file, or folder of train/validation/test files")
    split: str | None = option(None, "split to score (default: test for dataset names and folders, the whole "
                                     "file for a file; a split of a file is the finetune's seeded 80/10/10 one)",
                               choices=list(SPLIT_CHOICES))
    text_column: str | None = option(None, "column holding the text (default: as in fine-tuning, else text)")
    text_pair_column: str | None = option(None, "column holding the second text of a pair (default: as in "
                                                "fine-tuning)")
    label_column: str | None = option(None, "column holding the label (default: as in fine-tuning, else label)")
    label_delimiter: str = option("|", "separator of labels in a multi_label string")
    max_length: int | None = option(None, "tokens per sequence (default: the one used in fine-tuning)")
    batch_size: int = option(64, "examples per batch")
    seed: int = option(0, "seed of the split of a single file (as in finetune)")
    output: str | None = option(None, "also write the metrics JSON to this file", short="-o")
    bf16: bool = option(False, "bfloat16 autocast")
    unpad: bool = option(True, "drop padding tokens before the encoder layers")
    device: str | None = option(None, "cpu, cuda, ... (default: cuda when available)")
    threads: int | None = option(None, "torch CPU threads")


@dataclass
class PredictOptions:
    model: str | None = option(None, "fine-tuned model folder (e.g. runs/ft/best)")
    input: str | None = option(None, "CSV / TSV / JSONL file with a text column (and a pair column)")
    output: str | None = option(None, "output file: .jsonl or .csv (or .tsv)", short="-o")
    text_column: str | None = option(None, "column holding the text (default: as in fine-tuning, else text)")
    text_pair_column: str | None = option(None, "column holding the second text of a pair (default: as in "
                                                "fine-tuning when the input has it)")
    max_length: int | None = option(None, "tokens per sequence (default: the one used in fine-tuning)")
    batch_size: int = option(64, "examples per batch")
    bf16: bool = option(False, "bfloat16 autocast")
    unpad: bool = option(True, "drop padding tokens before the encoder layers")
    device: str | None = option(None, "cpu, cuda, ... (default: cuda when available)")
    threads: int | None = option(None, "torch CPU threads")


def _metric_name(name: str, task: str) -> str:
    name = name.removeprefix("eval_")
    if name not in TASK_METRICS[task]:
        raise ValueError(f"metric_for_best {name!r} is not reported for {task}; choose one of {TASK_METRICS[task]}")
    return name


def build_label_map(task: str, train: Sequence[Any]):
    """LabelMap of the training split (sorted label names); None for regression."""
    from ..data.labels import LabelMap

    return None if task == "regression" else LabelMap.from_examples(train)


def _check_tags(sentences: Sequence[Any], label_map) -> None:
    """Name the exact file:line of a tag the label map does not know (a sentence's lines are consecutive)."""
    from ..data.labelled import DataError

    for sent in sentences:
        for i, tag in enumerate(sent.tags):
            if tag not in label_map:
                path, _, line = sent.source.rpartition(":")
                where = f"{path}:{int(line) + i}" if line.isdigit() else sent.source
                raise DataError(f"{where}: label {tag!r} was not seen in the training data; "
                                f"known labels: {', '.join(map(repr, label_map.names))}")


def encode(task: str, items: Sequence[Any], tokenizer, label_map, max_length: int) -> list[dict[str, Any]]:
    """Feature dicts (input_ids, attention_mask, token_type_ids, labels[, word_ids])."""
    from ..data.collators import encode_classification, encode_token_classification

    if task == "token_classification":
        if label_map is not None:
            _check_tags(items, label_map)
        return encode_token_classification(items, tokenizer, label_map, max_length)
    return encode_classification(items, tokenizer, label_map, max_length)


# ----------------------------------------------------------------------------------- model running
def _device(name: str | None) -> torch.device:
    if name:
        return torch.device(name)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def run_model(model, features: Sequence[dict[str, Any]], batch_size: int, pad_token_id: int,
              bf16: bool = False) -> tuple[list[torch.Tensor], float | None]:
    """Logits of every feature, in the given order (batches of similar length, order restored):
    `[num_labels]` per sequence or `[length, num_labels]` per token sequence; plus the mean loss
    when the features have labels."""
    from ..data.batches import length_sorted_batches
    from ..data.collators import pad_collate

    device = next(model.parameters()).device
    outputs: list[torch.Tensor] = [torch.empty(0)] * len(features)
    loss_sum, counted = 0.0, 0
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)
    if bf16:
        cpu_caps.warn_if_bf16_slow(device)
    with onednn.frozen_weights():  # the weights do not change while scoring: prepare them once
        for indices in length_sorted_batches([len(f["input_ids"]) for f in features], batch_size):
            batch = pad_collate([features[i] for i in indices], pad_token_id)
            batch = {k: v.to(device) for k, v in batch.items()}
            with torch.inference_mode(), autocast:
                out = model(**batch)
            if out.loss is not None:
                loss_sum += float(out.loss) * len(indices)
                counted += len(indices)
            logits = out.logits.float().cpu()
            for row, i in enumerate(indices):
                outputs[i] = logits[row, : len(features[i]["input_ids"])] if logits.dim() == 3 else logits[row]
    return outputs, (loss_sum / counted if counted else None)


def task_metrics(task: str, logits: Sequence[torch.Tensor], items: Sequence[Any], features, label_map) -> dict:
    """Metrics of a task (see TASK_METRICS, less the loss) from per-example logits."""
    import numpy as np

    from ..metrics import compute_metrics

    if task == "single_label":
        preds = [label_map.decode(int(x.argmax())) for x in logits]
        return compute_metrics(task, preds, [ex.label for ex in items])
    if task == "multi_label":
        preds = np.array([(x > 0).int().tolist() for x in logits], dtype=np.int64)
        refs = np.array([label_map.encode_multi(ex.label, ex.source) for ex in items], dtype=np.int64)
        return compute_metrics(task, preds, refs)
    if task == "regression":
        return compute_metrics(task, [float(x[0]) for x in logits], [ex.label for ex in items])
    pred_tags = [word_tags(x, f["word_ids"], len(sent.tokens), label_map) for x, f, sent in zip(logits, features, items)]
    out = compute_metrics(task, pred_tags, [sent.tags for sent in items])
    return {"entity_f1": out["f1"], "entity_precision": out["precision"], "entity_recall": out["recall"],
            "accuracy": out["accuracy"]}


def word_tags(logits: torch.Tensor, word_ids: Sequence[int | None], num_words: int, label_map) -> list[str]:
    """One tag per word: the prediction at its first sub-token; "O" for words cut by max_length."""
    tags = ["O"] * num_words
    seen: set[int] = set()
    pred = logits.argmax(-1).tolist()
    for t, w in enumerate(word_ids):
        if w is not None and w not in seen:
            seen.add(w)
            tags[w] = label_map.decode(pred[t])
    return tags


def make_scorer(task: str, items: Sequence[Any], features, label_map, batch_size: int, pad_token_id: int,
                bf16: bool = False):
    """`score(model) -> metrics` on fixed, encoded examples (the validation or test split)."""

    def score(model) -> dict[str, float]:
        logits, loss = run_model(model, features, batch_size, pad_token_id, bf16)
        metrics = task_metrics(task, logits, items, features, label_map)
        if loss is not None:
            metrics["loss"] = loss
        return metrics

    return score


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


def _json_safe(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def _write_json(path: Path, data: Any) -> None:
    """Atomic: a temp file, then os.replace."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(_json_safe(data), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


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
    _write_json(tmp / INFO_NAME, info)
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    if old.exists():
        shutil.rmtree(old)
    return final


def _recover_best(output_dir: Path) -> None:
    """After a crash between the two renames of `save_best`, put the previous best back."""
    if not (output_dir / BEST_DIR).exists():
        olds = sorted(output_dir.glob(f".{BEST_DIR}-old-*"))
        if olds:
            os.replace(olds[-1], output_dir / BEST_DIR)
    for stale in [*output_dir.glob(f".{BEST_DIR}-tmp-*"), *output_dir.glob(f".{BEST_DIR}-old-*")]:
        shutil.rmtree(stale, ignore_errors=True)


def _read_info(folder: Path) -> dict[str, Any]:
    path = Path(folder) / INFO_NAME
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def _checkpoint_step(output_dir: Path) -> int:
    from ..training import latest_checkpoint_path

    path = latest_checkpoint_path(output_dir)
    match = re.match(r"^step-(\d+)$", path.name) if path is not None else None
    return int(match.group(1)) if match else 0


# --------------------------------------------------------------------------------------- the model
def _auto_class(task: str):
    from ..auto import AutoModelForSequenceClassification, AutoModelForTokenClassification

    return AutoModelForTokenClassification if task == "token_classification" else AutoModelForSequenceClassification


def build_model(opts: FinetuneOptions, label_map):
    """The checkpoint's encoder (or the same architecture, randomly initialised) with a new task head."""
    from ..auto import AutoConfig

    config = AutoConfig.from_pretrained(opts.model)
    if label_map is None:
        config = config.replace(num_labels=1, problem_type=PROBLEM_TYPES[opts.task])
    else:
        id2label, label2id = label_map.to_config()
        config = config.replace(id2label=id2label, label2id=label2id, problem_type=PROBLEM_TYPES[opts.task])
    auto = _auto_class(opts.task)
    torch.manual_seed(opts.seed)
    if opts.init == "random":
        model = auto.from_config(config)
    else:
        # A head of another size (a model fine-tuned on other labels) is re-initialised.
        model = auto.from_pretrained(opts.model, config=config, ignore_mismatched_sizes=True)
    model.set_attn_implementation("unpadded" if opts.unpad else "sdpa")
    return model


def model_task(folder: str | os.PathLike, config) -> str:
    """The task a fine-tuned folder was trained for (finetune_info.json, else its config)."""
    task = _read_info(Path(folder)).get("task")
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
    from ..auto import AutoConfig
    from ..data.labels import LabelMap
    from ..tokenizers import AutoTokenizer

    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: model folder not found")
    config = AutoConfig.from_pretrained(folder)
    task = model_task(folder, config)
    model = _auto_class(task).from_pretrained(folder, config=config)
    model.set_attn_implementation("unpadded" if unpad else "sdpa").to(_device(device)).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    label_map = None if task == "regression" else LabelMap.from_config(config.id2label, config.label2id)
    return model, tokenizer, task, label_map, _read_info(folder)


def _max_length(requested: int | None, info: dict[str, Any], model, tokenizer) -> int:
    limit = model.config.max_position_embeddings
    if requested is None:
        requested = info.get("max_length") or min(tokenizer.model_max_length, limit)
    return min(int(requested), limit)


# ------------------------------------------------------------------------------------------ finetune
def run(opts: FinetuneOptions) -> dict[str, Any]:
    """Fine-tune, keep the best model, evaluate it on the test split; returns the results summary."""
    from ..tokenizers import AutoTokenizer
    from ..training import TrainArgs, list_checkpoints, train

    t0 = time.perf_counter()
    if not opts.model:
        raise ValueError("finetune: no model given (--model CHECKPOINT_FOLDER)")
    if not opts.data:
        raise ValueError("finetune: no data given (--data DATASET|FILE|FOLDER)")
    if not Path(opts.model).is_dir():
        raise FileNotFoundError(f"{opts.model}: checkpoint folder not found")
    if opts.threads:
        torch.set_num_threads(opts.threads)
    output_dir = Path(opts.output_dir)
    if list_checkpoints(output_dir) and not (opts.resume or opts.overwrite):
        raise ValueError(f"{output_dir} holds checkpoints of an earlier run; pass --resume to continue it, "
                         "--overwrite to start over, or another --output-dir")
    output_dir.mkdir(parents=True, exist_ok=True)
    metric = opts.best_metric

    # ---- data
    splits = load_splits(opts.data, opts.task, text_column=opts.text_column, text_pair_column=opts.text_pair_column,
                         label_column=opts.label_column, label_delimiter=opts.label_delimiter,
                         validation_file=opts.validation_file, test_file=opts.test_file, seed=opts.seed)
    label_map = build_label_map(opts.task, splits["train"])
    train_items = subsample(splits["train"], opts.label_fraction, seed=opts.seed, stratify=opts.task == "single_label")
    tokenizer = AutoTokenizer.from_pretrained(opts.model)
    model = build_model(opts, label_map)
    max_length = min(opts.max_length, model.config.max_position_embeddings)
    features = {name: encode(opts.task, items, tokenizer, label_map, max_length)
                for name, items in (("train", train_items), *((k, v) for k, v in splits.items() if k != "train"))}
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else model.config.pad_token_id
    batches = TaskBatches(features["train"], opts.batch_size, pad_id, seed=opts.seed)
    steps_per_epoch = math.ceil(len(batches) / opts.grad_accum_steps)
    max_steps = opts.epochs * steps_per_epoch
    interval = opts.eval_every or steps_per_epoch
    boundaries = [*range(interval, max_steps, interval), max_steps]
    eval_batch_size = opts.eval_batch_size or 2 * opts.batch_size
    score_validation = make_scorer(opts.task, splits["validation"], features["validation"], label_map,
                                   eval_batch_size, pad_id, opts.bf16)
    model.to(_device(opts.device))

    # ---- state: fresh, or resumed from the latest checkpoint
    state_path = output_dir / STATE_NAME
    start_step = 0
    if opts.resume and list_checkpoints(output_dir):
        start_step = _checkpoint_step(output_dir)
        _recover_best(output_dir)
        saved = json.loads(state_path.read_text(encoding="utf-8")) if state_path.is_file() else {}
        history = [r for r in saved.get("history", []) if r["step"] <= start_step]
        tracker = BestTracker.replay(metric, opts.early_stopping_patience, history)
        if tracker.best is not None and not (output_dir / BEST_DIR).is_dir():
            raise ValueError(f"{output_dir / BEST_DIR} is missing, so the run cannot resume with its best model; "
                             "pass --overwrite to start over")
        # A best/ saved by an evaluation after the checkpoint (a crash between the two) is re-made when
        # that step is evaluated again.
    else:
        tracker = BestTracker(metric, opts.early_stopping_patience)
        for stale in (state_path, output_dir / RESULTS_NAME):
            stale.unlink(missing_ok=True)
        for stale in [output_dir / BEST_DIR, *output_dir.glob(f".{BEST_DIR}-tmp-*"),
                      *output_dir.glob(f".{BEST_DIR}-old-*")]:
            shutil.rmtree(stale, ignore_errors=True)
    (output_dir / "options.json").write_text(json.dumps(asdict(opts), indent=2) + "\n", encoding="utf-8")

    current = {"step": 0}

    def evaluate_and_track(m) -> dict[str, float]:
        metrics = score_validation(m)
        step = current["step"]
        record = {"step": step, "epoch": round(step / steps_per_epoch, 4), **_json_safe(metrics)}
        if tracker.update(record):
            save_best(m, tokenizer, output_dir, {"task": opts.task, "step": step, "epoch": record["epoch"],
                                                 "metric_for_best": metric, "metrics": record,
                                                 "max_length": max_length, "text_column": opts.text_column,
                                                 "text_pair_column": opts.text_pair_column,
                                                 "label_column": opts.label_column})
        _write_json(state_path, {"metric_for_best": metric, "history": tracker.history})
        return metrics

    losses: list[float] = []
    tokens = 0
    first = True
    for end in boundaries:
        if end <= start_step or tracker.should_stop:
            continue
        current["step"] = end
        args = TrainArgs(
            output_dir=output_dir, max_steps=end, schedule_steps=max_steps, learning_rate=opts.learning_rate,
            weight_decay=opts.weight_decay, warmup_ratio=opts.warmup_ratio, schedule=opts.schedule,
            grad_accum_steps=opts.grad_accum_steps, max_grad_norm=opts.max_grad_norm, bf16=opts.bf16,
            eval_every=0, save_every=interval, keep_last=1, log_every=opts.log_every, seed=opts.seed,
            resume=opts.resume or not first, overwrite=opts.overwrite and first, progress=opts.progress,
        )
        result = train(model, batches, args, evaluate=evaluate_and_track)
        losses.extend(result.losses)
        tokens += result.tokens
        first = False
    last_step = tracker.history[-1]["step"] if tracker.history else start_step
    if tracker.best is None or not (output_dir / BEST_DIR).is_dir():
        raise RuntimeError(f"{output_dir}: no evaluation recorded, so no best model")

    # ---- the best model on the test split
    test_metrics = None
    if "test" in splits:
        best_model = _auto_class(opts.task).from_pretrained(output_dir / BEST_DIR)
        best_model.set_attn_implementation("unpadded" if opts.unpad else "sdpa").to(_device(opts.device))
        test_metrics = make_scorer(opts.task, splits["test"], features["test"], label_map, eval_batch_size,
                                   pad_id, opts.bf16)(best_model)
    best = tracker.best
    results = {
        "task": opts.task,
        "metric_for_best": metric,
        "best_dir": str(output_dir / BEST_DIR),
        "best_step": best["step"],
        "best_epoch": best["epoch"],
        "validation": {k: v for k, v in best.items() if k not in ("step", "epoch")},
        "test": test_metrics,
        "history": tracker.history,
        "stopped_early": tracker.should_stop and last_step < max_steps,
        "steps": last_step,
        "max_steps": max_steps,
        "steps_per_epoch": steps_per_epoch,
        "first_loss": losses[0] if losses else None,
        "last_loss": sum(losses[-10:]) / len(losses[-10:]) if losses else None,
        "tokens": tokens,
        "label_map": label_map.names if label_map is not None else None,
        "train_examples": len(train_items),
        "examples": {"train": len(train_items), "train_total": len(splits["train"]),
                     **{k: len(v) for k, v in splits.items() if k != "train"}},
        "elapsed_s": time.perf_counter() - t0,
        "options": asdict(opts),
    }
    _write_json(output_dir / RESULTS_NAME, results)
    return _json_safe(results)


# ------------------------------------------------------------------------------------------ evaluate
def evaluate(
    model: str | os.PathLike,
    data: str,
    split: str | None = None,
    *,
    text_column: str | None = None,
    text_pair_column: str | None = None,
    label_column: str | None = None,
    label_delimiter: str = "|",
    max_length: int | None = None,
    batch_size: int = 64,
    seed: int = 0,
    bf16: bool = False,
    unpad: bool = True,
    device: str | None = None,
) -> dict[str, Any]:
    """Metrics of a fine-tuned folder on labelled data: `{"split", "examples", "metrics"}`.

    Columns default to the ones used in fine-tuning (finetune_info.json), else text / label. A label
    the model was not trained on raises DataError naming its file and line.
    """
    from ..data.datasets import dataset_names
    from ..data.labelled import DataError

    if split is not None and split not in SPLIT_CHOICES:
        raise ValueError(f"split must be one of {SPLIT_CHOICES}, got {split!r}")
    net, tokenizer, task, label_map, info = load_finetuned(model, unpad=unpad, device=device)
    columns = {"text_column": text_column or info.get("text_column") or "text",
               "text_pair_column": text_pair_column or info.get("text_pair_column"),
               "label_column": label_column or info.get("label_column") or "label",
               "label_delimiter": label_delimiter}
    data = str(data)
    raw, _ = raw_splits(data, task, columns, seed)
    lone_file = Path(data).is_file() and data not in dataset_names()
    if split == "all" or (split is None and lone_file):
        split, items = "all", [x for part in raw.values() for x in part]
    else:
        split = split or "test"
        if split in raw and not lone_file:
            items = raw[split]
        else:  # the same completed splits finetune uses (a lone file: its seeded 80/10/10 split)
            splits = load_splits(data, task, seed=seed, **columns)
            if split not in splits:
                raise DataError(f"{data}: no {split!r} split (has {', '.join(splits)})")
            items = splits[split]
    length = _max_length(max_length, info, net, tokenizer)
    features = encode(task, items, tokenizer, label_map, length)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else net.config.pad_token_id
    metrics = make_scorer(task, items, features, label_map, batch_size, pad_id, bf16)(net)
    return {"model": str(model), "data": str(data), "split": split, "task": task, "examples": len(items),
            "metrics": _json_safe(metrics)}


# ------------------------------------------------------------------------------------------- predict
def _output_format(path: Path) -> str | None:
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        return None
    if suffix in (".csv", ".tsv"):
        return "," if suffix == ".csv" else "\t"
    raise ValueError(f"{path}: output must be a .jsonl, .csv or .tsv file")


def predict_rows(model, tokenizer, task: str, label_map, examples: Sequence[Any], max_length: int,
                 batch_size: int = 64, bf16: bool = False) -> list[dict[str, Any]]:
    """One row per example, in order: text[, text_pair], label and per-label probabilities (or entities)."""
    if task == "token_classification":
        from ..pipelines import TokenClassificationPipeline

        tagger = TokenClassificationPipeline(model, tokenizer, batch_size=batch_size, max_length=max_length, bf16=bf16)
        entities = tagger([ex.text for ex in examples]) if examples else []
        return [{"text": ex.text, "entities": ents} for ex, ents in zip(examples, entities)]
    features = encode(task, examples, tokenizer, None, max_length)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else model.config.pad_token_id
    logits, _ = run_model(model, features, batch_size, pad_id, bf16)
    rows = []
    for ex, x in zip(examples, logits):
        row: dict[str, Any] = {"text": ex.text}
        if ex.text_pair is not None:
            row["text_pair"] = ex.text_pair
        if task == "regression":
            row["label"] = float(x[0])
        elif task == "multi_label":
            probs = x.sigmoid().tolist()
            row["label"] = [label_map.decode(i) for i, p in enumerate(probs) if p > 0.5]
            row["probabilities"] = {label_map.decode(i): p for i, p in enumerate(probs)}
        else:
            probs = x.softmax(-1).tolist()
            row["label"] = label_map.decode(int(x.argmax()))
            row["probabilities"] = {label_map.decode(i): p for i, p in enumerate(probs)}
        rows.append(row)
    return rows


def write_rows(rows: Sequence[dict[str, Any]], path: str | os.PathLike, label_names: Sequence[str] = ()) -> None:
    """JSONL (rows as they are) or CSV / TSV (probabilities as `prob_<label>` columns, multi-label
    labels joined with '|', entities as JSON), written atomically."""
    path = Path(path)
    delim = _output_format(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w", encoding="utf-8", newline="") as f:
        if delim is None:
            f.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
        else:
            header = [k for k in ("text", "text_pair", "label", "entities") if rows and k in rows[0]]
            if rows and "probabilities" in rows[0]:
                header += [f"prob_{name}" for name in label_names]
            writer = csv.writer(f, delimiter=delim)
            writer.writerow(header or ["text", "label"])
            for row in rows:
                flat = dict(row)
                if isinstance(flat.get("label"), list):
                    flat["label"] = "|".join(flat["label"])
                if "entities" in flat:
                    flat["entities"] = json.dumps(flat["entities"], ensure_ascii=False)
                for name, p in row.get("probabilities", {}).items():
                    flat[f"prob_{name}"] = p
                writer.writerow([flat.get(k, "") for k in header])
    os.replace(tmp, path)


def predict(
    model: str | os.PathLike,
    input: str | os.PathLike,
    output: str | os.PathLike,
    *,
    text_column: str | None = None,
    text_pair_column: str | None = None,
    max_length: int | None = None,
    batch_size: int = 64,
    bf16: bool = False,
    unpad: bool = True,
    device: str | None = None,
) -> int:
    """Predict every row of `input` (CSV / TSV / JSONL) into `output` (.jsonl / .csv / .tsv), in the
    input's order; returns the number of rows."""
    from ..data.labelled import load_examples

    _output_format(Path(output))  # fail before the work
    net, tokenizer, task, label_map, info = load_finetuned(model, unpad=unpad, device=device)
    text_column = text_column or info.get("text_column") or "text"
    if text_pair_column is None and task != "token_classification":
        text_pair_column = info.get("text_pair_column")
    examples = load_examples(input, text_column=text_column, text_pair_column=text_pair_column, label_column=None)
    length = _max_length(max_length, info, net, tokenizer)
    rows = predict_rows(net, tokenizer, task, label_map, examples, length, batch_size, bf16)
    write_rows(rows, output, label_map.names if label_map is not None else ())
    return len(rows)


# ----------------------------------------------------------------------------------------------- CLI
def register(sub) -> None:
    """`lmforge finetune`, `lmforge evaluate`, `lmforge predict`."""
    from .common import add_options

    fmt = argparse.RawDescriptionHelpFormatter
    p = sub.add_parser("finetune", help="fine-tune a pretrained model on labelled data (classification, tagging)",
                       description=__doc__, formatter_class=fmt)
    p.add_argument("--config", help="YAML or JSON file of options (flags given here override it)")
    add_options(p, FinetuneOptions)
    p.set_defaults(func=_cmd_finetune)

    e = sub.add_parser("evaluate", help="metrics of a fine-tuned model on labelled data (JSON)",
                       description="Score a fine-tuned model folder on a dataset, file or folder; prints the "
                                   "metrics as JSON.", formatter_class=fmt)
    add_options(e, EvaluateOptions, positional=("model",))
    e.set_defaults(func=_cmd_evaluate)

    r = sub.add_parser("predict", help="labels + probabilities for a file -> JSONL / CSV",
                       description="Predict every row of a CSV / TSV / JSONL file with a fine-tuned model; one "
                                   "output row per input row, in the input's order.", formatter_class=fmt)
    add_options(r, PredictOptions, positional=("model", "input"))
    r.set_defaults(func=_cmd_predict)


def _flags(args) -> dict[str, Any]:
    return {k: v for k, v in vars(args).items() if k not in ("command", "func", "config")}


def _cmd_finetune(args) -> int:
    from .common import build_options, read_config_file

    file_options = read_config_file(args.config) if args.config else {}
    opts = build_options(FinetuneOptions, file_options, _flags(args), source=args.config or "finetune options")
    results = run(opts)
    keys = ("best_dir", "best_step", "best_epoch", "metric_for_best", "validation", "test", "steps",
            "stopped_early", "elapsed_s")
    print(json.dumps({k: results[k] for k in keys}, indent=2))
    return 0


def _cmd_evaluate(args) -> int:
    from .common import build_options

    opts = build_options(EvaluateOptions, _flags(args), source="evaluate options")
    if not opts.data:
        raise ValueError("no data given (--data DATASET|FILE|FOLDER)")
    if opts.threads:
        torch.set_num_threads(opts.threads)
    report = evaluate(opts.model, opts.data, opts.split, text_column=opts.text_column,
                      text_pair_column=opts.text_pair_column, label_column=opts.label_column,
                      label_delimiter=opts.label_delimiter, max_length=opts.max_length, batch_size=opts.batch_size,
                      seed=opts.seed, bf16=opts.bf16, unpad=opts.unpad, device=opts.device)
    text = json.dumps(report, indent=2)
    if opts.output:
        _write_json(Path(opts.output), report)
    print(text)
    return 0


def _cmd_predict(args) -> int:
    from .common import build_options

    opts = build_options(PredictOptions, _flags(args), source="predict options")
    if not opts.output:
        raise ValueError("no output file given (-o OUT.jsonl|OUT.csv)")
    if opts.threads:
        torch.set_num_threads(opts.threads)
    n = predict(opts.model, opts.input, opts.output, text_column=opts.text_column,
                text_pair_column=opts.text_pair_column, max_length=opts.max_length, batch_size=opts.batch_size,
                bf16=opts.bf16, unpad=opts.unpad, device=opts.device)
    print(f"{n} predictions written to {opts.output}")
    return 0
