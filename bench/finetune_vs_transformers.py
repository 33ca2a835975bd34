"""Fine-tuning: all-MiniLM-L6-v2 + a new 2-label head on movie-sentences, lmforge vs the transformers Trainer.

Same recipe on both sides: seed 0, AdamW lr 5e-5, weight decay 0.01 (not on biases / LayerNorm),
linear schedule with 10% warm-up, batch 32, max_length 64, 1 epoch, gradient clipping 1.0, fp32,
`--threads` (2) threads. Each side tokenizes with its own tokenizer (untimed) and starts from the
same checkpoint; the classifier head is initialised from each library's seeded RNG.

* lmforge: `AutoModelForSequenceClassification` with the unpadded attention path,
  `lmforge.training.train` over length-grouped shuffled batches padded per batch
  (`length_grouped_order` + `pad_collate`), no checkpoints, no logging.
* transformers: `Trainer` with its defaults for data (random order, `DataCollatorWithPadding`), and
  its extras off (report_to="none", save_strategy="no", eval_strategy="no", logging_strategy="no",
  no progress bar). `--hf-group-by-length` gives it length-grouped batches too.

Timed: the training call only (`train(...)` / `trainer.train()`), not model loading or evaluation,
after one untimed forward + backward of each library (one-time process costs hit neither).
Both fine-tuned models are then scored on the test split by the same evaluation code.
`--rounds N` alternates the two trainings N times (each from a fresh model) and reports medians.

    python bench/finetune_vs_transformers.py [--train-limit N] [--test-limit N] [--rounds 1]
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from typing import Any

import torch
from common import (
    arg_parser,
    describe,
    fmt,
    fmt_ratio,
    markdown_table,
    median,
    minilm_path,
    set_threads,
    timed,
)

LR, WEIGHT_DECAY, WARMUP, BATCH_SIZE, MAX_LENGTH, EPOCHS = 5e-5, 0.01, 0.1, 32, 64, 1


def load_data(train_limit: int | None, test_limit: int | None):
    from lmforge.data.datasets import load_dataset

    splits = load_dataset("movie-sentences")
    return splits["train"][:train_limit], splits["test"][:test_limit], list(splits.labels)


def features(tokenizer, examples, label_names: list[str]) -> list[dict]:
    """Feature dicts (input_ids, attention_mask, token_type_ids, labels) of either library's tokenizer."""
    from lmforge.data.collators import encode_classification
    from lmforge.data.labels import LabelMap

    return encode_classification(examples, tokenizer, LabelMap(label_names), MAX_LENGTH)


@torch.no_grad()
def accuracy(model, feats: list[dict], pad_id: int, batch_size: int = 64) -> float:
    """Test accuracy; the same code scores both libraries' models (HF argument names)."""
    from lmforge.data.batches import length_sorted_batches
    from lmforge.data.collators import pad_collate

    model.eval()
    correct = 0
    for indices in length_sorted_batches([len(f["input_ids"]) for f in feats], batch_size):
        batch = pad_collate([feats[i] for i in indices], pad_id)
        labels = batch.pop("labels")
        correct += int((model(**batch).logits.argmax(-1) == labels).sum())
    return correct / len(feats)


