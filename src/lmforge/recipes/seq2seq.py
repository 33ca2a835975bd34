"""`lmforge finetune --task seq2seq`: an encoder-decoder (BART, Marian, T5) trained on source -> target pairs.

    lmforge finetune --task seq2seq --model runs/denoise/final --data ui-strings-en-zh -o runs/mt
    lmforge finetune --task seq2seq --model marian-config.json --data pairs.tsv -o runs/mt   # from scratch

`--model` is a pretrained seq2seq folder, or a config (a config.json, or a folder without weights, or any folder
with `--init random`) for a model trained from scratch. The tokenizer is `--tokenizer`, else the model folder's,
else (from scratch) a byte-level BPE of `--vocab-size` trained on both sides of the training pairs and saved in
`<output_dir>/tokenizer`; a from-scratch config takes its vocabulary size and pad / EOS ids (the decoder starts
from pad, as Marian's) from that tokenizer.

Data: a parallel dataset name (ui-strings-en-zh, ui-strings-en-de: split by catalog), a CSV / TSV / JSONL file
with `--source-column` / `--target-column` (split 80/10/10, seeded), or a folder of train / validation / test
files. Training is teacher forcing (the decoder reads the reference shifted right) with label-smoothed
cross-entropy (`--label-smoothing`), on the one training loop (`lmforge.training.train`), in chunks that end at each
evaluation, as classification fine-tuning: the same step budget, best/ folder, early stopping, --resume and
--seeds. Validation is by generation (greedy, or `--num-beams`) on `--eval-samples` seeded validation pairs:
chrF (the default --metric-for-best), BLEU, placeholder survival and the teacher-forced loss. At the end best/ is
scored on the whole test split and its outputs written to `<output_dir>/test_predictions.jsonl`.
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import torch

from ..auto import AutoConfig, AutoModelForSeq2SeqLM
from ..data.batches import TaskBatches
from ..data.parallel import Pair, both_sides_text, load_parallel_splits, pair_features
from ..eval.translation import score_pairs
from ..tokenizers import AutoTokenizer
from ..training import list_checkpoints
from ..training.distributed import DistInfo, dist_info, local_device, maybe_init_distributed
from ..training.seq2seq_lm import Seq2SeqLMTraining
from .common import json_safe, pick_device, write_json
from .finetuned import BEST_DIR, BestTracker, checkpoint_step, recover_best, save_best

TOKENIZER_DIR = "tokenizer"
PREDICTIONS_NAME = "test_predictions.jsonl"
_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                 "pytorch_model.bin.index.json")


# ------------------------------------------------------------------------------------- model + tokenizer
def has_weights(folder: Path) -> bool:
    return folder.is_dir() and any((folder / name).is_file() for name in _WEIGHT_FILES)


def from_scratch(opts) -> bool:
    path = Path(opts.model)
    return opts.init == "random" or not has_weights(path)


def seq2seq_tokenizer(opts, train_pairs: list[Pair], output_dir: Path, ddp: DistInfo):
    """`--tokenizer`, else the model folder's, else one trained on the training pairs (kept in output_dir:
    rank 0 trains and saves it, the other ranks load what it saved)."""
    from ..tokenizers import train_tokenizer

    model_path = Path(opts.model)
    if opts.tokenizer:
        return AutoTokenizer.from_pretrained(opts.tokenizer)
    if model_path.is_dir() and any((model_path / f).is_file() for f in ("tokenizer.json", "vocab.txt")):
        return AutoTokenizer.from_pretrained(model_path)
    if not from_scratch(opts):
        raise ValueError(f"{model_path}: no tokenizer in the model folder; pass --tokenizer")
    folder = output_dir / TOKENIZER_DIR
    if opts.resume and (folder / "tokenizer.json").is_file():
        return AutoTokenizer.from_pretrained(folder)
    # Byte-level BPE (GPT-2 style: `<|endoftext|>` is EOS, `<|pad|>` pads) over both languages, CJK ideographs
    # kept whole: one vocabulary for source and target, as Marian's shared embeddings want.
    if ddp.is_main:
        tokenizer = train_tokenizer(both_sides_text(train_pairs), folder, kind="gpt2", vocab_size=opts.vocab_size,
                                    min_frequency=2)
    ddp.barrier()
    return tokenizer if ddp.is_main else AutoTokenizer.from_pretrained(folder)


def build_seq2seq_model(opts, tokenizer):
    """The pretrained model, or (from scratch) the config's architecture at the tokenizer's vocabulary and
    special ids, randomly initialised with `opts.seed`."""
    config = AutoConfig.from_pretrained(opts.model)
    torch.manual_seed(opts.seed)
    if not from_scratch(opts):
        model = AutoModelForSeq2SeqLM.from_pretrained(opts.model, config=config)
    else:
        pad, eos = tokenizer.pad_token_id, tokenizer.eos_token_id
        if pad is None or eos is None:
            raise ValueError("the tokenizer needs a pad and an EOS token to train a seq2seq model from scratch")
        names = {f.name for f in fields(config)}
        ids = {"vocab_size": len(tokenizer), "decoder_vocab_size": len(tokenizer), "pad_token_id": pad,
               "eos_token_id": eos, "decoder_start_token_id": pad, "forced_eos_token_id": eos,
               "bos_token_id": None}
        config = config.replace(**{k: v for k, v in ids.items() if k in names})
        model = AutoModelForSeq2SeqLM.from_config(config)
    if len(tokenizer) > model.config.vocab_size:
        raise ValueError(f"the tokenizer has {len(tokenizer)} tokens but the model's vocabulary only "
                         f"{model.config.vocab_size}")
    return model.set_attn_implementation("unpadded" if opts.unpad else "sdpa")


def source_limit(config, requested: int) -> int:
    """`requested`, capped by learned / sinusoidal position tables (T5's relative positions have none)."""
    limit = getattr(config, "max_position_embeddings", None)
    return min(requested, limit) if limit else requested


def eval_subset(pairs: list[Pair], n: int, seed: int) -> list[Pair]:
    """`n` pairs in a seeded shuffle (all when n is 0 or covers them): validation by generation is the slow part."""
    if n <= 0 or n >= len(pairs):
        return list(pairs)
    order = list(range(len(pairs)))
    random.Random(seed).shuffle(order)
    return [pairs[i] for i in sorted(order[:n])]


# ----------------------------------------------------------------------------------------------- the run
def run_seq2seq(opts) -> dict[str, Any]:
    """One seq2seq fine-tuning run (FinetuneOptions with task="seq2seq"); returns the results summary.
    Under torchrun, as classification fine-tuning: `--batch-size` is the global batch, split over the ranks;
    rank 0 scores validation / test (the others receive its metrics, so every rank takes the same best / stop
    decisions) and writes every file."""
    from .finetune import RESULTS_NAME, STATE_NAME, clear_run_files, train_in_chunks

    t0 = time.perf_counter()
    if not opts.model:
        raise ValueError("finetune: no model given (--model CHECKPOINT_FOLDER or a config.json for from scratch)")
    if not opts.data:
        raise ValueError("finetune: no data given (--data DATASET|FILE|FOLDER)")
    if not Path(opts.model).exists():
        raise FileNotFoundError(f"{opts.model}: model folder or config file not found")
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

    # ---- data, tokenizer, model
    split_seed = opts.seed if opts.split_seed is None else opts.split_seed
    splits = load_parallel_splits(opts.data, opts.source_column, opts.target_column, opts.validation_file,
                                  opts.test_file, seed=split_seed)
    target_language = opts.target_language or splits.target_language
    tokenizer = seq2seq_tokenizer(opts, splits["train"], output_dir, ddp)
    model = build_seq2seq_model(opts, tokenizer)
    max_source = source_limit(model.config, opts.max_length)
    max_target = source_limit(model.config, opts.max_target_length or opts.max_length)
    max_new_tokens = opts.max_new_tokens or max_target
    train_pairs = splits["train"]
    if opts.label_fraction < 1.0:
        train_pairs = eval_subset(train_pairs, max(1, round(opts.label_fraction * len(train_pairs))), opts.seed)
    features = pair_features(train_pairs, tokenizer, max_source, max_target)
    pad_id = model.config.pad_token_id
    batches = TaskBatches(features, opts.batch_size, pad_id, seed=opts.seed, rank=ddp.rank,
                          world_size=ddp.world_size)
    steps_per_epoch = math.ceil(len(batches) / opts.grad_accum_steps)
    max_steps = opts.step_budget(steps_per_epoch)
    interval = opts.eval_every or steps_per_epoch
    boundaries = [*range(interval, max_steps, interval), max_steps]
    eval_batch_size = opts.eval_batch_size or 2 * opts.batch_size
    validation = eval_subset(splits["validation"], opts.eval_samples, split_seed)
    scoring = {"target_language": target_language, "batch_size": eval_batch_size, "num_beams": opts.num_beams,
               "max_new_tokens": max_new_tokens, "max_source_length": max_source, "max_target_length": max_target}
    device = local_device() if ddp.enabled and opts.device is None else pick_device(opts.device)
    # Teacher forcing with the label-smoothed loss fused with the output projection, on packed tokens on a CPU
    # (training/seq2seq_lm.py): the loss of F.cross_entropy(logits, labels, label_smoothing=...).
    trained = Seq2SeqLMTraining(model, opts.label_smoothing).to(device)

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
    else:
        tracker = BestTracker(metric, opts.early_stopping_patience)
        if ddp.is_main:
            clear_run_files(output_dir, [state_path, output_dir / RESULTS_NAME, output_dir / PREDICTIONS_NAME])
    if ddp.is_main:
        write_json(output_dir / "options.json", asdict(opts))
    info = {"task": "seq2seq", "source_column": opts.source_column, "target_column": opts.target_column,
            "target_language": target_language, "max_length": max_source, "max_target_length": max_target,
            "num_beams": opts.num_beams, "max_new_tokens": max_new_tokens, "metric_for_best": metric}

    def score_validation(wrapper) -> dict[str, float]:
        metrics, _ = score_pairs(wrapper.lm, tokenizer, validation, **scoring)
        return {k: (math.nan if v is None else v) for k, v in metrics.items()}  # the loop records floats

    def save(wrapper, record: dict) -> None:
        save_best(wrapper.lm, tokenizer, output_dir, {**info, "step": record["step"], "metrics": record})

    losses, tokens = train_in_chunks(trained, batches, opts, output_dir, boundaries, max_steps, interval, start_step,
                                     steps_per_epoch, tracker, score_validation, save)
    last_step = tracker.history[-1]["step"] if tracker.history else start_step
    if tracker.best is None or (ddp.is_main and not (output_dir / BEST_DIR).is_dir()):
        raise RuntimeError(f"{output_dir}: no evaluation recorded, so no best model")

    # ---- the best model on the whole test split (rank 0; the others get its metrics)
    test_metrics = None
    if "test" in splits and ddp.is_main:
        best_model = AutoModelForSeq2SeqLM.from_pretrained(output_dir / BEST_DIR).to(device).eval()
        test_metrics, outputs = score_pairs(best_model, tokenizer, splits["test"], **scoring)
        write_predictions(output_dir / PREDICTIONS_NAME, splits["test"], outputs)
    test_metrics = ddp.broadcast(test_metrics)
    best = tracker.best
    results = {
        "task": "seq2seq",
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
        "train_examples": len(train_pairs),
        "examples": {"train": len(train_pairs), "train_total": len(splits["train"]),
                     "validation_scored": len(validation), **{k: len(v) for k, v in splits.items() if k != "train"}},
        "data_stats": splits.stats.get("pairs"),
        "elapsed_s": time.perf_counter() - t0,
        "options": asdict(opts),
    }
    if ddp.is_main:
        write_json(output_dir / RESULTS_NAME, results)
    return json_safe(results)


def write_predictions(path: Path, pairs: list[Pair], outputs: list[str]) -> None:
    """One JSON line per pair: source, reference, output, origin."""
    with open(path, "w", encoding="utf-8") as f:
        for pair, output in zip(pairs, outputs):
            f.write(json.dumps({"source": pair.source, "reference": pair.target, "output": output,
                                "origin": pair.origin}, ensure_ascii=False) + "\n")


__all__ = ["build_seq2seq_model", "run_seq2seq", "seq2seq_tokenizer"]
