"""`lmforge predict`: labels and probabilities (or entities) for every row of a CSV / TSV / JSONL file, with
a fine-tuned model folder, written as JSONL / CSV / TSV in the input's order.

    lmforge predict runs/ft/best input.csv -o predictions.jsonl
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..data.collators import encode
from ..data.labelled import load_examples
from ..eval.scoring import run_model
from ..files import atomic_write
from .common import option
from .finetuned import load_finetuned, max_length_for


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
        from ..pipelines.token_classification import TokenClassificationPipeline

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

    def write(tmp: Path) -> None:
        with open(tmp, "w", encoding="utf-8", newline="") as f:
            if delim is None:
                f.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
                return
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

    atomic_write(path, write)


def run(opts: PredictOptions) -> int:
    """Predict every row of `opts.input` (CSV / TSV / JSONL) into `opts.output` (.jsonl / .csv / .tsv), in
    the input's order; returns the number of rows."""
    if not opts.output:
        raise ValueError("no output file given (-o OUT.jsonl|OUT.csv)")
    if opts.threads:
        torch.set_num_threads(opts.threads)
    _output_format(Path(opts.output))  # fail before the work
    net, tokenizer, task, label_map, info = load_finetuned(opts.model, unpad=opts.unpad, device=opts.device)
    text_column = opts.text_column or info.get("text_column") or "text"
    text_pair_column = opts.text_pair_column
    if text_pair_column is None and task != "token_classification":
        text_pair_column = info.get("text_pair_column")
    examples = load_examples(opts.input, text_column=text_column, text_pair_column=text_pair_column,
                             label_column=None)
    length = max_length_for(opts.max_length, info, net, tokenizer)
    rows = predict_rows(net, tokenizer, task, label_map, examples, length, opts.batch_size, opts.bf16)
    write_rows(rows, opts.output, label_map.names if label_map is not None else ())
    return len(rows)
