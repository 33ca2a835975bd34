"""finetune --task seq2seq: a tiny Marian trained from scratch (config.json + a tokenizer trained on the pairs) and
from a pretrained folder; label-smoothed teacher forcing; validation by generation; evaluate on the test split."""

from __future__ import annotations

import json

import pytest
import torch

from lmforge import AutoModelForSeq2SeqLM, AutoTokenizer
from lmforge.models.marian import MarianConfig
from lmforge.recipes import evaluate as evaluate_recipe
from lmforge.recipes.finetune import FinetuneOptions, run
from lmforge.training.seq2seq_lm import Seq2SeqLMTraining

pytest.importorskip("sacrebleu")

WORDS = ["file", "folder", "disk", "user", "group", "link", "page", "window"]
ZH = ["文件", "文件夹", "磁盘", "用户", "组", "链接", "页面", "窗口"]


def write_pairs(path, n: int = 96):
    """'open the file %s' -> '打开 文件 %s': a tiny, learnable mapping with a placeholder in every third pair."""
    lines = ["source\ttarget"]
    for i in range(n):
        w, z = WORDS[i % len(WORDS)], ZH[i % len(ZH)]
        verb, zverb = [("open", "打开"), ("close", "关闭"), ("delete", "删除")][(i // len(WORDS)) % 3]
        tail = " %s" if i % 3 == 0 else f" {i}"
        lines.append(f"{verb} the {w}{tail}\t{zverb}{z}{tail}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def tiny_marian_config(path):
    config = MarianConfig(vocab_size=10, d_model=32, encoder_layers=1, decoder_layers=1, encoder_ffn_dim=64,
                          decoder_ffn_dim=64, encoder_attention_heads=2, decoder_attention_heads=2,
                          max_position_embeddings=64, pad_token_id=1, eos_token_id=0, decoder_start_token_id=1,
                          forced_eos_token_id=0, dropout=0.0)
    config.to_json_file(path)
    return path


def options(tmp_path, model, data, **extra):
    fields = dict(model=str(model), data=str(data), output_dir=str(tmp_path / "run"), task="seq2seq",
                  vocab_size=300, max_length=24, batch_size=16, max_steps=40, eval_every=20, learning_rate=3e-3,
                  warmup_ratio=0.0, eval_samples=0, max_new_tokens=12, progress=False, seed=0)
    return FinetuneOptions(**{**fields, **extra})


@pytest.fixture(scope="module")
def scratch_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("s2s")
    data = write_pairs(tmp / "pairs.tsv")
    torch.set_num_threads(1)
    results = run(options(tmp, tiny_marian_config(tmp / "config.json"), data))
    return tmp, data, results


def test_from_scratch_trains_and_reports(scratch_run):
    tmp, _, results = scratch_run
    assert results["task"] == "seq2seq" and results["steps"] == 40
    assert results["last_loss"] < results["first_loss"] - 1.0
    for split in ("validation", "test"):
        assert set(results[split]) >= {"chrf", "bleu", "placeholders", "loss"}
        assert 0.0 <= results[split]["chrf"] <= 100.0
    assert [r["step"] for r in results["history"]] == [20, 40]
    lines = (tmp / "run" / "test_predictions.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(lines) == results["examples"]["test"]
    assert set(json.loads(lines[0])) == {"source", "reference", "output", "origin"}
    info = json.loads((tmp / "run" / "best" / "finetune_info.json").read_text(encoding="utf-8"))
    assert info["task"] == "seq2seq"


def test_from_scratch_config_takes_the_tokenizers_ids(scratch_run):
    tmp, _, _ = scratch_run
    model = AutoModelForSeq2SeqLM.from_pretrained(tmp / "run" / "best")
    tokenizer = AutoTokenizer.from_pretrained(tmp / "run" / "tokenizer")
    assert model.config.vocab_size == len(tokenizer) == 300
    assert (model.config.eos_token_id, model.config.pad_token_id, model.config.decoder_start_token_id) == (0, 1, 1)


def test_evaluate_scores_the_seq2seq_folder(scratch_run, tmp_path):
    tmp, data, results = scratch_run
    report = evaluate_recipe.run(evaluate_recipe.EvaluateOptions(model=str(tmp / "run" / "best"), data=str(data),
                                                                 split="test", max_new_tokens=12))
    assert report["task"] == "seq2seq" and report["examples"] == results["examples"]["test"]
    assert report["metrics"]["chrf"] == pytest.approx(results["test"]["chrf"])
    assert report["metrics"]["placeholders"] == pytest.approx(results["test"]["placeholders"])


def test_finetune_from_the_pretrained_folder(scratch_run, tmp_path):
    tmp, data, _ = scratch_run
    results = run(options(tmp_path, tmp / "run" / "best", data, max_steps=10, eval_every=10))
    assert results["steps"] == 10 and results["test"]["loss"] is not None


def test_label_smoothing_zero_is_the_models_loss():
    config = MarianConfig(vocab_size=40, d_model=16, encoder_layers=1, decoder_layers=1, encoder_ffn_dim=32,
                          decoder_ffn_dim=32, encoder_attention_heads=2, decoder_attention_heads=2,
                          max_position_embeddings=32, pad_token_id=1, eos_token_id=0, decoder_start_token_id=1)
    torch.manual_seed(0)
    model = AutoModelForSeq2SeqLM.from_config(config).eval()
    ids = torch.randint(2, 40, (3, 7))
    mask = torch.ones_like(ids)
    labels = torch.randint(2, 40, (3, 5))
    labels[1, 3:] = -100
    with torch.no_grad():
        own = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        plain = Seq2SeqLMTraining(model, 0.0)(ids, labels, mask).loss
        smoothed = Seq2SeqLMTraining(model, 0.1)(ids, labels, mask).loss
    torch.testing.assert_close(plain, own)
    assert smoothed > plain  # smoothing adds the cross-entropy against the uniform distribution


def test_bad_column_names_the_file_and_line(tmp_path):
    data = tmp_path / "pairs.jsonl"
    data.write_text('{"source": "open", "target": "打开"}\n{"source": "close"}\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"pairs.jsonl:2: missing column 'target'"):
        run(options(tmp_path, tiny_marian_config(tmp_path / "config.json"), data))


def test_cli_finetune_seq2seq(tmp_path, capsys):
    from lmforge.cli import main

    data = write_pairs(tmp_path / "pairs.tsv", n=48)
    config = tiny_marian_config(tmp_path / "config.json")
    code = main(["finetune", "--task", "seq2seq", "--model", str(config), "--data", str(data), "-o",
                 str(tmp_path / "run"), "--vocab-size", "300", "--max-steps", "4", "--eval-samples", "3",
                 "--max-new-tokens", "4", "--label-smoothing", "0.2", "--num-beams", "2", "--no-progress"])
    assert code == 0
    out = capsys.readouterr().out  # "step N: eval_..." lines, then the summary
    shown = json.loads(out[out.index("{"):])
    assert shown["steps"] == 4 and set(shown["test"]) >= {"chrf", "bleu", "placeholders"}
    options = json.loads((tmp_path / "run" / "options.json").read_text(encoding="utf-8"))
    assert (options["label_smoothing"], options["num_beams"], options["eval_samples"]) == (0.2, 2, 3)


def test_resume_after_a_crash_matches_an_uninterrupted_run(tmp_path, monkeypatch):
    from lmforge.recipes import seq2seq

    data = write_pairs(tmp_path / "pairs.tsv", n=48)
    config = tiny_marian_config(tmp_path / "config.json")
    settings = dict(max_steps=12, eval_every=4, eval_samples=3, max_new_tokens=4)
    reference = run(options(tmp_path / "ref", config, data, **settings))
    real_score = seq2seq.score_pairs
    calls = {"n": 0}

    def crash_on_second_evaluation(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt("simulated crash")
        return real_score(*args, **kwargs)

    monkeypatch.setattr(seq2seq, "score_pairs", crash_on_second_evaluation)
    with pytest.raises(KeyboardInterrupt):
        run(options(tmp_path / "crash", config, data, **settings))
    monkeypatch.setattr(seq2seq, "score_pairs", real_score)
    resumed = run(options(tmp_path / "crash", config, data, resume=True, **settings))
    assert resumed["history"] == reference["history"]
    assert resumed["test"] == reference["test"]
