"""`lmforge demo` end to end at the smallest size: pretrain, fine-tune, report with plots."""

from __future__ import annotations

import json

import pytest

from lmforge.cli import main


@pytest.fixture
def demo_cache(tmp_path, monkeypatch):
    """The fetched movie-review data (skip when it cannot be fetched), with this test's tokenized cache kept out
    of the user's cache."""
    from lmforge.data.datasets import DatasetFetchError, cache_dir, fetch_dataset_files

    try:
        fetch_dataset_files()
    except DatasetFetchError as e:
        pytest.skip(f"movie-review data unavailable: {e}")
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "datasets").symlink_to(cache_dir() / "datasets")
    monkeypatch.setenv("LMFORGE_CACHE", str(tmp_path / "cache"))


def test_demo_writes_report_table_and_plots(tmp_path, demo_cache):
    out = tmp_path / "demo"
    assert main(["demo", "-o", str(out), "--preset", "bert-tiny", "--pretrain-steps", "4", "--pretrain-minutes", "1",
                 "--epochs", "1", "--min-steps", "2", "--fractions", "0.1", "--seeds", "0,1", "--skip-minilm",
                 "--threads", "1", "--workers", "2"]) == 0
    report = (out / "report.md").read_text()
    assert "| random init | 10% | 320 | 2 |" in report and "| lmforge pretrained | 10% | 320 | 2 |" in report
    assert (out / "pretraining_loss.png").stat().st_size > 0 and (out / "accuracy_vs_labels.png").stat().st_size > 0
    results = json.loads((out / "results.json").read_text())
    rows = results["rows"]
    assert {r["model"] for r in rows} == {"random init", "lmforge pretrained"}
    for r in rows:
        assert 0.0 <= r["accuracy"] <= 1.0 and len(r["accuracies"]) == 2
        assert r["accuracy"] == pytest.approx(sum(r["accuracies"]) / 2)
        assert f"{r['accuracy']:.1%} ± {r['accuracy_std']:.1%}" in report
    # the word-level section: neighbours of sentiment words, random vs pretrained
    assert "## What pretraining did to words" in report
    assert set(results["nearest_neighbours"]) == {"random init", "lmforge pretrained"}


def test_demo_side_by_side_fine_tuning_equals_one_after_another(tmp_path, demo_cache, capsys):
    """Two worker processes at one thread each give the rows that one process at one thread gives."""
    out = tmp_path / "demo"
    args = ["demo", "-o", str(out), "--preset", "bert-tiny", "--pretrain-steps", "3", "--pretrain-minutes", "1",
            "--epochs", "1", "--min-steps", "3", "--fractions", "0.01,0.03", "--seeds", "0", "--skip-minilm",
            "--threads", "1"]
    results = {}
    for workers in ("2", "1"):
        assert main([*args, "--workers", workers]) == 0
        rows = json.loads((out / "results.json").read_text())["rows"]
        results[workers] = [(r["model"], r["fraction"], r["accuracies"], r["steps"]) for r in rows]
    assert "in 2 processes side by side" in capsys.readouterr().out
    assert results["2"] == results["1"] and len(results["1"]) == 4


def test_demo_fine_tuning_error_in_a_worker_reaches_the_caller(tmp_path):
    """A run that fails in a worker process ends the side-by-side fine-tuning with that run's error."""
    from lmforge.recipes.demo import DemoOptions, finetune_step

    opts = DemoOptions(output_dir=str(tmp_path), fractions=[0.01, 0.03], seeds=[0], large_fraction_seeds=[0],
                       skip_minilm=True, workers=2)
    with pytest.raises(Exception, match="no-such-model"):
        finetune_step(opts, tmp_path, tmp_path / "no-such-model")
