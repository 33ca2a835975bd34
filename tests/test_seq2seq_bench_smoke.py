"""Smoke tests of bench/seq2seq_train.py and bench/translate.py at their smallest sizes: both libraries run, the
first losses agree, the beams are token-identical, the numbers are finite (benchmarks are never timed tests)."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"
TINY_MARIAN = dict(vocab_size=300, d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
                   decoder_attention_heads=4, encoder_ffn_dim=48, decoder_ffn_dim=48)


def load(monkeypatch, name: str):
    pytest.importorskip("transformers")
    monkeypatch.syspath_prepend(str(BENCH))
    for module in ("common", name):
        sys.modules.pop(module, None)
    return __import__(name)


def test_seq2seq_train_bench_runs_small(monkeypatch):
    bench = load(monkeypatch, "seq2seq_train")
    shape = {**bench.SHAPE, **TINY_MARIAN}
    result = bench.run(steps=1, warmup=0, threads=1, batch_size=4, max_len=10, rounds=1, bf16=True, shape=shape)
    assert result.initial_loss_diff <= 1e-5
    assert set(result.tokens_per_s) == {"lmforge fp32", "transformers fp32", "lmforge bf16", "transformers bf16"}
    assert all(math.isfinite(v) and v > 0 for v in result.tokens_per_s.values())
    assert result.tokens < 2 * 4 * 10  # real tokens only: the batch has padding
    assert len(bench.rows(result)) == 2


def test_translate_bench_runs_small_and_beams_match(monkeypatch):
    bench = load(monkeypatch, "translate")
    shapes = {"marian": {**bench.MARIAN, **TINY_MARIAN},
              "t5": {**bench.T5, "vocab_size": 300, "d_model": 32, "d_kv": 8, "d_ff": 48, "num_layers": 2,
                     "num_decoder_layers": 2}}
    result = bench.run(new=5, repeats=1, threads=1, batch_size=3, beams=2, shapes=shapes)
    assert result.identical == {"marian": True, "t5": True}
    assert all(math.isfinite(v) and v > 0 for v in result.sentences_per_s.values())
    assert len(bench.rows(result, 3, 2)) == 2


def test_gemm_bound_bench_runs_small(monkeypatch):
    """bench/gemm_bound.py: the GEMM and attention shares are fractions, and the bounds lie above the ratio."""
    bench = load(monkeypatch, "gemm_bound")
    shapes = {"train": dict(shape={**bench.seq2seq_train.SHAPE, **TINY_MARIAN}, batch_size=3, max_len=8),
              "marian": dict(shape={**bench.translate.MARIAN, **TINY_MARIAN}, batch_size=2, new=3)}
    for key, kwargs in shapes.items():
        name, make = bench.WORKLOADS[key]
        row = bench.bound_row(name, make(**kwargs))
        assert 0.0 < row["gemm_share"] < 1.0 and 0.0 <= row["attention_share"] < 1.0
        assert row["gemm_share"] + row["attention_share"] <= 1.0
        assert row["bound"] >= row["bound_keeping_attention"] >= row["profiled_ratio"] > 0
