"""Fine-tuning recipe on a tiny BERT and synthetic, separable data: every task type, best-model selection,
early stopping, exact resume, evaluate / predict outputs and errors that name file and line."""

from __future__ import annotations

import csv
import json
import logging
import random
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from lmforge.auto import AutoConfig, AutoModelForSequenceClassification
from lmforge.data.batches import TaskBatches
from lmforge.data.collators import encode, pad_collate
from lmforge.data.labelled import DataError, Example
from lmforge.data.labels import LabelMap
from lmforge.data.splits import subsample
from lmforge.eval import scoring
from lmforge.models.bert import BertConfig, BertForPreTraining
from lmforge.recipes import evaluate as evaluate_recipe
from lmforge.recipes import finetune
from lmforge.recipes import predict as predict_recipe
from lmforge.recipes.finetune import FinetuneOptions, run
from lmforge.recipes.finetuned import BestTracker, model_task
from lmforge.tokenizers import AutoTokenizer, train_tokenizer


def evaluate(*args, **kwargs):
    return evaluate_recipe.run(evaluate_recipe.EvaluateOptions(*args, **kwargs))


def predict(*args, **kwargs):
    return predict_recipe.run(predict_recipe.PredictOptions(*args, **kwargs))

POS = ["good", "great", "superb", "lovely"]
NEG = ["bad", "awful", "boring", "poor"]
FILLER = ["the", "movie", "plot", "was", "quite", "and", "actors", "film", "story", "really", "music", "ending",
          "scene", "very"]


# ------------------------------------------------------------------------------------ shared helpers
def sentence(rng: random.Random, words: list[str], min_len: int = 3, max_len: int = 9) -> list[str]:
    out = [rng.choice(FILLER) for _ in range(rng.randint(min_len, max_len))]
    out.insert(rng.randint(0, len(out)), rng.choice(words))
    return out


def make_checkpoint(folder: Path) -> Path:
    """A tiny 'pretrained' BERT folder (hidden 32, 2 layers) with a WordPiece tokenizer trained here."""
    rng = random.Random(0)
    corpus = [" ".join(sentence(rng, POS + NEG)) for _ in range(300)]
    tok = train_tokenizer(corpus, folder, vocab_size=100, min_frequency=1)
    config = BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    BertForPreTraining(config).save_pretrained(folder)
    return folder


def sentiment_rows(n: int = 400, seed: int = 1) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = "positive" if i % 2 else "negative"
        rows.append({"text": " ".join(sentence(rng, POS if label == "positive" else NEG)), "label": label})
    return rows


def write_csv(path: Path, rows: list[dict]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def options(model: Path, data: Path, out: Path, **changes) -> FinetuneOptions:
    settings = {"model": str(model), "data": str(data), "output_dir": str(out), "batch_size": 16, "epochs": 4,
                "learning_rate": 3e-3, "warmup_ratio": 0.0, "progress": False, "device": "cpu"}
    settings.update(changes)
    return FinetuneOptions(**settings)


@pytest.fixture(autouse=True)
def _quiet_loading():
    logging.getLogger("lmforge").setLevel(logging.ERROR)
    yield


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("ckpt"))


@pytest.fixture(scope="module")
def sentiment_csv(tmp_path_factory) -> Path:
    return write_csv(tmp_path_factory.mktemp("data") / "reviews.csv", sentiment_rows())


@pytest.fixture(scope="module")
def trained(ckpt, sentiment_csv, tmp_path_factory):
    """One single-label fine-tuning run shared by the tests that only read its outputs."""
    out = tmp_path_factory.mktemp("ft")
    return run(options(ckpt, sentiment_csv, out)), out


# ------------------------------------------------------------------------------------- single label
def test_single_label_learns_and_writes_outputs(trained):
    results, out = trained
    assert results["test"]["accuracy"] > 0.9
    assert results["examples"] == {"train": 320, "train_total": 320, "validation": 40, "test": 40}
    assert results["steps"] == results["max_steps"] == 4 * 20 and not results["stopped_early"]
    saved = json.loads((out / "results.json").read_text())
    assert saved["test"] == pytest.approx(results["test"])
    assert saved["label_map"] == ["negative", "positive"] and saved["options"]["epochs"] == 4
    assert set(saved["validation"]) == {"accuracy", "macro_f1", "mcc", "loss"}
    best = out / "best"
    for name in ("config.json", "model.safetensors", "tokenizer.json", "finetune_info.json"):
        assert (best / name).is_file(), name
    assert not list(out.glob(".best-*"))  # temp folders of the atomic writes are gone
    assert (out / "metrics.jsonl").is_file()


