"""Encoder-decoder pretraining (`lmforge pretrain --objective denoise | span`): the Unigram tokenizer, the sequence
cache, BART's text infilling and T5's span corruption (their statistics), the held-out evaluation, the exported
folders in transformers, resume, and the option checks."""

from __future__ import annotations

import json
import math
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from lmforge import AutoModelForSeq2SeqLM, AutoTokenizer
from lmforge.cli import main
from lmforge.data.pretraining.denoising import (
    DenoisingCollator,
    apply_infilling,
    infilling_spans,
    permute_sentences,
)
from lmforge.data.pretraining.sequences import build_or_load_sequences
from lmforge.data.pretraining.span_corruption import (
    SpanCorruptionCollator,
    corrupt,
    noise_spans,
    sentinel_ids,
    uncorrupt,
)
from lmforge.recipes.pretrain import PretrainOptions, make_seq2seq_evaluator, seq2seq_config
from lmforge.tokenizers import train_tokenizer

EN = ["the", "file", "open", "save", "cannot", "error", "%s", "window", "print", "delete", "folder", "settings"]
ZH = ["文件", "打开", "保存", "无法", "错误", "窗口", "打印", "删除", "设置"]
TINY = ["--hidden-size", "32", "--num-hidden-layers", "2", "--num-attention-heads", "2", "--intermediate-size", "64",
        "--vocab-size", "200", "--max-seq-length", "24", "--batch-size", "4", "--eval-fraction", "0.2",
        "--eval-batches", "2", "--no-progress", "--threads", "1", "--learning-rate", "3e-3"]
ARCHS = {"bart": ("denoise", "BartForConditionalGeneration"), "marian": ("denoise", "MarianMTModel"),
         "t5": ("span", "T5ForConditionalGeneration")}


def documents(n: int, seed: int = 0) -> list[list[str]]:
    """English and Chinese UI-like sentences, mixed within documents."""
    rng = random.Random(seed)
    docs = []
    for _ in range(n):
        sentences = []
        for _ in range(rng.randint(2, 6)):
            if rng.random() < 0.5:
                sentences.append(" ".join(rng.choice(EN) for _ in range(rng.randint(3, 9))).capitalize() + ".")
            else:
                sentences.append("".join(rng.choice(ZH) for _ in range(rng.randint(2, 6))) + "。")
        docs.append(sentences)
    return docs


