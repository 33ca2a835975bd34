"""Pretraining recipe: raw text -> tokenizer -> BERT instances -> MLM (+NSP) or ELECTRA -> HF-format model.

    lmforge pretrain --corpus movie-reviews --preset bert-mini -o runs/pretrain --max-minutes 10
    lmforge pretrain --corpus movie-reviews --objective electra -o runs/electra

`--objective electra` (replaced-token detection, `models.electra.pretraining`) trains a generator of
`--generator-size` times the preset's width and a discriminator of the preset's size; `final/` is the
discriminator (an HF `electra` folder, ElectraForPreTraining) and `final/generator/` the generator.

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

# objective -> what the model learns from (the collator's corruption and the heads' losses)
OBJECTIVES = {
    "mlm+nsp": "masked LM (80/10/10 corruption) + next-sentence prediction (BERT)",
    "mlm": "masked LM only (RoBERTa / Cramming style)",
    "electra": "replaced-token detection: generator MLM on [MASK]-only masking + discriminator on every token",
}

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
    objective: str = option("mlm+nsp", "training objective (electra: replaced-token detection, Clark et al. 2020)",
                            choices=list(OBJECTIVES))
    generator_size: float = option(0.25, "electra: the generator's hidden/feed-forward size and heads as a fraction "
                                         "of the discriminator's")
    disc_weight: float = option(50.0, "electra: weight of the discriminator's loss (loss = mlm + w * rtd)")
    embedding_size: int | None = option(None, "electra: width of the embeddings both models share (default: the "
                                              "hidden size)")
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
    max_steps: int = option(2000, "optimizer steps (the schedule's length)")
    max_minutes: float | None = option(None, "stop after this many minutes (checkpoint and export still happen)")
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
        if self.objective not in OBJECTIVES:
            raise ValueError(f"unknown objective {self.objective!r}; choose one of {list(OBJECTIVES)}")
        if self.objective == "electra" and self.model_type not in ("bert", "electra"):
            raise ValueError(f"--objective electra trains the electra family; --model-type {self.model_type!r} "
                             "cannot be used with it")
        if self.model_type == "electra" and self.objective == "mlm+nsp":
            raise ValueError("--model-type electra has no next-sentence head: use --objective electra or mlm")
        if not 0 < self.generator_size <= 1:
            raise ValueError(f"generator_size must be in (0, 1], got {self.generator_size}")
        if self.embedding_size is not None and family(self) != "electra":
            raise ValueError("--embedding-size applies to the electra family only")


def family(opts: PretrainOptions) -> str:
    """The model_type trained: --model-type, except that the electra objective always trains ELECTRA."""
    return "electra" if opts.objective == "electra" else opts.model_type


def model_config(opts: PretrainOptions, vocab_size: int, pad_token_id: int):
    """The config of the family trained (`family`, through lmforge.auto) at the preset's sizes, with the
    training dropout. For ELECTRA this is the discriminator's."""
    sizes = dict(PRESETS[opts.preset])
    for name in sizes:
        if getattr(opts, name) is not None:
            sizes[name] = getattr(opts, name)
    if family(opts) == "electra":
        sizes["embedding_size"] = opts.embedding_size or sizes["hidden_size"]
    return AutoConfig.for_model(family(opts), vocab_size=vocab_size, pad_token_id=pad_token_id,
                                max_position_embeddings=max(512, opts.max_seq_length),
                                hidden_dropout_prob=opts.dropout, attention_probs_dropout_prob=opts.dropout, **sizes)


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


