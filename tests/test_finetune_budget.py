"""Fine-tuning with few labels: a budget in optimizer steps (--max-steps / --min-steps), early stopping that
keeps the best model, --seeds with mean / std over the runs, and the flags that set them."""

from __future__ import annotations

import json
import logging
import statistics

import pytest
import torch
from test_finetune import _scripted, _weight_sum, make_checkpoint, options, sentiment_rows, write_csv

from lmforge.cli import build_parser, main
from lmforge.recipes.common import build_options
from lmforge.recipes.finetune import FinetuneOptions, mean_std, run


@pytest.fixture(autouse=True)
def _quiet_loading():
    logging.getLogger("lmforge").setLevel(logging.ERROR)
    yield


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("ckpt"))


@pytest.fixture(scope="module")
def sentiment_csv(tmp_path_factory):
    return write_csv(tmp_path_factory.mktemp("data") / "reviews.csv", sentiment_rows())


def logged_steps(out) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_max_steps_replaces_epochs_and_the_schedule_decays_over_it(ckpt, sentiment_csv, tmp_path):
    # 320 examples / 16 = 20 steps per epoch; 4 epochs would be 80 steps
    results = run(options(ckpt, sentiment_csv, tmp_path / "out", epochs=4, max_steps=7, eval_every=3,
                          warmup_ratio=0.3, log_every=1))
    assert results["steps"] == results["max_steps"] == 7
    assert [h["step"] for h in results["history"]] == [3, 6, 7]
    lrs = [r["lr"] for r in logged_steps(tmp_path / "out") if "lr" in r]
    assert len(lrs) == 7
    # warm-up over ceil(0.3 * 7) = 3 steps, then linear decay to 0 at step 7
    assert lrs[:4] == pytest.approx([0.0, 1e-3, 2e-3, 3e-3])
    assert lrs[-1] == pytest.approx(3e-3 / 4)


def test_min_steps_gives_a_small_label_set_more_epochs(ckpt, sentiment_csv, tmp_path):
    # 10% of 320 = 32 examples, 2 steps per epoch: 1 epoch would be 2 steps
    results = run(options(ckpt, sentiment_csv, tmp_path / "out", epochs=1, label_fraction=0.1, min_steps=12,
                          eval_every=4))
    assert results["train_examples"] == 32 and results["steps_per_epoch"] == 2
    assert results["steps"] == results["max_steps"] == 12
    assert [h["epoch"] for h in results["history"]] == [2.0, 4.0, 6.0]
    # min_steps only raises the budget: 4 epochs (80 steps) stay 80
    assert FinetuneOptions(epochs=4, min_steps=12).step_budget(20) == 80


def test_early_stopping_on_steps_stops_and_keeps_the_best(ckpt, sentiment_csv, tmp_path, monkeypatch):
    sums = _scripted(monkeypatch, [0.5, 0.8, 0.7, 0.6, 0.95])
    results = run(options(ckpt, sentiment_csv, tmp_path / "out", max_steps=50, eval_every=5,
                          early_stopping_patience=2))
    assert [h["step"] for h in results["history"]] == [5, 10, 15, 20]
    assert results["stopped_early"] and results["steps"] == 20 and results["best_step"] == 10
    assert max(r["step"] for r in logged_steps(tmp_path / "out")) == 20  # no step trained after stopping
    # best/ holds the weights evaluated at step 10, not the last ones
    assert _weight_sum(tmp_path / "out" / "best") == pytest.approx(sums[1], abs=1e-6)
    assert sums[1] != pytest.approx(sums[3], abs=1e-6)


def test_mean_std_is_the_sample_standard_deviation():
    stats = mean_std([0.5, 0.7, 0.9])
    assert stats["mean"] == pytest.approx(0.7) and stats["std"] == pytest.approx(0.2)
    assert mean_std([0.6]) == {"mean": 0.6, "std": 0.0, "values": [0.6]}


