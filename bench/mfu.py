"""Model-FLOPs utilisation (MFU) of BERT training and inference on this CPU, lmforge vs transformers.

MFU = model FLOPs of the work done / seconds / peak FLOP/s. Peak is measured in the same run, at
the benchmark's thread count: for fp32 and bf16, the median FLOP/s of square matmuls of each of
`--matmul-sizes` (1024 and 2048) through ATen and (where `cpu_caps` allows) oneDNN, the best
taken; `run_all.py` measures it before and after its benchmarks and keeps the higher (this
machine's speed drifts).
Small BERT layers' own GEMM shapes can run ~10% faster still on some CPUs, so treat MFU as
approximate. Model FLOPs count the matmuls a model needs on REAL tokens only (see `encoder_flops`), so the FLOPs an implementation spends on padding,
or on MLM logits nobody asked for, lower its MFU.

This script measures peak, runs small versions of the pretraining (`pretrain_throughput.py`) and
inference (`inference.py`) benchmarks and prints the MFU of each; `run_all.py` reuses
`matmul_peaks` and `mfu_rows` with the numbers of the full benchmarks.

    python bench/mfu.py [--texts 128] [--steps 4] [--threads 2] [--matmul-sizes 1024 2048]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from common import (
    arg_parser,
    fmt,
    fmt_pct,
    fmt_ratio,
    interleaved_times,
    markdown_table,
    median,
    set_threads,
)
from flops import EncoderShape, encoder_flops, minilm_shape

from lmforge.cpu import onednn


def matmul_peaks(sizes: Sequence[int] = (1024, 2048), threads: int = 2, repeats: int = 7) -> dict[str, float]:
    """{"fp32": FLOP/s, "bf16": FLOP/s}: for each dtype the best, over `sizes` and over the two GEMM
    libraries torch ships on CPU (ATen's `@`, and oneDNN, which lmforge's inference uses), of the
    median FLOP/s of `repeats` (n x n) @ (n x n) products (everything interleaved)."""
    set_threads(threads)
    g = torch.Generator().manual_seed(0)
    products = {}
    with torch.inference_mode():
        for n in sizes:
            a, b = torch.randn(n, n, generator=g), torch.randn(n, n, generator=g)
            for dtype, x, y in [("fp32", a, b), ("bf16", a.bfloat16(), b.bfloat16())]:
                products[dtype, n, "aten"] = lambda x=x, y=y: x @ y
                if onednn.active(x, y, fp32=True):  # where cpu_caps allows oneDNN in this dtype (no bf16 on AVX2)
                    products[dtype, n, "onednn"] = lambda x=x, y=y: onednn.linear(x, y, None)  # x @ y^T
        times, _ = interleaved_times(products, repeats=repeats, warmup=1)
    return {dtype: max(2 * key[1] ** 3 / median(t) for key, t in times.items() if key[0] == dtype)
            for dtype in ("fp32", "bf16")}


def describe_peaks(peaks: dict[str, float]) -> str:
    return ", ".join(f"{k} {v / 1e9:,.1f} GFLOP/s" for k, v in peaks.items())


def mfu(flops: float, seconds: float, peak: float) -> float:
    return flops / seconds / peak


@dataclass
class MFURow:
    name: str
    lmforge: float
    transformers: float
    peak: str  # which peak it is measured against

    def cells(self) -> list[str]:
        ratio = fmt_ratio(self.lmforge, self.transformers)
        return [self.name, fmt_pct(self.lmforge), fmt_pct(self.transformers), ratio]


LIBRARIES = ("lmforge", "transformers")


def mfu_rows(peaks: dict[str, float], inference=None, pretrain=None, finetune=None) -> list[MFURow]:
    """MFU rows from the results of inference.run / pretrain_throughput.run / finetune_vs_transformers.run
    (any may be None). Each library's median seconds; model FLOPs are the same for both."""
    rows = []
    if pretrain is not None:
        from pretrain_throughput import SHAPE

        shape = EncoderShape(SHAPE["num_hidden_layers"], SHAPE["hidden_size"], SHAPE["intermediate_size"],
                             SHAPE["vocab_size"])
        per_batch = encoder_flops(shape, [pretrain.seq_len] * pretrain.batch_size, training=True,
                                  mlm_positions=pretrain.masked_per_batch)
        per_token = per_batch / (pretrain.batch_size * pretrain.seq_len)  # x tokens/s = FLOP/s
        ours, theirs = (per_token * pretrain.tokens_per_s[k] / peaks["fp32"] for k in LIBRARIES)
        rows.append(MFURow("MFU pretraining BERT 4x256 (fp32)", ours, theirs, "fp32"))
    if finetune is not None:
        shape = minilm_shape()
        flops = encoder_flops(shape, finetune.lengths, training=True)  # one epoch
        ours, theirs = (mfu(flops, median(finetune.seconds[k]), peaks["fp32"]) for k in LIBRARIES)
        rows.append(MFURow("MFU fine-tuning MiniLM (fp32)", ours, theirs, "fp32"))
    if inference is not None:
        shape = minilm_shape()
        flops = encoder_flops(shape, inference.lengths)
        for dtype in ("fp32", "bf16"):
            names = (f"lmforge {dtype}", f"transformers {dtype}")
            if all(n in inference.times for n in names):
                ours, theirs = (mfu(flops, median(inference.times[n]), peaks[dtype]) for n in names)
                rows.append(MFURow(f"MFU inference MiniLM ({dtype})", ours, theirs, dtype))
    return rows


def main() -> None:
    parser = arg_parser(__doc__)
    parser.add_argument("--matmul-sizes", type=int, nargs="+", default=[1024, 2048])
    parser.add_argument("--texts", type=int, default=128, help="inference texts")
    parser.add_argument("--steps", type=int, default=4, help="pretraining steps per timing")
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds of each benchmark")
    args = parser.parse_args()

    import inference
    import pretrain_throughput

    peaks = matmul_peaks(args.matmul_sizes, args.threads)
    pre = pretrain_throughput.run(steps=args.steps, warmup=1, threads=args.threads, rounds=args.repeats)
    inf = inference.run(n_texts=args.texts, threads=args.threads, repeats=args.repeats)
    print(f"matmul peak (best of {args.matmul_sizes}, {args.threads} threads): {describe_peaks(peaks)}")
    rows = [r.cells() for r in mfu_rows(peaks, inference=inf, pretrain=pre)]
    print(markdown_table(["metric", "lmforge", "transformers", "ratio"], rows))
    print(f"(throughputs: pretraining tokens/s lmforge {fmt(pre.tokens_per_s['lmforge'], 0)}, "
          f"transformers {fmt(pre.tokens_per_s['transformers'], 0)})")


if __name__ == "__main__":
    main()