def test_best_matches_history_and_reloads_to_the_same_metrics(trained, sentiment_csv):
    results, out = trained
    history = results["history"]
    assert [h["step"] for h in history] == [20, 40, 60, 80]
    top = max(h["accuracy"] for h in history)
    expected = next(h for h in history if h["accuracy"] == top)  # the first evaluation reaching the top
    assert results["best_step"] == expected["step"]
    info = json.loads((out / "best" / "finetune_info.json").read_text())
    assert info["step"] == expected["step"] and info["max_length"] == 64  # capped by the positions
    # The saved weights are that evaluation's: re-scoring the validation split reproduces its numbers
    # (a lone file is split 80/10/10 with the seed, by finetune and evaluate alike).
    report = evaluate(out / "best", str(sentiment_csv), split="validation", device="cpu")
    assert report["examples"] == 40
    assert report["metrics"]["accuracy"] == expected["accuracy"]
    assert report["metrics"]["loss"] == pytest.approx(expected["loss"], abs=1e-5)
    test_report = evaluate(out / "best", str(sentiment_csv), split="test", device="cpu")
    assert test_report["metrics"] == pytest.approx(results["test"], abs=1e-6)


def test_label_map_round_trips_through_the_saved_config(trained):
    _, out = trained
    config = AutoConfig.from_pretrained(out / "best")
    assert config.id2label == {0: "negative", 1: "positive"}
    assert config.problem_type == "single_label_classification"
    raw = json.loads((out / "best" / "config.json").read_text())
    assert raw["id2label"] == {"0": "negative", "1": "positive"} and raw["label2id"] == {"negative": 0, "positive": 1}
    assert LabelMap.from_config(config.id2label, config.label2id) == LabelMap(["negative", "positive"])
    model = AutoModelForSequenceClassification.from_pretrained(out / "best")
    assert model.config.architectures == ["BertForSequenceClassification"]


def _predict_inputs(tmp_path: Path) -> list[dict]:
    rng = random.Random(7)
    rows = []
    for i in range(23):  # lengths vary a lot, so length-sorted batches reorder them
        words = POS if i % 3 else NEG
        rows.append({"id": i, "text": " ".join(sentence(rng, words, 1, 25))})
    return rows