def steps_per_epoch(n: int) -> int:
    return -(-n // BATCH_SIZE)


# ------------------------------------------------------------------------------------------ lmforge
def finetune_lmforge(path, train_feats: list[dict], label_names: list[str], seed: int) -> tuple[float, Any]:
    """(seconds of the training call, the fine-tuned model)."""
    import lmforge
    from lmforge.data.batches import length_grouped_order
    from lmforge.data.collators import pad_collate
    from lmforge.training.loop import TrainArgs, train

    torch.manual_seed(seed)
    model = lmforge.AutoModelForSequenceClassification.from_pretrained(
        path, num_labels=len(label_names), id2label=dict(enumerate(label_names)),
        label2id={n: i for i, n in enumerate(label_names)},
    )
    model.set_attn_implementation("unpadded")
    pad_id = model.config.pad_token_id
    order = length_grouped_order([len(f["input_ids"]) for f in train_feats], BATCH_SIZE, seed=seed)
    batches = [pad_collate([train_feats[i] for i in order[j:j + BATCH_SIZE]], pad_id)
               for j in range(0, len(order), BATCH_SIZE)]
    with tempfile.TemporaryDirectory() as out:
        args = TrainArgs(output_dir=out, max_steps=EPOCHS * steps_per_epoch(len(train_feats)),
                         learning_rate=LR, weight_decay=WEIGHT_DECAY, warmup_ratio=WARMUP, schedule="linear",
                         max_grad_norm=1.0, log_every=0, save_every=0, seed=seed, progress=False)
        seconds, _ = timed(lambda: train(model, batches, args))
    return seconds, model


# ------------------------------------------------------------------------------------- transformers
def finetune_transformers(path, tokenizer, train_feats: list[dict], label_names: list[str], seed: int,
                          group_by_length: bool = False) -> tuple[float, Any]:
    import transformers

    transformers.set_seed(seed)
    model = transformers.AutoModelForSequenceClassification.from_pretrained(
        path, num_labels=len(label_names), id2label=dict(enumerate(label_names)),
        label2id={n: i for i, n in enumerate(label_names)}, attn_implementation="sdpa",
    )
    with tempfile.TemporaryDirectory() as out:
        args = transformers.TrainingArguments(
            output_dir=out, per_device_train_batch_size=BATCH_SIZE, learning_rate=LR,
            weight_decay=WEIGHT_DECAY, num_train_epochs=EPOCHS, lr_scheduler_type="linear",
            warmup_steps=WARMUP, max_grad_norm=1.0, seed=seed, use_cpu=True, dataloader_num_workers=0,
            report_to="none", save_strategy="no", eval_strategy="no", logging_strategy="no",
            disable_tqdm=True,
            train_sampling_strategy="group_by_length" if group_by_length else "random",
        )
        trainer = transformers.Trainer(model=model, args=args, train_dataset=train_feats,
                                       data_collator=transformers.DataCollatorWithPadding(tokenizer))
        trainer.remove_callback(transformers.PrinterCallback)  # the end-of-training metrics print
        seconds, _ = timed(trainer.train)
    return seconds, model


# ------------------------------------------------------------------------------------------- run
def warm_up(path, lf_feats: list[dict], hf_feats: list[dict], num_labels: int) -> None:
    """One untimed forward + backward of each library's model on one batch, so that whichever
    trains first does not alone pay the process's one-time costs (autograd threads, kernel set-up)."""
    import transformers

    import lmforge
    from lmforge.data.collators import pad_collate

    for auto, feats in [(lmforge.AutoModelForSequenceClassification, lf_feats),
                        (transformers.AutoModelForSequenceClassification, hf_feats)]:
        model = auto.from_pretrained(path, num_labels=num_labels).train()
        model(**pad_collate(feats[:BATCH_SIZE], model.config.pad_token_id)).loss.backward()


@dataclass
class FinetuneResult:
    examples_per_s: dict[str, float]  # median over rounds
    seconds: dict[str, list[float]]
    test_accuracy: dict[str, float]  # of the first round's models
    train_examples: int
    test_examples: int
    lengths: list[int]  # tokens of each training example (lmforge tokenizer)


def run(train_limit: int | None = None, test_limit: int | None = None, threads: int = 2, rounds: int = 1,
        seed: int = 0, hf_group_by_length: bool = False) -> FinetuneResult:
    import transformers

    import lmforge

    set_threads(threads)
    transformers.logging.set_verbosity_error()  # the "newly initialized head" notice, once per round
    path = minilm_path()
    train_ex, test_ex, label_names = load_data(train_limit, test_limit)
    lf_tok = lmforge.AutoTokenizer.from_pretrained(path)
    hf_tok = transformers.AutoTokenizer.from_pretrained(path)
    lf_train, lf_test = features(lf_tok, train_ex, label_names), features(lf_tok, test_ex, label_names)
    hf_train, hf_test = features(hf_tok, train_ex, label_names), features(hf_tok, test_ex, label_names)

    warm_up(path, lf_train, hf_train, len(label_names))
    seconds: dict[str, list[float]] = {"lmforge": [], "transformers": []}
    acc: dict[str, float] = {}
    for r in range(rounds):
        t, model = finetune_lmforge(path, lf_train, label_names, seed)
        seconds["lmforge"].append(t)
        if r == 0:
            acc["lmforge"] = accuracy(model, lf_test, lf_tok.pad_token_id)
        t, model = finetune_transformers(path, hf_tok, hf_train, label_names, seed, hf_group_by_length)
        seconds["transformers"].append(t)
        if r == 0:
            acc["transformers"] = accuracy(model, hf_test, hf_tok.pad_token_id)
    return FinetuneResult(
        examples_per_s={k: EPOCHS * len(train_ex) / median(v) for k, v in seconds.items()},
        seconds=seconds, test_accuracy=acc, train_examples=len(train_ex), test_examples=len(test_ex),
        lengths=[len(f["input_ids"]) for f in lf_train],
    )


def report(result: FinetuneResult, threads: int) -> str:
    ex, acc, sec = result.examples_per_s, result.test_accuracy, result.seconds
    rows = [
        ["training examples/s", fmt(ex["lmforge"]), fmt(ex["transformers"]),
         fmt_ratio(ex["lmforge"], ex["transformers"])],
        ["training wall time, s (median)", fmt(median(sec["lmforge"])), fmt(median(sec["transformers"])),
         fmt_ratio(median(sec["transformers"]), median(sec["lmforge"])) + " faster"],
        ["test accuracy, %", fmt(100 * acc["lmforge"], 2), fmt(100 * acc["transformers"], 2),
         f"{100 * (acc['lmforge'] - acc['transformers']):+.2f} points"],
    ]
    return "\n".join([
        f"MiniLM-L6 fine-tuning on movie-sentences: {result.train_examples} train / "
        f"{result.test_examples} test examples, {EPOCHS} epoch, batch {BATCH_SIZE}, max_length {MAX_LENGTH}, "
        f"fp32, {describe(threads)}",
        markdown_table(["metric", "lmforge", "transformers Trainer", "ratio"], rows),
    ])


def main() -> None:
    parser = arg_parser(__doc__)
    parser.add_argument("--train-limit", type=int, default=None, help="first N training sentences")
    parser.add_argument("--test-limit", type=int, default=None, help="first N test sentences")
    parser.add_argument("--rounds", type=int, default=1, help="alternating trainings per library (median)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--hf-group-by-length", action="store_true",
                        help="length-grouped batches for the Trainer too (default: its random order)")
    args = parser.parse_args()
    result = run(args.train_limit, args.test_limit, args.threads, args.rounds, args.seed,
                 args.hf_group_by_length)
    print(report(result, args.threads))


if __name__ == "__main__":
    main()