def make_electra_evaluator(eval_batches: list[dict[str, torch.Tensor]]):
    """Over fixed, pre-masked batches, with replacements drawn from a fixed seed: the generator's MLM loss /
    accuracy / perplexity at masked positions, and the discriminator's accuracy over every real token, on the
    replaced ones and on the original ones, and its ROC AUC ("replaced" scores vs labels)."""
    from ..eval.metrics import roc_auc

    def evaluate(model) -> dict[str, float]:
        device = next(model.parameters()).device
        sampling = torch.Generator(device=device).manual_seed(0)
        mlm_loss_sum = mlm_correct = mlm_count = 0.0
        scores, replaced = [], []
        for batch in eval_batches:
            batch = {k: v.to(device) for k, v in batch.items()}
            out = model(**batch, sampling_generator=sampling)
            targets = batch["labels"][batch["labels"] != IGNORE_INDEX]  # (N,)
            mlm_loss_sum += torch.nn.functional.cross_entropy(out.generator_logits.float(), targets,
                                                              reduction="sum").item()
            mlm_correct += (out.generator_logits.argmax(-1) == targets).sum().item()
            mlm_count += targets.numel()
            real = batch["attention_mask"] == 1
            scores.append(out.logits[real].float().cpu())
            replaced.append(out.replaced[real].cpu())
        scores, replaced = torch.cat(scores), torch.cat(replaced)  # (tokens,)
        said_replaced = scores > 0
        mlm_loss = mlm_loss_sum / max(mlm_count, 1)
        return {
            "mlm_loss": mlm_loss, "mlm_accuracy": mlm_correct / max(mlm_count, 1),
            "perplexity": math.exp(min(mlm_loss, 50.0)),
            "replaced_fraction": replaced.float().mean().item(),
            "disc_accuracy": (said_replaced == replaced).float().mean().item(),
            "disc_replaced_accuracy": said_replaced[replaced].float().mean().item() if replaced.any() else math.nan,
            "disc_original_accuracy": (~said_replaced[~replaced]).float().mean().item(),
            "disc_auc": roc_auc(scores.numpy(), replaced.numpy()),
        }

    return evaluate


def build_model(opts: PretrainOptions, config):
    """The model the objective trains: ELECTRA's generator + discriminator pair, or a pretraining / masked-LM
    model of the configured family."""
    if opts.objective == "electra":
        from ..models.electra import ElectraPretrainingModel

        return ElectraPretrainingModel(config, generator_size=opts.generator_size, disc_weight=opts.disc_weight)
    return (AutoModelForPreTraining if opts.objective == "mlm+nsp" else AutoModelForMaskedLM).from_config(config)


def export(model, opts: PretrainOptions, tokenizer, final: Path) -> None:
    """`final/`: the model kept (ELECTRA: the discriminator; its generator goes to `final/generator/`) with the
    tokenizer. Dropout is a training-time setting: exported configs carry the one fine-tuning should use."""
    dropout = dict(hidden_dropout_prob=opts.export_dropout, attention_probs_dropout_prob=opts.export_dropout)
    folders = {final: model}
    if opts.objective == "electra":
        folders = {final: model.discriminator, final / "generator": model.generator}
    for folder, kept in folders.items():
        kept.config = kept.config.replace(**dropout)
        kept.save_pretrained(folder)
        tokenizer.save_pretrained(folder)


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

    electra = opts.objective == "electra"
    # ELECTRA's generator sees [MASK] at every chosen position (the paper's masking); BERT's 80/10/10 otherwise.
    collator = MaskingCollator(tokenizer, mlm_probability=opts.mlm_probability,
                               max_predictions_per_seq=opts.max_predictions_per_seq,
                               whole_word_mask=opts.whole_word_mask,
                               mask_replace_prob=1.0 if electra else 0.8, random_replace_prob=0.0 if electra else 0.1)
    batches = PretrainingBatches(train_set, collator, opts.batch_size * world_size, seed=opts.seed,
                                 rank=rank, world_size=world_size)
    eval_batches = []
    if len(eval_set) >= opts.batch_size:
        eval_source = PretrainingBatches(eval_set, collator, opts.batch_size, seed=opts.seed + 1, shuffle=False)
        eval_batches = [next(eval_source) for _ in range(min(opts.eval_batches, len(eval_source)))]

    torch.manual_seed(opts.seed)
    config = model_config(opts, tokenizer.vocab_size, tokenizer.pad_token_id)
    model = build_model(opts, config)
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
    )
    evaluator = (make_electra_evaluator if electra else make_evaluator)(eval_batches) if eval_batches else None
    # ELECTRA's generator gathers the masked positions itself (it needs their logits to sample from).
    result = train(model, batches if electra else SparseMLMBatches(batches), args, evaluate=evaluator)

    final = output_dir / "final"
    if rank == 0:
        export(model, opts, tokenizer, final)
    _barrier()
    summary = {
        "final_dir": str(final),
        "steps": result.step,
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