def test_seeds_repeat_the_run_and_report_mean_and_std(ckpt, sentiment_csv, tmp_path):
    out = tmp_path / "out"
    summary = run(options(ckpt, sentiment_csv, out, max_steps=6, label_fraction=0.5, learning_rate=1e-3,
                          seeds=[0, 1, 2]))
    assert summary["seeds"] == [0, 1, 2] and summary["split_seed"] == 0 and summary["train_examples"] == 160
    per_seed = [json.loads((out / f"seed-{s}" / "results.json").read_text()) for s in (0, 1, 2)]
    assert [r["options"]["seed"] for r in per_seed] == [0, 1, 2]
    # one split for all seeds; the label subsets and the runs differ
    assert all(r["examples"] == per_seed[0]["examples"] for r in per_seed)
    assert len({r["first_loss"] for r in per_seed}) == 3
    saved = json.loads((out / "results.json").read_text())
    for name in ("accuracy", "macro_f1", "loss"):
        values = [r["test"][name] for r in per_seed]
        assert saved["test"][name]["values"] == pytest.approx(values)
        assert saved["test"][name]["mean"] == pytest.approx(statistics.fmean(values))
        assert saved["test"][name]["std"] == pytest.approx(statistics.stdev(values))
    assert saved["validation"]["accuracy"]["mean"] == pytest.approx(
        statistics.fmean(r["validation"]["accuracy"] for r in per_seed))
    assert summary["test"]["loss"]["std"] > 0


def test_cli_flags_parse_into_the_options():
    args = build_parser().parse_args(["finetune", "--seeds", "0,1,2", "--patience", "3", "--max-steps", "400",
                                      "--min-steps", "300", "--eval-every", "25", "--split-seed", "5"])
    flags = {k: v for k, v in vars(args).items() if k not in ("command", "func", "config")}
    opts = build_options(FinetuneOptions, flags)
    assert opts.seeds == [0, 1, 2] and opts.early_stopping_patience == 3
    assert (opts.max_steps, opts.min_steps, opts.eval_every, opts.split_seed) == (400, 300, 25, 5)
    assert build_parser().parse_args(["finetune", "--seeds", "3", "4"]).seeds == [3, 4]
    assert FinetuneOptions().learning_rate == 1e-4  # inside Turc et al.'s 1e-4..3e-4 for small BERTs


def test_cli_seeds_prints_mean_and_std(ckpt, sentiment_csv, tmp_path, capsys):
    out = tmp_path / "cli"
    assert main(["finetune", "--model", str(ckpt), "--data", str(sentiment_csv), "-o", str(out), "--seeds", "0,1",
                 "--max-steps", "3", "--batch-size", "16", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    saved = json.loads((out / "results.json").read_text())
    line = next(x for x in printed.splitlines() if x.startswith("test accuracy:"))
    stats = saved["test"]["accuracy"]
    assert line == f"test accuracy: {stats['mean']:.4f} +- {stats['std']:.4f} over seeds 0, 1"


def test_bad_budget_options_are_refused():
    with pytest.raises(ValueError, match="max_steps"):
        FinetuneOptions(max_steps=0)
    with pytest.raises(ValueError, match="seeds must be distinct"):
        FinetuneOptions(seeds=[1, 1])
    with pytest.raises(SystemExit):
        build_parser().parse_args(["finetune", "--seeds", "0,x"])


def test_reinit_layers_resets_only_the_top_layers(ckpt, sentiment_csv, tmp_path):
    from lmforge.data.labels import LabelMap
    from lmforge.recipes.finetune import build_model

    labels = LabelMap(["negative", "positive"])
    kept = build_model(options(ckpt, sentiment_csv, tmp_path), labels)
    model = build_model(options(ckpt, sentiment_csv, tmp_path, reinit_layers=1), labels)
    bottom, top = "bert.encoder.layer.0.", "bert.encoder.layer.1."
    ours, theirs = dict(model.named_parameters()), dict(kept.named_parameters())
    assert all(torch.equal(v, theirs[k]) for k, v in ours.items() if not k.startswith(top))
    assert not torch.equal(ours[top + "attention.self.query.weight"], theirs[top + "attention.self.query.weight"])
    assert torch.all(ours[top + "output.LayerNorm.weight"] == 1) and torch.all(ours[top + "output.dense.bias"] == 0)
    assert bottom + "output.dense.bias" in ours
    with pytest.raises(ValueError, match="exceeds the model's 2 layers"):
        build_model(options(ckpt, sentiment_csv, tmp_path, reinit_layers=3), labels)


def test_early_stopping_waits_for_min_steps(ckpt, sentiment_csv, tmp_path, monkeypatch):
    _scripted(monkeypatch, [0.5, 0.7, 0.6, 0.6, 0.6, 0.6])
    results = run(options(ckpt, sentiment_csv, tmp_path / "out", max_steps=50, min_steps=20, eval_every=5,
                          early_stopping_patience=1))
    # patience alone would stop after step 15; --min-steps keeps it training to step 20
    assert [h["step"] for h in results["history"]] == [5, 10, 15, 20]
    assert results["stopped_early"] and results["best_step"] == 10
