"""`lmforge evaluate`: metrics of a fine-tuned model folder on a dataset, a labelled file or a folder; of an
encoder-decoder (seq2seq) folder on parallel data, by generation (sacreBLEU chrF and BLEU, Chinese targets with
the "zh" tokenizer; placeholder survival; teacher-forced loss); or, with --perplexity, the sliding-window
perplexity of a causal LM (HF folder or GGUF file) on a text file.

    lmforge evaluate runs/ft/best --data movie-sentences --split test
    lmforge evaluate runs/mt/best --data ui-strings-en-zh --split test --num-beams 4
    lmforge evaluate --perplexity runs/clm/final held_out.txt --stride 256
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..data.collators import encode
from ..data.datasets import dataset_names
from ..data.labelled import DataError
from ..data.splits import load_splits, raw_splits
from ..eval.scoring import make_scorer
from .common import json_safe, option, write_json
from .finetuned import load_finetuned, max_length_for

SPLIT_CHOICES = ("train", "validation", "test", "all")


@dataclass
class EvaluateOptions:
    model: str | None = option(None, "fine-tuned model folder (e.g. runs/ft/best); with --perplexity a causal LM "
                                     "folder or GGUF file")
    data: str | None = option(None, "dataset name, labelled file, or folder of train/validation/test files")
    split: str | None = option(None, "split to score (default: test for dataset names and folders, the whole "
                                     "file for a file; a split of a file is the finetune's seeded 80/10/10 one)",
                               choices=list(SPLIT_CHOICES))
    text_column: str | None = option(None, "column holding the text (default: as in fine-tuning, else text)")
    text_pair_column: str | None = option(None, "column holding the second text of a pair (default: as in "
                                                "fine-tuning)")
    label_column: str | None = option(None, "column holding the label (default: as in fine-tuning, else label)")
    label_delimiter: str = option("|", "separator of labels in a multi_label string")
    max_length: int | None = option(None, "tokens per sequence (default: the one used in fine-tuning; with "
                                          "--perplexity the window, default: the model's context)")
    batch_size: int = option(64, "examples per batch")
    seed: int = option(0, "seed of the split of a single file (as in finetune)")
    output: str | None = option(None, "also write the metrics JSON to this file", short="-o")
    bf16: bool = option(False, "bfloat16 autocast")
    unpad: bool = option(True, "drop padding tokens before the encoder layers")
    device: str | None = option(None, "cpu, cuda, ... (default: cuda when available)")
    threads: int | None = option(None, "torch CPU threads")
    # Perplexity of a causal LM (after the fields above: callers build EvaluateOptions(model, data, ...)).
    file: str | None = option(None, "with --perplexity: the UTF-8 text file to score", optional=True)
    perplexity: bool = option(False, "perplexity of a causal LM on FILE (sliding window, as the transformers "
                                     "perplexity guide)")
    stride: int | None = option(None, "with --perplexity: tokens between window starts (default: half the window)")
    gguf_file: str | None = option(None, "with --perplexity: GGUF file name inside the MODEL folder")
    # An encoder-decoder (seq2seq) folder: scored by generation (chrF, BLEU, placeholder survival, loss).
    source_column: str | None = option(None, "seq2seq: source column (default: as in fine-tuning, else source)")
    target_column: str | None = option(None, "seq2seq: target column (default: as in fine-tuning, else target)")
    num_beams: int | None = option(None, "seq2seq: beams (default: as in fine-tuning, else 1: greedy)")
    max_new_tokens: int | None = option(None, "seq2seq: generated tokens at most (default: as in fine-tuning)")
    target_language: str | None = option(None, "seq2seq: zh scores BLEU on Chinese characters (default: the "
                                                "dataset's or fine-tuning's)")
    predictions: str | None = option(None, "seq2seq: write source / reference / output JSON lines to this file")


def run(opts: EvaluateOptions) -> dict[str, Any]:
    """Metrics of a fine-tuned folder on labelled data: `{"model", "data", "split", "task", "examples",
    "metrics"}`, also written to `opts.output` when given.

    Columns default to the ones used in fine-tuning (finetune_info.json), else text / label. A label
    the model was not trained on raises DataError naming its file and line.
    """
    if opts.perplexity:
        return perplexity_report(opts)
    if opts.model and is_seq2seq_folder(opts.model):
        return seq2seq_report(opts)
    if not opts.data:
        raise ValueError("no data given (--data DATASET|FILE|FOLDER)")
    if opts.threads:
        torch.set_num_threads(opts.threads)
    split, data = opts.split, str(opts.data)
    if split is not None and split not in SPLIT_CHOICES:
        raise ValueError(f"split must be one of {SPLIT_CHOICES}, got {split!r}")
    net, tokenizer, task, label_map, info = load_finetuned(opts.model, unpad=opts.unpad, device=opts.device)
    columns = {"text_column": opts.text_column or info.get("text_column") or "text",
               "text_pair_column": opts.text_pair_column or info.get("text_pair_column"),
               "label_column": opts.label_column or info.get("label_column") or "label",
               "label_delimiter": opts.label_delimiter}
    raw, _ = raw_splits(data, task, columns, opts.seed)
    lone_file = Path(data).is_file() and data not in dataset_names()
    if split == "all" or (split is None and lone_file):
        split, items = "all", [x for part in raw.values() for x in part]
    else:
        split = split or "test"
        if split in raw and not lone_file:
            items = raw[split]
        else:  # the same completed splits finetune uses (a lone file: its seeded 80/10/10 split)
            splits = load_splits(data, task, seed=opts.seed, **columns)
            if split not in splits:
                raise DataError(f"{data}: no {split!r} split (has {', '.join(splits)})")
            items = splits[split]
    length = max_length_for(opts.max_length, info, net, tokenizer)
    features = encode(task, items, tokenizer, label_map, length)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else net.config.pad_token_id
    metrics = make_scorer(task, items, features, label_map, opts.batch_size, pad_id, opts.bf16)(net)
    report = {"model": str(opts.model), "data": data, "split": split, "task": task, "examples": len(items),
              "metrics": json_safe(metrics)}
    if opts.output:
        write_json(opts.output, report)
    return report


def perplexity_report(opts: EvaluateOptions) -> dict[str, Any]:
    """{"model", "file", "perplexity", "mean_nll", "tokens", "scored", "windows", "max_length", "stride"}."""
    from dataclasses import asdict

    from ..eval.perplexity import sliding_window_perplexity
    from ..files import read_text_utf8
    from .generate import load_causal_lm

    if not opts.model or not opts.file:
        raise ValueError("--perplexity needs MODEL and FILE: lmforge evaluate --perplexity MODEL FILE")
    model, tokenizer = load_causal_lm(opts.model, opts.gguf_file, opts.threads)
    text = read_text_utf8(opts.file)
    ids = tokenizer(text, return_tensors="pt")["input_ids"]
    context = model.config.max_position_embeddings
    max_length = opts.max_length or context
    if max_length > context:
        raise ValueError(f"--max-length {max_length} exceeds the model's context of {context}")
    stride = opts.stride or max(1, max_length // 2)
    report = {"model": str(opts.model), "file": str(opts.file),
              **asdict(sliding_window_perplexity(model, ids, max_length, stride))}
    if opts.output:
        write_json(opts.output, report)
    return report


def is_seq2seq_folder(folder: str) -> bool:
    """A folder fine-tuned with --task seq2seq, or any encoder-decoder LM (BART, Marian, T5 checkpoints)."""
    from ..auto import AutoConfig
    from .finetuned import read_info

    path = Path(folder)
    if not path.is_dir():
        return False
    if read_info(path).get("task") == "seq2seq":
        return True
    architectures = AutoConfig.from_pretrained(path).architectures or []
    return any(a.endswith(("ForConditionalGeneration", "MTModel")) for a in architectures)


def seq2seq_report(opts: EvaluateOptions) -> dict[str, Any]:
    """{"model", "data", "split", "task": "seq2seq", "examples", "metrics", "samples"} of an encoder-decoder folder
    on parallel data (split: test by default; a lone file is split as finetune splits it)."""
    from ..auto import AutoModelForSeq2SeqLM
    from ..data.parallel import load_parallel_splits
    from ..eval.translation import score_pairs
    from ..tokenizers import AutoTokenizer
    from .common import pick_device
    from .finetuned import read_info
    from .seq2seq import source_limit, write_predictions

    if not opts.data:
        raise ValueError("no data given (--data DATASET|FILE|FOLDER)")
    if opts.threads:
        torch.set_num_threads(opts.threads)
    info = read_info(Path(opts.model))
    model = AutoModelForSeq2SeqLM.from_pretrained(opts.model).to(pick_device(opts.device)).eval()
    tokenizer = AutoTokenizer.from_pretrained(opts.model)
    splits = load_parallel_splits(str(opts.data), opts.source_column or info.get("source_column") or "source",
                                  opts.target_column or info.get("target_column") or "target", seed=opts.seed)
    split = opts.split or "test"
    if split == "all":
        pairs = [p for part in splits.values() for p in part]
    elif split in splits:
        pairs = splits[split]
    else:
        raise DataError(f"{opts.data}: no {split!r} split (has {', '.join(splits)})")
    max_source = source_limit(model.config, opts.max_length or info.get("max_length") or 128)
    max_target = source_limit(model.config, info.get("max_target_length") or max_source)
    metrics, outputs = score_pairs(
        model, tokenizer, pairs, target_language=opts.target_language or splits.target_language
        or info.get("target_language"), batch_size=opts.batch_size, num_beams=opts.num_beams or info.get("num_beams")
        or 1, max_new_tokens=opts.max_new_tokens or info.get("max_new_tokens") or max_target,
        max_source_length=max_source, max_target_length=max_target)
    if opts.predictions:
        write_predictions(Path(opts.predictions), pairs, outputs)
    samples = [{"source": p.source, "reference": p.target, "output": o} for p, o in zip(pairs[:5], outputs[:5])]
    report = {"model": str(opts.model), "data": str(opts.data), "split": split, "task": "seq2seq",
              "examples": len(pairs), "metrics": json_safe(metrics), "samples": samples}
    if opts.output:
        write_json(opts.output, report)
    return report
