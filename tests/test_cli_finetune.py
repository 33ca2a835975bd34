"""`lmforge finetune / evaluate / predict` through `lmforge.cli.main` on a tiny checkpoint folder."""

from __future__ import annotations

import csv
import json
import logging

import pytest
from test_finetune import make_checkpoint, sentiment_rows, write_csv, write_jsonl

from lmforge.cli import main


@pytest.fixture(autouse=True)
def _quiet_loading():
    logging.getLogger("lmforge").setLevel(logging.ERROR)
    yield


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    ckpt = make_checkpoint(root / "ckpt")
    data = write_csv(root / "reviews.csv", sentiment_rows())
    return root, ckpt, data


@pytest.mark.parametrize("command", ["finetune", "evaluate", "predict"])
def test_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: lmforge {command}")
    assert "--max-length" in out


def test_finetune_evaluate_predict(setup, capsys):
    root, ckpt, data = setup
    config = root / "ft.json"
    config.write_text(json.dumps({"model": str(ckpt), "data": str(data), "batch-size": 16, "epochs": 2,
                                  "learning_rate": 3e-3, "warmup_ratio": 0.0}))
    out = root / "run"
    # flags override the config file (epochs 2 -> 4)
    assert main(["finetune", "--config", str(config), "-o", str(out), "--epochs", "4", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert json.loads(printed[printed.index("{\n"):])["best_dir"] == str(out / "best")
    results = json.loads((out / "results.json").read_text())
    assert results["options"]["epochs"] == 4 and results["options"]["batch_size"] == 16
    assert results["test"]["accuracy"] > 0.9
    assert (out / "best" / "model.safetensors").is_file()

    assert main(["evaluate", str(out / "best"), "--data", str(data), "--split", "test"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["split"] == "test" and report["examples"] == 40
    assert report["metrics"]["accuracy"] == pytest.approx(results["test"]["accuracy"])

    inputs = write_jsonl(root / "in.jsonl", [{"text": "a superb film"}, {"text": "the plot was boring and bad"},
                                             {"text": "lovely"}])
    assert main(["predict", str(out / "best"), str(inputs), "-o", str(root / "pred.csv")]) == 0
    assert "3 predictions" in capsys.readouterr().out
    with open(root / "pred.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert [r["text"] for r in rows] == ["a superb film", "the plot was boring and bad", "lovely"]
    assert [r["label"] for r in rows] == ["positive", "negative", "positive"]


def test_finetune_prints_a_summary(setup, capsys):
    root, ckpt, data = setup
    code = main(["finetune", "--model", str(ckpt), "--data", str(data), "-o", str(root / "short"), "--epochs", "1",
                 "--batch-size", "32", "--no-progress", "--label-fraction", "0.5"])
    assert code == 0
    text = capsys.readouterr().out
    summary = json.loads(text[text.index("{\n"):])
    assert summary["best_dir"] == str(root / "short" / "best") and summary["steps"] == 5
    assert set(summary["validation"]) == {"accuracy", "macro_f1", "mcc", "loss"}


def test_errors_are_one_line(setup, tmp_path, capsys):
    root, ckpt, data = setup
    run_dir = root / "errors"
    assert main(["finetune", "--model", str(ckpt), "--data", str(data), "-o", str(run_dir), "--epochs", "1",
                 "--no-progress"]) == 0
    capsys.readouterr()

    rows = sentiment_rows(4, seed=9)
    rows[1]["label"] = "meh"
    bad = write_csv(tmp_path / "bad.csv", rows)
    assert main(["evaluate", str(run_dir / "best"), "--data", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"{bad}:3" in err and "'meh'" in err

    assert main(["predict", str(run_dir / "best"), str(bad), "-o", str(tmp_path / "out.parquet")]) == 2
    assert ".jsonl, .csv or .tsv" in capsys.readouterr().err

    assert main(["finetune", "--data", str(data), "-o", str(tmp_path / "x"), "--no-progress"]) == 2
    assert "no model given" in capsys.readouterr().err

    # a second run into the same folder must say how to proceed
    assert main(["finetune", "--model", str(ckpt), "--data", str(data), "-o", str(run_dir), "--no-progress"]) == 2
    assert "--resume" in capsys.readouterr().err

    assert main(["finetune", "--model", str(ckpt), "--data", str(data), "--task", "regression",
                 "--metric-for-best", "accuracy", "-o", str(tmp_path / "y")]) == 2
    assert "not reported for regression" in capsys.readouterr().err
