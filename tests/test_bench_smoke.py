"""Smoke test of bench/: every benchmark module imports and runs its smallest configuration.

Benchmarks are never timed tests: this checks only that each produces finite, positive numbers
and that run_all assembles its table from them.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"


def _positive(values) -> bool:
    return all(math.isfinite(v) and v > 0 for v in values)


def test_benchmarks_run_at_smallest_sizes(minilm_path, monkeypatch):
    pytest.importorskip("transformers")
    from lmforge.data.datasets import DatasetFetchError, fetch_dataset_files

    try:
        fetch_dataset_files()
    except DatasetFetchError as e:
        pytest.skip(f"movie-review data unavailable: {e}")
    monkeypatch.syspath_prepend(str(BENCH))  # the scripts import each other as siblings
    for name in ("common", "inference", "pretrain_throughput", "finetune_vs_transformers", "mfu", "run_all",
                 "clm_pretrain"):
        sys.modules.pop(name, None)
    import clm_pretrain
    import finetune_vs_transformers
    import inference
    import mfu
    import pretrain_throughput
    import run_all

    inf = inference.run(n_texts=3, batch_size=2, threads=2, repeats=1)
    assert _positive(inf.texts_per_s.values())
    assert set(inf.texts_per_s) >= {"lmforge fp32", "lmforge fp32, seed code", "transformers bf16"}
    assert inf.max_abs_diff <= inference.MAX_ABS_DIFF and 0 < inf.real_token_fraction <= 1
    assert inf.max_abs_diff_seed <= 1e-5  # the seed code: transformers' outputs at real tokens

    pre = pretrain_throughput.run(steps=1, warmup=0, threads=2, batch_size=2, seq_len=16)
    assert _positive(pre.tokens_per_s.values())

    ft = finetune_vs_transformers.run(train_limit=4, test_limit=2, threads=2)
    assert _positive(ft.examples_per_s.values())
    assert all(0.0 <= a <= 1.0 for a in ft.test_accuracy.values())

    peaks = mfu.matmul_peaks(sizes=(64,), threads=2, repeats=1)
    rows = mfu.mfu_rows(peaks, inference=inf, pretrain=pre, finetune=ft)
    assert len(rows) == 4 and _positive(v for r in rows for v in (r.lmforge, r.transformers))

    tiny_gpt2 = dict(clm_pretrain.SHAPE, vocab_size=64, n_embd=32, n_head=2, n_inner=64, n_layer=1, n_positions=16)
    clm = clm_pretrain.run(steps=1, warmup=0, threads=2, batch_size=2, seq_len=8, rounds=1, shape=tiny_gpt2)

    results = {"peaks": peaks, "peak_runs": (peaks, peaks), "inference": inf, "pretrain": pre, "finetune": ft,
               "mfu": rows, "seconds": 1.0, "clm": clm,
               "sizes": run_all.QUICK}
    table = run_all.summary(results, threads=2, quick=True)
    assert "| metric | lmforge | transformers | ratio |" in table and "MFU inference MiniLM (bf16)" in table
    assert "causal LM fp32, tokens/s" in table and "(causal LM: 2 x 8, unpadded blocks); fine-tuning: 4 train" in table
    assert "seed code (default model, given order)" in table


def test_benchmarks_run_on_the_aten_fallback(minilm_path, monkeypatch):
    """Where cpu_caps says oneDNN (or its bf16, as on AVX2) is absent, the oneDNN users among the
    benchmarks (matmul peaks, lmforge's inference) run on ATen."""
    pytest.importorskip("transformers")
    from lmforge.cpu import capabilities as cpu_caps
    from lmforge.cpu import onednn

    monkeypatch.syspath_prepend(str(BENCH))
    for name in ("common", "inference", "mfu"):
        sys.modules.pop(name, None)
    import inference
    import mfu

    calls = []
    real_linear = onednn.linear
    monkeypatch.setattr(onednn, "linear", lambda *a, **k: calls.append(1) or real_linear(*a, **k))
    with cpu_caps.forced(capability="avx2", disable_onednn=True):
        peaks = mfu.matmul_peaks(sizes=(64,), threads=2, repeats=1)
        inf = inference.run(n_texts=3, batch_size=2, threads=2, repeats=1)
    assert calls == []
    assert set(peaks) == {"fp32", "bf16"} and _positive(peaks.values())
    assert _positive(inf.texts_per_s.values()) and "lmforge bf16" in inf.texts_per_s
    assert inf.max_abs_diff <= inference.MAX_ABS_DIFF


def test_clm_pretrain_bench_runs_at_smallest_sizes(monkeypatch):
    """bench/clm_pretrain.py: same weights in both libraries (equal first loss), finite throughputs, table rows;
    run_all's summary takes its rows."""
    pytest.importorskip("transformers")
    monkeypatch.syspath_prepend(str(BENCH))
    for name in ("common", "clm_pretrain"):
        sys.modules.pop(name, None)
    import clm_pretrain

    shape = dict(clm_pretrain.SHAPE, vocab_size=64, n_embd=32, n_head=2, n_inner=64, n_layer=1, n_positions=16)
    result = clm_pretrain.run(steps=1, warmup=0, threads=1, batch_size=2, seq_len=8, rounds=1, bf16=True, shape=shape)
    assert result.initial_loss_diff < 1e-5
    assert set(result.tokens_per_s) == {"lmforge fp32", "transformers fp32", "lmforge bf16", "transformers bf16"}
    assert _positive(result.tokens_per_s.values())
    rows = clm_pretrain.rows(result)
    assert len(rows) == 3 and all(r[3].endswith("x") for r in rows)


def test_serve_load_runs_small(tmp_path):
    """bench/serve_load.py end to end on a tiny embedding folder: a few requests, a few fuzzed ones, exit 0."""
    pytest.importorskip("fastapi")
    pytest.importorskip("httpx")
    import json
    import subprocess

    import torch

    from lmforge import BertConfig
    from lmforge.models.bert import BertModel
    from lmforge.tokenizers import train_tokenizer

    words = ["the", "movie", "was", "a", "great", "story", "about", "two", "friends", "and", "the", "plot", "is", "thin"]
    tokenizer = train_tokenizer([" ".join(words[i:] + words[:i]) for i in range(len(words))] * 5, tmp_path / "m",
                                vocab_size=80, min_frequency=1)
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=32)).save_pretrained(tmp_path / "m")
    result = subprocess.run([sys.executable, str(BENCH / "serve_load.py"), "--model", str(tmp_path / "m"),
                             "--requests", "16", "--concurrency", "4", "--fuzz", "40", "--threads", "1",
                             "--json", str(tmp_path / "load.json")], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    load = json.loads((tmp_path / "load.json").read_text())
    assert load["concurrent"]["errors"] == 0 and load["fuzz"]["5xx_or_failed"] == 0
    assert _positive([load["concurrent"]["req_per_s"], load["one_at_a_time"]["p50_ms"]])
    assert load["max_abs_diff_batched_vs_single"] < 1e-5


def test_onnx_inference_bench_runs_small(tmp_path, monkeypatch):
    """bench/onnx_inference.py at its smallest size on a tiny embedding folder: both rows finite, embeddings equal."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    import torch

    from lmforge import BertConfig
    from lmforge.models.bert import BertModel

    monkeypatch.syspath_prepend(str(BENCH))
    for name in ("common", "onnx_inference"):
        sys.modules.pop(name, None)
    import onnx_inference

    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=60, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=32)).save_pretrained(tmp_path / "m")
    result = onnx_inference.run(tmp_path / "m", batch_size=2, seq_len=8, batches=1, repeats=1, threads=1)
    assert set(result.seq_per_s) == {"lmforge eager", "onnxruntime"} and _positive(result.seq_per_s.values())
    assert result.max_abs_diff < 1e-4
    assert onnx_inference.rows(result)[0][3].endswith("x")