def test_predict_jsonl_and_csv_keep_order_and_probabilities(trained, tmp_path):
    from lmforge.pipelines import pipeline

    _, out = trained
    rows = _predict_inputs(tmp_path)
    src = write_jsonl(tmp_path / "input.jsonl", rows)
    assert predict(out / "best", src, tmp_path / "pred.jsonl", batch_size=4) == len(rows)
    preds = [json.loads(line) for line in (tmp_path / "pred.jsonl").read_text().splitlines()]
    assert [p["text"] for p in preds] == [r["text"] for r in rows]
    for p in preds:
        assert set(p) == {"text", "label", "probabilities"}
        assert set(p["probabilities"]) == {"negative", "positive"}
        assert sum(p["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
        assert p["label"] == max(p["probabilities"], key=p["probabilities"].get)
    # The trained model gets the sentiment right, and agrees with the text-classification pipeline.
    truth = ["positive" if i % 3 else "negative" for i in range(len(rows))]
    assert sum(p["label"] == t for p, t in zip(preds, truth)) >= 0.9 * len(rows)
    clf = pipeline("text-classification", model=out / "best")
    assert [r["label"] for r in clf([r["text"] for r in rows])] == [p["label"] for p in preds]

    src_csv = write_csv(tmp_path / "input.csv", rows)
    predict(out / "best", src_csv, tmp_path / "pred.csv", batch_size=4)
    with open(tmp_path / "pred.csv", newline="", encoding="utf-8") as f:
        table = list(csv.DictReader(f))
    assert list(table[0]) == ["text", "label", "prob_negative", "prob_positive"]
    assert [r["text"] for r in table] == [r["text"] for r in rows]
    assert [r["label"] for r in table] == [p["label"] for p in preds]
    for r in table:
        assert float(r["prob_negative"]) + float(r["prob_positive"]) == pytest.approx(1.0, abs=1e-5)


def test_predict_rejects_unknown_output_format(trained, tmp_path):
    _, out = trained
    src = write_jsonl(tmp_path / "in.jsonl", [{"text": "good movie"}])
    with pytest.raises(ValueError, match=r"\.jsonl, \.csv or \.tsv"):
        predict(out / "best", src, tmp_path / "pred.xlsx")


def test_evaluate_unseen_label_names_file_and_line(trained, tmp_path):
    _, out = trained
    rows = sentiment_rows(6, seed=3)
    rows[2]["label"] = "neutral"  # header is line 1, so this row is line 4
    path = write_csv(tmp_path / "eval.csv", rows)
    with pytest.raises(DataError, match=re.escape(f"{path}:4") + r".*'neutral' was not seen in the training"):
        evaluate(out / "best", str(path))
    report = evaluate(out / "best", str(write_csv(tmp_path / "ok.csv", sentiment_rows(6, seed=3))))
    assert report["split"] == "all" and report["examples"] == 6


# --------------------------------------------------------------------------- other inputs and tasks
def test_pair_input(ckpt, tmp_path):
    rng = random.Random(5)
    rows = []
    for i in range(400):
        label = "positive" if i % 2 else "negative"
        rows.append({"premise": " ".join(rng.choice(FILLER) for _ in range(rng.randint(2, 6))),
                     "hypothesis": " ".join(sentence(rng, POS if label == "positive" else NEG)),
                     "label": label})
    data = write_jsonl(tmp_path / "pairs.jsonl", rows)
    results = run(options(ckpt, data, tmp_path / "out", text_column="premise", text_pair_column="hypothesis"))
    assert results["test"]["accuracy"] > 0.9
    # predict reads the pair column it was fine-tuned with by default
    src = write_jsonl(tmp_path / "in.jsonl", [{"premise": "the plot", "hypothesis": "superb film"},
                                               {"premise": "the film", "hypothesis": "awful plot"}])
    predict(tmp_path / "out" / "best", src, tmp_path / "pred.jsonl")
    preds = [json.loads(line) for line in (tmp_path / "pred.jsonl").read_text().splitlines()]
    assert [p["text_pair"] for p in preds] == ["superb film", "awful plot"]
    assert [p["label"] for p in preds] == ["positive", "negative"]


def _first_batch_loss(folder: Path, data_rows: list[Example], label_map):
    model = AutoModelForSequenceClassification.from_pretrained(folder)
    tok = AutoTokenizer.from_pretrained(folder)
    feats = encode(model_task(folder, model.config), data_rows, tok, label_map, 64)
    batch = pad_collate(feats, tok.pad_token_id)
    with torch.no_grad():
        out = model(**batch)
    return out, batch


def test_regression(ckpt, tmp_path):
    rng = random.Random(2)
    rows = []
    for i in range(400):
        positive = i % 2 == 1
        rows.append({"text": " ".join(sentence(rng, POS if positive else NEG)),
                     "score": round((1.0 if positive else -1.0) + rng.uniform(-0.3, 0.3), 3)})
    data = write_csv(tmp_path / "scores.csv", rows)
    results = run(options(ckpt, data, tmp_path / "out", task="regression", label_column="score"))
    assert results["metric_for_best"] == "pearson" and results["label_map"] is None
    assert set(results["test"]) == {"pearson", "spearman", "mse", "loss"}
    assert results["test"]["pearson"] > 0.8
    best = tmp_path / "out" / "best"
    config = AutoConfig.from_pretrained(best)
    assert config.num_labels == 1 and config.problem_type == "regression"
    examples = [Example(text=r["text"], label=float(r["score"])) for r in rows[:4]]
    out, batch = _first_batch_loss(best, examples, None)
    assert batch["labels"].dtype == torch.float32
    assert out.loss.item() == pytest.approx(F.mse_loss(out.logits.squeeze(-1), batch["labels"]).item(), rel=1e-5)
    predict(best, data, tmp_path / "pred.jsonl")
    first = json.loads((tmp_path / "pred.jsonl").read_text().splitlines()[0])
    assert set(first) == {"text", "label"} and isinstance(first["label"], float)


def test_multi_label(ckpt, tmp_path):
    rng = random.Random(4)
    rows = []
    for i in range(400):
        positive = i % 2 == 1
        words = sentence(rng, POS if positive else NEG)
        labels = ["pos" if positive else "neg"] + (["music"] if "music" in words else [])
        rows.append({"text": " ".join(words), "labels": labels})
    data = write_jsonl(tmp_path / "multi.jsonl", rows)
    results = run(options(ckpt, data, tmp_path / "out", task="multi_label", label_column="labels"))
    assert results["label_map"] == ["music", "neg", "pos"]
    assert set(results["test"]) == {"micro_f1", "macro_f1", "subset_accuracy", "loss"}
    assert results["test"]["micro_f1"] > 0.6  # the sentiment labels at least
    best = tmp_path / "out" / "best"
    config = AutoConfig.from_pretrained(best)
    assert config.problem_type == "multi_label_classification" and config.num_labels == 3
    label_map = LabelMap(["music", "neg", "pos"])
    examples = [Example(text=r["text"], label=r["labels"]) for r in rows[:4]]
    out, batch = _first_batch_loss(best, examples, label_map)
    assert batch["labels"].shape == (4, 3) and batch["labels"].dtype == torch.float32
    bce = F.binary_cross_entropy_with_logits(out.logits, batch["labels"])
    assert out.loss.item() == pytest.approx(bce.item(), rel=1e-5)
    predict(best, data, tmp_path / "pred.jsonl")
    preds = [json.loads(line) for line in (tmp_path / "pred.jsonl").read_text().splitlines()]
    assert len(preds) == 400 and all(isinstance(p["label"], list) for p in preds)
    for p in preds:
        assert p["label"] == [k for k, v in p["probabilities"].items() if v > 0.5]


def write_conll(path: Path, n: int, seed: int) -> Path:
    rng = random.Random(seed)
    lines = ["-DOCSTART- -X- -X- O", ""]
    for _ in range(n):
        positive = rng.random() < 0.5
        words = sentence(rng, POS if positive else NEG)
        for w in words:
            tag = "B-POS" if w in POS else "B-NEG" if w in NEG else "O"
            lines.append(f"{w} NN O {tag}")
        lines.append("")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_token_classification(ckpt, tmp_path):
    data = write_conll(tmp_path / "tags.conll", 300, seed=6)
    results = run(options(ckpt, data, tmp_path / "out", task="token_classification"))
    assert results["metric_for_best"] == "entity_f1"
    assert set(results["test"]) == {"entity_f1", "entity_precision", "entity_recall", "accuracy", "loss"}
    assert results["label_map"] == ["B-NEG", "B-POS", "O"]
    assert results["test"]["entity_f1"] > 0.5
    best = tmp_path / "out" / "best"
    assert AutoConfig.from_pretrained(best).architectures == ["BertForTokenClassification"]

    src = write_jsonl(tmp_path / "in.jsonl", [{"text": "the film was superb"}, {"text": "a boring plot"}])
    predict(best, src, tmp_path / "pred.jsonl")
    preds = [json.loads(line) for line in (tmp_path / "pred.jsonl").read_text().splitlines()]
    assert [p["text"] for p in preds] == ["the film was superb", "a boring plot"]
    for p in preds:
        assert set(p) == {"text", "entities"}
        for e in p["entities"]:
            assert {"entity_group", "score", "word", "start", "end"} <= set(e)
            assert p["text"][e["start"]:e["end"]] == e["word"]

    # An unseen tag: the error names the exact line of that token.
    bad = tmp_path / "bad.conll"
    bad.write_text("the O\nfilm O\n\nvery O\nsuperb B-GREAT\n", encoding="utf-8")
    with pytest.raises(DataError, match=re.escape(f"{bad}:5") + r".*'B-GREAT'"):
        evaluate(best, str(bad))


# ------------------------------------------------------------------------- best / early stop / resume
def _scripted(monkeypatch, values: list[float]) -> list[float]:
    """Validation accuracies follow `values`; returns the weight sums seen by each evaluation."""
    calls = {"n": 0}
    sums: list[float] = []
    real_run_model = scoring.run_model

    def fake_metrics(task, logits, items, features, label_map):
        value = values[min(calls["n"], len(values) - 1)]
        calls["n"] += 1
        return {"accuracy": value, "macro_f1": value, "mcc": 0.0}

    def recording_run_model(model, *args, **kwargs):
        sums.append(sum(float(p.detach().double().sum()) for p in model.parameters()))
        return real_run_model(model, *args, **kwargs)

    monkeypatch.setattr(scoring, "task_metrics", fake_metrics)
    monkeypatch.setattr(scoring, "run_model", recording_run_model)
    return sums


def _weight_sum(folder: Path) -> float:
    model = AutoModelForSequenceClassification.from_pretrained(folder)
    return sum(float(p.detach().double().sum()) for p in model.parameters())


def test_best_checkpoint_is_the_best_validation_epoch(ckpt, sentiment_csv, tmp_path, monkeypatch):
    sums = _scripted(monkeypatch, [0.6, 0.9, 0.7, 0.8])
    results = run(options(ckpt, sentiment_csv, tmp_path / "out", epochs=4))
    assert [h["accuracy"] for h in results["history"]] == [0.6, 0.9, 0.7, 0.8]
    assert results["best_step"] == 40 and results["best_epoch"] == 2.0
    assert results["validation"]["accuracy"] == 0.9
    # best/ holds the weights evaluated at epoch 2, not the last ones
    assert _weight_sum(tmp_path / "out" / "best") == pytest.approx(sums[1], abs=1e-6)
    assert sums[1] != pytest.approx(sums[3], abs=1e-6)


def test_early_stopping_after_patience(ckpt, sentiment_csv, tmp_path, monkeypatch):
    _scripted(monkeypatch, [0.5, 0.7, 0.6, 0.65, 0.99])
    results = run(options(ckpt, sentiment_csv, tmp_path / "out", epochs=8, early_stopping_patience=2))
    assert [h["step"] for h in results["history"]] == [20, 40, 60, 80]
    assert results["stopped_early"] and results["steps"] == 80 and results["max_steps"] == 160
    assert results["best_step"] == 40
    metrics = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    assert max(m["step"] for m in metrics) == 80


def test_early_stopping_on_a_lower_is_better_metric(ckpt, sentiment_csv, tmp_path):
    # learning rate 0: the validation loss never changes, so it never improves after the first evaluation
    results = run(options(ckpt, sentiment_csv, tmp_path / "out", epochs=5, learning_rate=0.0,
                          metric_for_best="eval_loss", early_stopping_patience=1))
    assert results["metric_for_best"] == "loss"
    assert [h["step"] for h in results["history"]] == [20, 40] and results["stopped_early"]
    assert results["best_step"] == 20


def test_eval_every_steps(ckpt, sentiment_csv, tmp_path):
    results = run(options(ckpt, sentiment_csv, tmp_path / "out", epochs=2, eval_every=15))
    assert [h["step"] for h in results["history"]] == [15, 30, 40]  # and always at the end
    assert [h["epoch"] for h in results["history"]] == [0.75, 1.5, 2.0]


def test_resume_after_a_crash_matches_an_uninterrupted_run(ckpt, sentiment_csv, tmp_path, monkeypatch):
    reference = run(options(ckpt, sentiment_csv, tmp_path / "ref", epochs=3))

    real_run_model = scoring.run_model
    calls = {"n": 0}

    def crash_on_second_evaluation(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt("simulated crash")
        return real_run_model(*args, **kwargs)

    monkeypatch.setattr(scoring, "run_model", crash_on_second_evaluation)
    with pytest.raises(KeyboardInterrupt):
        run(options(ckpt, sentiment_csv, tmp_path / "run", epochs=3))
    monkeypatch.setattr(scoring, "run_model", real_run_model)
    with pytest.raises(ValueError, match="--resume"):
        run(options(ckpt, sentiment_csv, tmp_path / "run", epochs=3))
    resumed = run(options(ckpt, sentiment_csv, tmp_path / "run", epochs=3, resume=True))
    assert resumed["history"] == reference["history"]
    assert resumed["test"] == reference["test"]
    assert _weight_sum(tmp_path / "run" / "best") == _weight_sum(tmp_path / "ref" / "best")
    # resuming a finished run trains nothing and reports the same results
    again = run(options(ckpt, sentiment_csv, tmp_path / "run", epochs=3, resume=True))
    assert again["history"] == reference["history"] and again["first_loss"] is None


def test_random_init_uses_the_checkpoint_architecture(ckpt, sentiment_csv, tmp_path):
    pretrained = finetune.build_model(options(ckpt, sentiment_csv, tmp_path), LabelMap(["a", "b"]))
    random_init = finetune.build_model(options(ckpt, sentiment_csv, tmp_path, init="random", seed=1),
                                       LabelMap(["a", "b"]))
    assert random_init.config.hidden_size == 32 and random_init.config.id2label == {0: "a", 1: "b"}
    p = dict(pretrained.named_parameters())
    r = dict(random_init.named_parameters())
    assert p.keys() == r.keys()
    assert not torch.equal(p["bert.encoder.layer.0.attention.self.query.weight"],
                           r["bert.encoder.layer.0.attention.self.query.weight"])
    stored = BertForPreTraining.from_pretrained(ckpt)
    assert torch.equal(p["bert.embeddings.word_embeddings.weight"], stored.bert.embeddings.word_embeddings.weight)


# ---------------------------------------------------------------------------------- small pieces
def test_label_fraction_is_seeded_and_stratified(ckpt, sentiment_csv, tmp_path):
    examples = [Example(text=f"t{i}", label="a" if i < 90 else "b") for i in range(100)]
    part = subsample(examples, 0.1, seed=3, stratify=True)
    assert [e.label for e in part].count("a") == 9 and [e.label for e in part].count("b") == 1
    assert part == subsample(examples, 0.1, seed=3, stratify=True)
    assert part != subsample(examples, 0.1, seed=4, stratify=True)
    assert len(subsample(examples, 0.25, seed=0)) == 25
    results = run(options(ckpt, sentiment_csv, tmp_path / "out", label_fraction=0.1, epochs=1))
    assert results["examples"]["train"] == 32 and results["examples"]["train_total"] == 320
    assert results["train_examples"] == 32
    assert results["label_map"] == ["negative", "positive"]


def test_task_batches_cover_each_epoch_and_resume_exactly():
    rng = random.Random(0)
    features = [{"input_ids": [1] * rng.randint(2, 30), "attention_mask": [1] * 1, "labels": i} for i in range(50)]
    for f in features:
        f["attention_mask"] = [1] * len(f["input_ids"])
    source = TaskBatches(features, batch_size=8, pad_token_id=0, seed=0)
    assert len(source) == 7
    epoch0 = [b["labels"].tolist() for b in source]
    epoch1 = [b["labels"].tolist() for b in source]
    assert sorted(i for b in epoch0 for i in b) == sorted(i for b in epoch1 for i in b) == list(range(50))
    assert epoch0 != epoch1
    # batches hold similar lengths (little padding)
    padded = sum(b["input_ids"].numel() for b in TaskBatches(features, 8, 0, seed=0))
    assert padded < 1.3 * sum(len(f["input_ids"]) for f in features)

    fresh = TaskBatches(features, 8, 0, seed=0)
    it = iter(fresh)
    taken = [next(it)["labels"].tolist() for _ in range(3)]
    state = fresh.state_dict()
    assert state == {"epoch": 0, "position": 3}
    resumed = TaskBatches(features, 8, 0, seed=0)
    resumed.load_state_dict(state)
    assert taken + [b["labels"].tolist() for b in resumed] == epoch0
    assert [b["labels"].tolist() for b in resumed] == epoch1  # the next pass is the next epoch


def test_best_tracker_rules():
    t = BestTracker("accuracy", patience=2)
    assert t.update({"step": 1, "accuracy": float("nan")})  # the first evaluation is always the best so far
    assert t.update({"step": 2, "accuracy": 0.5})
    assert not t.update({"step": 3, "accuracy": 0.5})  # equal is not better
    assert not t.should_stop and not t.update({"step": 4, "accuracy": None})
    assert t.should_stop and t.best["step"] == 2
    low = BestTracker("loss")
    low.update({"step": 1, "loss": 0.7})
    assert low.update({"step": 2, "loss": 0.6}) and not low.update({"step": 3, "loss": 0.65})
    assert not low.should_stop  # patience 0: never stops


def test_option_errors(ckpt, sentiment_csv, tmp_path):
    with pytest.raises(ValueError, match="not reported for single_label"):
        FinetuneOptions(metric_for_best="pearson")
    with pytest.raises(ValueError, match="label_fraction"):
        FinetuneOptions(label_fraction=0.0)
    with pytest.raises(ValueError, match="no model"):
        run(FinetuneOptions(data=str(sentiment_csv)))
    with pytest.raises(DataError, match="neither a known dataset"):
        run(options(ckpt, tmp_path / "missing.csv", tmp_path / "out"))
    bad = write_csv(tmp_path / "bad.csv", [{"text": "good", "label": "x"}, {"text": " ", "label": "y"}])
    with pytest.raises(DataError, match=re.escape(f"{bad}:3") + ".*empty text"):
        run(options(ckpt, bad, tmp_path / "out"))
