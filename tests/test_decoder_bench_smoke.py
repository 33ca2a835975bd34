"""Smoke test of bench/decoder_forward.py on a tiny GGUF file: it runs, loads in both libraries, measures
loading in subprocesses and reports finite numbers (benchmarks are never timed tests)."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"


def test_decoder_bench_runs_on_a_tiny_gguf(tmp_path, monkeypatch):
    pytest.importorskip("transformers")
    pytest.importorskip("gguf")
    from test_gguf import hf_llama, write_gguf

    path = write_gguf(tmp_path / "tiny.gguf", hf_llama().state_dict())
    monkeypatch.syspath_prepend(str(BENCH))
    for name in ("common", "decoder_forward"):
        sys.modules.pop(name, None)
    import decoder_forward

    result = decoder_forward.run(path, batch=2, seq=8, repeats=1, threads=2)
    assert all(math.isfinite(v) and v > 0 for v in result.tokens_per_s.values())
    assert result.max_abs_diff <= decoder_forward.MAX_ABS_DIFF
    assert set(result.loading) == {"lmforge", "transformers"}
    assert all(cost["peak_rss_mb"] > 0 for cost in result.loading.values())
    text = decoder_forward.report(result, threads=2)
    assert "forward SmolLM2-135M fp32 2x8" in text and "peak RSS" in text
