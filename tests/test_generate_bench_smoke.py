"""Smoke test of bench/generate.py on a tiny GGUF file: both libraries generate, the numbers are finite and the
greedy tokens agree (benchmarks are never timed tests)."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parent.parent / "bench"


def test_generate_bench_runs_on_a_tiny_gguf(tmp_path, monkeypatch):
    pytest.importorskip("transformers")
    pytest.importorskip("gguf")
    from test_gguf import hf_llama, write_gguf

    path = write_gguf(tmp_path / "tiny.gguf", hf_llama().state_dict())
    monkeypatch.syspath_prepend(str(BENCH))
    for name in ("common", "decoder_forward", "generate"):
        sys.modules.pop(name, None)
    import generate

    result = generate.run(path, new=6, repeats=1, threads=1, prompt=5, lengths=(2, 5, 9))
    assert all(math.isfinite(v) and v > 0 for v in result.tokens_per_s.values())
    assert all(v > 0 for v in (*result.first_token_s.values(), *result.bare_step_s.values()))
    assert result.identical == {"b1": True, "b8": True}
    report = generate.report(result, threads=1)
    assert "batch 8 left-padded" in report
    if torch.ops.mkldnn._is_mkldnn_bf16_supported():  # bf16 weights: timed, and their tokens compared with fp32's
        assert set(result.bf16_same_tokens) == {"b1", "b8"}
        assert all(0.0 <= v <= 1.0 for v in result.bf16_same_tokens.values())
        assert "lmforge bf16 weights vs transformers fp32, batch 8" in report
        assert "lmforge vs transformers, both bf16 weights, batch 1" in report