def write_corpus(path: Path, docs: list[list[str]]) -> Path:
    path.write_text("\n\n".join("\n".join(d) for d in docs) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    texts = [s for d in documents(40, seed=1) for s in d]
    return train_tokenizer(texts, tmp_path_factory.mktemp("tok"), kind="unigram", vocab_size=200, extra_ids=10)


@pytest.fixture
def corpus(tmp_path, monkeypatch):
    monkeypatch.setenv("LMFORGE_CACHE", str(tmp_path / "cache"))
    return write_corpus(tmp_path / "corpus.txt", documents(40))


# ------------------------------------------------------------------------------------------------ tokenizer
def test_unigram_tokenizer_layout_and_sentinels_in_t5_order(tokenizer):
    assert tokenizer.convert_ids_to_tokens([0, 1, 2, 3, 4]) == ["<pad>", "</s>", "<unk>", "<s>", "<mask>"]
    assert (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.mask_token_id) == (0, 1, 4)
    # T5's layout: <extra_id_0> is the last id, the next sentinels count down.
    assert sentinel_ids(tokenizer) == list(range(len(tokenizer) - 1, len(tokenizer) - 11, -1))
    text = "无法打开文件 %s。 Cannot save the file."
    ids = tokenizer(text)["input_ids"]
    assert ids[-1] == tokenizer.eos_token_id and ids.count(tokenizer.eos_token_id) == 1  # `$A </s>`
    assert tokenizer.decode(ids, skip_special_tokens=True) == text  # cased, Chinese without spaces, exact


def test_unigram_tokenizer_loads_in_transformers_with_equal_ids(tokenizer, tmp_path):
    transformers = pytest.importorskip("transformers")
    tokenizer.save_pretrained(tmp_path)
    theirs = transformers.AutoTokenizer.from_pretrained(tmp_path)
    text = "打印设置 <extra_id_0> delete the folder."
    assert theirs(text)["input_ids"] == tokenizer(text)["input_ids"]
    assert theirs.convert_tokens_to_ids("<extra_id_0>") == len(tokenizer) - 1


def test_unigram_training_gives_the_same_ids_in_another_process(tmp_path):
    # tokenizers' UnigramTrainer orders tied pieces by hash-map order, which changes from process to process.
    corpus = write_corpus(tmp_path / "c.txt", documents(60, seed=2))
    options = ["--kind", "unigram", "--vocab-size", "150", "--extra-ids", "3"]
    assert main(["tokenizer", "train", str(corpus), "-o", str(tmp_path / "here"), *options]) == 0
    subprocess.run([sys.executable, "-m", "lmforge.cli", "tokenizer", "train", str(corpus), "-o",
                    str(tmp_path / "there"), *options], check=True, capture_output=True)
    assert (tmp_path / "here" / "tokenizer.json").read_text() == (tmp_path / "there" / "tokenizer.json").read_text()


# ------------------------------------------------------------------------------------------------ sequences
def test_sequences_are_whole_sentences_then_eos_with_their_starts(tokenizer, tmp_path):
    docs = documents(12)
    path = write_corpus(tmp_path / "c.txt", docs)
    data = build_or_load_sequences(path, tokenizer, tmp_path / "cache", max_seq_length=24, short_seq_prob=0.0)
    again = build_or_load_sequences(path, tokenizer, tmp_path / "cache", max_seq_length=24, short_seq_prob=0.0)
    assert not data.cache_hit and again.cache_hit and len(data) > 12
    sentences = {tuple(tokenizer.encode(s, add_special_tokens=False)) for d in docs for s in d}
    for i in range(len(data)):
        item = data[i]
        ids, starts = item["input_ids"], item["sentence_starts"]
        assert len(ids) <= 24 and ids[-1] == tokenizer.eos_token_id and tokenizer.eos_token_id not in ids[:-1]
        bounds = [*np.flatnonzero(starts), len(ids) - 1]
        for a, b in zip(bounds[:-1], bounds[1:]):
            piece = tuple(ids[a:b].tolist())
            assert piece in sentences or len(ids) == 24  # a long sentence may be cut, nothing else


# ------------------------------------------------------------------------------------------------ BART noise
def test_text_infilling_masks_30_percent_of_the_tokens():
    rng = np.random.default_rng(0)
    fractions = []
    for _ in range(3000):
        n = int(rng.integers(20, 200))
        spans = infilling_spans(n, rng, mask_ratio=0.3, poisson_lambda=3.0)
        fractions.append(sum(length for _, length in spans) / n)
        starts = [start for start, _ in spans]
        ends = [start + length for start, length in spans]
        assert all(e < s for e, s in zip(ends[:-1], starts[1:])) and ends[-1] <= n  # in order, >= 1 token apart
    assert np.mean(fractions) == pytest.approx(0.3, abs=0.003)


def test_text_infilling_span_lengths_are_poisson_3():
    # Long sequences: only the last span of each is cut to fit the 30%, so the lengths are plain Poisson draws.
    rng = np.random.default_rng(0)
    lengths = np.concatenate([[length for _, length in infilling_spans(20_000, rng)][:-1] for _ in range(5)])
    assert len(lengths) > 9000
    assert lengths.mean() == pytest.approx(3.0, abs=0.06) and lengths.var() == pytest.approx(3.0, abs=0.2)
    assert (lengths == 0).mean() == pytest.approx(math.exp(-3.0), abs=0.006)  # P(0): a mask inserted
    assert (lengths == 3).mean() == pytest.approx(27 / 6 * math.exp(-3.0), abs=0.012)


def test_each_span_becomes_one_mask_and_empty_spans_insert_one():
    ids = np.arange(10, 20)
    out = apply_infilling(ids, [(0, 0), (2, 3), (8, 2)], mask_id=4)
    assert out.tolist() == [4, 10, 11, 4, 15, 16, 17, 4]


def test_sentence_permutation_moves_whole_sentences():
    ids = np.arange(10, 22)
    starts = np.isin(ids, [10, 13, 17, 18])  # sentences 10-12, 13-16, 17, 18-21
    seen = set()
    for seed in range(20):
        out = permute_sentences(ids, starts, np.random.default_rng(seed))
        pieces = {tuple(p) for p in np.split(out, np.flatnonzero(np.isin(out, [10, 13, 17, 18]))[1:])}
        assert pieces == {(10, 11, 12), (13, 14, 15, 16), (17,), (18, 19, 20, 21)}
        seen.add(tuple(out))
    assert len(seen) > 5


def test_denoising_batch_reconstructs_the_original_from_noised_sources():
    collator = DenoisingCollator(mask_id=4, eos_id=1, pad_id=0, permute_sentences=True)
    items = [{"input_ids": np.arange(10, 10 + n).tolist() + [1], "sentence_starts": np.arange(n + 1) % 5 == 0}
             for n in (30, 17)]
    batch = collator([{k: np.asarray(v) for k, v in item.items()} for item in items], torch.Generator().manual_seed(0))
    assert batch["labels"][0].tolist() == items[0]["input_ids"]  # labels = the original, order included
    assert batch["labels"][1].tolist() == items[1]["input_ids"] + [-100] * 13
    source = batch["input_ids"][0][batch["attention_mask"][0] == 1]
    n_masks = int((source == 4).sum())
    assert source[-1] == 1 and n_masks >= 1
    assert len(source) - 1 - n_masks == 30 - round(30 * 0.3)  # the kept tokens: 70%
    again = collator([{k: np.asarray(v) for k, v in item.items()} for item in items], torch.Generator().manual_seed(0))
    assert all(torch.equal(batch[k], again[k]) for k in batch)  # the noise comes from the generator alone


# ------------------------------------------------------------------------------------------------ T5 noise
def test_span_corruption_noises_15_percent_in_spans_of_mean_3():
    rng = np.random.default_rng(0)
    fractions, lengths = [], []
    for _ in range(2000):
        n = int(rng.integers(60, 200))
        spans = noise_spans(n, rng, noise_density=0.15, mean_span_length=3.0)
        fractions.append(sum(length for _, length in spans) / n)
        lengths += [length for _, length in spans]
        assert all(length >= 1 for length in lengths[-len(spans):]) and spans[0][0] >= 1  # starts with kept tokens
    assert np.mean(fractions) == pytest.approx(0.15, abs=0.005)
    assert np.mean(lengths) == pytest.approx(3.0, abs=0.1)


def test_sentinels_are_ordered_and_matched_and_inputs_plus_targets_give_the_original():
    sentinels = [99, 98, 97, 96, 95, 94]
    rng = np.random.default_rng(1)
    for n in (5, 20, 37):
        ids = np.arange(10, 10 + n)
        spans = noise_spans(n, rng)
        source, target = corrupt(ids, spans, sentinels, eos_id=1)
        in_source = [t for t in source.tolist() if t in sentinels]
        in_target = [t for t in target.tolist() if t in sentinels]
        assert in_source == in_target == sentinels[: len(spans)]  # <extra_id_0>, <extra_id_1>, ... in both
        assert target[0] == sentinels[0] and source[-1] == target[-1] == 1
        assert uncorrupt(source, target, sentinels, eos_id=1).tolist() == ids.tolist()


def test_too_many_spans_for_the_sentinels_is_a_clear_error():
    collator = SpanCorruptionCollator([99], eos_id=1, pad_id=0)
    with pytest.raises(ValueError, match="sentinel"):
        collator([{"input_ids": np.arange(10, 50)}], torch.Generator().manual_seed(0))


# ------------------------------------------------------------------------------------------------ evaluation
def test_held_out_loss_is_the_mean_token_loss_and_accuracy_counts_exact_tokens(tokenizer):
    opts = PretrainOptions(objective="denoise", preset="bart-tiny", dropout=0.0)
    torch.manual_seed(0)
    model = AutoModelForSeq2SeqLM.from_config(seq2seq_config(opts, tokenizer)).eval()
    collator = DenoisingCollator(tokenizer.mask_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id)
    items = [{"input_ids": np.asarray(tokenizer.encode(s)), "sentence_starts": np.zeros(1, bool)}
             for s in ("Cannot save the file.", "无法打开文件。", "Print the window settings error.")]
    for item in items:
        item["sentence_starts"] = np.eye(1, len(item["input_ids"]), dtype=bool)[0]
    batch = collator(items, torch.Generator().manual_seed(0))
    with torch.no_grad():
        metrics = make_seq2seq_evaluator([batch])(model)
        out = model(**batch)
    real = batch["labels"] != -100
    assert metrics["loss"] == pytest.approx(out.loss.item(), rel=1e-5)
    expected = (out.logits.argmax(-1)[real] == batch["labels"][real]).float().mean().item()
    assert metrics["token_accuracy"] == pytest.approx(expected) and metrics["perplexity"] == pytest.approx(
        math.exp(metrics["loss"]))


# ------------------------------------------------------------------------------------------------ end to end
@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_pretraining_exports_a_folder_transformers_loads_with_equal_logits(arch, corpus, tmp_path):
    objective, hf_class = ARCHS[arch]
    out = tmp_path / "run"
    assert main(["pretrain", "--corpus", str(corpus), "-o", str(out), "--objective", objective, "--arch", arch,
                 "--preset", f"{arch}-tiny", "--max-steps", "4", "--eval-every", "2", *TINY]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 4 and summary["train_instances"] > 4
    assert 0 <= summary["final_eval"]["eval_token_accuracy"] <= 1
    assert summary["final_eval"]["eval_perplexity"] == pytest.approx(math.exp(summary["final_eval"]["eval_loss"]))
    config = json.loads((out / "final" / "config.json").read_text())
    assert config["model_type"] == arch and config["vocab_size"] == len(AutoTokenizer.from_pretrained(out / "final"))
    transformers = pytest.importorskip("transformers")
    ours = AutoModelForSeq2SeqLM.from_pretrained(out / "final").eval()
    theirs = transformers.AutoModelForSeq2SeqLM.from_pretrained(out / "final").eval()
    assert type(theirs).__name__ == hf_class
    texts = ["无法打开文件 %s。", "Cannot save the window settings."]
    batch = AutoTokenizer.from_pretrained(out / "final")(texts, padding=True, return_tensors="pt")
    theirs_batch = transformers.AutoTokenizer.from_pretrained(out / "final")(texts, padding=True, return_tensors="pt")
    assert batch["input_ids"].tolist() == theirs_batch["input_ids"].tolist()
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    with torch.no_grad():
        a, b = ours(**batch, labels=labels), theirs(**batch, labels=labels)
    torch.testing.assert_close(a.logits, b.logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(a.loss, b.loss, atol=1e-5, rtol=0)


def test_span_pretraining_resume_is_bit_identical(corpus, tmp_path):
    common = ["pretrain", "--corpus", str(corpus), "--objective", "span", "--preset", "t5-tiny", "--save-every", "3",
              "--log-every", "1", "--eval-every", "3", "--max-steps", "6", *TINY]
    assert main([*common, "-o", str(tmp_path / "full")]) == 0
    # Stopped by the time budget after its first step (checkpointed there), then resumed to step 6.
    assert main([*common, "-o", str(tmp_path / "split"), "--max-minutes", "1e-9"]) == 0
    assert main([*common, "-o", str(tmp_path / "split"), "--resume"]) == 0

    def log(run, kind):
        records = [json.loads(line) for line in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]
        return [{k: v for k, v in r.items() if k not in ("elapsed", "tokens_per_s")} for r in records if kind in r]

    assert [r["step"] for r in log("split", "loss")] == [1, 2, 3, 4, 5, 6]
    assert log("split", "loss") == log("full", "loss")
    assert log("split", "eval_loss")[-1] == log("full", "eval_loss")[-1]
    full = (tmp_path / "full" / "final" / "model.safetensors").read_bytes()
    assert (tmp_path / "split" / "final" / "model.safetensors").read_bytes() == full


# ------------------------------------------------------------------------------------------------ options
def test_seq2seq_options_resolve_family_preset_tokenizer_and_noise():
    bart = PretrainOptions(objective="denoise")
    assert (bart.model_type, bart.preset, bart.tokenizer_kind, bart.lowercase, bart.noise_density) == (
        "bart", "bart-mini", "unigram", False, 0.3)
    assert PretrainOptions(objective="denoise", preset="marian-tiny").model_type == "marian"
    t5 = PretrainOptions(objective="span")
    assert (t5.model_type, t5.preset, t5.noise_density) == ("t5", "t5-mini", 0.15)


@pytest.mark.parametrize("kwargs, message", [
    (dict(objective="span", model_type="gpt2"), "span trains \\['t5'\\].*encoder-decoders only"),
    (dict(objective="denoise", model_type="t5"), "denoise trains \\['bart', 'marian'\\]"),
    (dict(objective="denoise", model_type="bart", preset="t5-mini"), "not a bart preset"),
    (dict(objective="span", tokenizer_kind="wordpiece"), "--tokenizer-kind unigram"),
    (dict(objective="span", permute_sentences=True), "--permute-sentences .* --objective denoise"),
    (dict(objective="mlm", noise_density=0.2), "--noise-density"),
    (dict(objective="denoise", noise_density=1.5), "--noise-density must be in"),
])
def test_bad_seq2seq_option_combinations_are_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        PretrainOptions(**kwargs)


def test_cli_rejects_span_with_a_decoder_only_family(corpus, tmp_path, capsys):
    assert main(["pretrain", "--corpus", str(corpus), "-o", str(tmp_path / "r"), "--objective", "span", "--arch",
                 "gpt2"]) != 0
    assert "--objective span trains ['t5'] (--arch), not 'gpt2'" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()
