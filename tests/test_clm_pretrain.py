"""Causal-LM pretraining (`lmforge pretrain --objective clm`): EOS-joined blocks and their cache, the fused training
loss, held-out perplexity, resume, and the exported folder in transformers."""

from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest
import torch

from lmforge import AutoModelForCausalLM, AutoTokenizer
from lmforge.cli import main
from lmforge.data.collators import causal_lm_collate
from lmforge.data.pretraining.blocks import build_or_load_blocks, cut_blocks
from lmforge.recipes.pretrain import PretrainOptions, clm_config, make_clm_evaluator
from lmforge.tokenizers import train_tokenizer
from lmforge.training.causal_lm import CausalLMTraining

WORDS = ["thou", "art", "the", "king", "queen", "night", "love", "sword", "crown", "death", "sweet", "lord"]
TINY = ["--objective", "clm", "--hidden-size", "32", "--num-hidden-layers", "2", "--num-attention-heads", "2",
        "--intermediate-size", "64", "--vocab-size", "300", "--max-seq-length", "16", "--batch-size", "4",
        "--eval-fraction", "0.2", "--eval-batches", "2", "--no-progress", "--threads", "1", "--dropout", "0.1",
        "--learning-rate", "3e-3"]


def documents(n: int, seed: int = 0) -> list[list[str]]:
    rng = random.Random(seed)
    return [[" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 9))).capitalize() + "."
             for _ in range(rng.randint(2, 6))] for _ in range(n)]


def write_corpus(path, docs: list[list[str]]):
    path.write_text("\n\n".join("\n".join(d) for d in docs) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    texts = ["\n".join(d) for d in documents(40, seed=1)]
    return train_tokenizer(texts, tmp_path_factory.mktemp("tok"), kind="gpt2", vocab_size=300, min_frequency=1)


@pytest.fixture
def corpus(tmp_path, monkeypatch):
    monkeypatch.setenv("LMFORGE_CACHE", str(tmp_path / "cache"))
    return write_corpus(tmp_path / "corpus.txt", documents(30))


def expected_stream(tokenizer, docs: list[list[str]]) -> np.ndarray:
    ids = []
    for doc in docs:
        ids += tokenizer.encode("\n".join(doc), add_special_tokens=False) + [tokenizer.eos_token_id]
    return np.asarray(ids, dtype=np.int32)


# ------------------------------------------------------------------------------------------------ tokenizer
def test_gpt2_style_tokenizer_has_an_eos_token_and_no_template(tokenizer, tmp_path):
    assert tokenizer.convert_ids_to_tokens([0, 1]) == ["<|endoftext|>", "<|pad|>"]
    assert (tokenizer.eos_token_id, tokenizer.bos_token_id, tokenizer.pad_token_id) == (0, 0, 1)
    text = "Thou art the King.\nSweet night!"
    ids = tokenizer(text)["input_ids"]
    assert 0 not in ids and tokenizer.decode(ids) == text  # cased, newline kept, nothing added
    assert tokenizer.model_input_names == ["input_ids", "attention_mask"]
    transformers = pytest.importorskip("transformers")
    tokenizer.save_pretrained(tmp_path)
    theirs = transformers.AutoTokenizer.from_pretrained(tmp_path)
    assert theirs(text)["input_ids"] == ids and theirs.eos_token == "<|endoftext|>"


def test_tokenizer_train_cli_trains_the_gpt2_kind(tmp_path, capsys):
    corpus = write_corpus(tmp_path / "c.txt", documents(20))
    assert main(["tokenizer", "train", str(corpus), "-o", str(tmp_path / "tok"), "--kind", "gpt2",
                 "--vocab-size", "280", "--min-frequency", "1"]) == 0
    tok = AutoTokenizer.from_pretrained(tmp_path / "tok")
    assert tok.eos_token == "<|endoftext|>" and tok.decode(tok.encode("King Lear")) == "King Lear"


# ------------------------------------------------------------------------------------------------ blocks
def test_blocks_are_eos_joined_documents_cut_without_padding(tokenizer, tmp_path):
    docs = documents(12)
    path = write_corpus(tmp_path / "c.txt", docs)
    blocks = build_or_load_blocks(path, tokenizer, tmp_path / "cache", block_size=8)
    stream = expected_stream(tokenizer, docs)
    assert len(blocks) == len(stream) // 8 and blocks.block_size == 8
    got = np.stack([blocks[i]["input_ids"] for i in range(len(blocks))])  # (n, 8)
    np.testing.assert_array_equal(got, stream[: len(blocks) * 8].reshape(-1, 8))
    assert (got == tokenizer.eos_token_id).sum() == (stream[: got.size] == tokenizer.eos_token_id).sum() > 0
    assert tokenizer.pad_token_id not in got


def test_cut_blocks_drops_only_the_partial_tail():
    tokens = np.arange(23, dtype=np.int32)
    blocks = cut_blocks(tokens, 5)
    assert blocks.shape == (4, 5) and blocks[-1, -1] == 19
    assert cut_blocks(tokens[:4], 5).shape == (0, 5)


def test_eval_blocks_come_from_held_out_documents_only(tokenizer, tmp_path):
    docs = documents(20)
    path = write_corpus(tmp_path / "c.txt", docs)
    kwargs = dict(block_size=8, eval_fraction=0.25, seed=3)
    train = build_or_load_blocks(path, tokenizer, tmp_path / "cache", **kwargs)
    held = build_or_load_blocks(path, tokenizer, tmp_path / "cache", split="eval", **kwargs)
    assert held.cache_hit and held.meta["splits"]["eval"]["documents"] == 5
    # Rebuild each split's stream from the documents recorded as held out.
    from lmforge.data.pretraining.cache import split_documents

    ids = split_documents(20, 0.25, 3)
    for dataset, split in ((train, "train"), (held, "eval")):
        stream = expected_stream(tokenizer, [docs[i] for i in ids[split]])
        assert len(dataset) == len(stream) // 8
        np.testing.assert_array_equal(np.asarray(dataset.blocks).reshape(-1), stream[: len(dataset) * 8])


def test_blocks_are_deterministic_and_the_cache_is_reused(tokenizer, tmp_path):
    path = write_corpus(tmp_path / "c.txt", documents(12))
    first = build_or_load_blocks(path, tokenizer, tmp_path / "a", block_size=8, eval_fraction=0.2)
    again = build_or_load_blocks(path, tokenizer, tmp_path / "a", block_size=8, eval_fraction=0.2)
    elsewhere = build_or_load_blocks(path, tokenizer, tmp_path / "b", block_size=8, eval_fraction=0.2)
    assert not first.cache_hit and again.cache_hit and not elsewhere.cache_hit
    assert first.directory == again.directory
    np.testing.assert_array_equal(np.asarray(first.blocks), np.asarray(elsewhere.blocks))
    other = build_or_load_blocks(path, tokenizer, tmp_path / "a", block_size=12, eval_fraction=0.2)
    assert not other.cache_hit and other.block_size == 12


def test_blocks_need_an_eos_token(tmp_path):
    bert_kind = train_tokenizer(["a b c d"] * 5, tmp_path / "tok", kind="bpe", vocab_size=280, min_frequency=1)
    path = write_corpus(tmp_path / "c.txt", documents(3))
    with pytest.raises(ValueError, match="EOS"):
        build_or_load_blocks(path, bert_kind, tmp_path / "cache", block_size=8)


def test_collate_stacks_blocks_as_inputs_and_labels():
    batch = causal_lm_collate([{"input_ids": np.arange(4, dtype=np.int32)}, {"input_ids": np.arange(4, 8)}])
    assert set(batch) == {"input_ids", "labels"} and batch["input_ids"].dtype == torch.long
    assert torch.equal(batch["labels"], batch["input_ids"]) and batch["input_ids"].shape == (2, 4)


# ------------------------------------------------------------------------------------------ loss, perplexity
@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_fused_training_loss_equals_the_models_loss_and_gradients(arch):
    opts = PretrainOptions(objective="clm", model_type=arch, preset=f"{arch}-tiny", dropout=0.0, max_seq_length=16)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(clm_config(opts, vocab_size=50, eos_token_id=0, pad_token_id=1))
    ids = torch.randint(0, 50, (3, 16), generator=torch.Generator().manual_seed(1))
    labels = ids.clone()
    labels[0, 5] = -100
    ours = CausalLMTraining(model)(ids, labels).loss
    ours.backward()
    fused = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    reference = model(ids, labels=labels).loss
    reference.backward()
    torch.testing.assert_close(ours, reference, atol=1e-6, rtol=0)
    for a, (name, p) in zip(fused, model.named_parameters()):
        torch.testing.assert_close(a, p.grad, atol=1e-6, rtol=1e-5, msg=name)


def test_held_out_perplexity_is_exp_of_the_mean_token_loss():
    opts = PretrainOptions(objective="clm", preset="gpt2-tiny", max_seq_length=12)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(clm_config(opts, vocab_size=40, eos_token_id=0, pad_token_id=1)).eval()
    blocks = torch.randint(0, 40, (5, 12), generator=torch.Generator().manual_seed(2))
    batches = [causal_lm_collate([{"input_ids": b.numpy()} for b in blocks[:3]]),
               causal_lm_collate([{"input_ids": b.numpy()} for b in blocks[3:]])]  # a short last batch
    with torch.no_grad():
        metrics = make_clm_evaluator(batches)(CausalLMTraining(model))
        per_block = [model(b[None], labels=b[None]).loss.item() for b in blocks]  # each a mean over 11 tokens
    mean = sum(per_block) / len(per_block)
    assert metrics["loss"] == pytest.approx(mean, rel=1e-6)
    assert metrics["perplexity"] == pytest.approx(math.exp(mean), rel=1e-6)


# ------------------------------------------------------------------------------------------------ end to end
@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_clm_pretraining_exports_a_folder_transformers_loads_with_equal_logits(arch, corpus, tmp_path):
    out = tmp_path / "run"
    assert main(["pretrain", "--corpus", str(corpus), "-o", str(out), "--arch", arch, "--preset", f"{arch}-tiny",
                 "--max-steps", "4", "--eval-every", "2", *TINY]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 4 and summary["train_instances"] > 4
    assert summary["final_eval"]["eval_perplexity"] == pytest.approx(math.exp(summary["final_eval"]["eval_loss"]))
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "eval_perplexity" in r] == [2, 4]
    config = json.loads((out / "final" / "config.json").read_text())
    assert config["model_type"] == arch and config["eos_token_id"] == 0 and config["vocab_size"] == 300
    transformers = pytest.importorskip("transformers")
    ours = AutoModelForCausalLM.from_pretrained(out / "final")
    theirs = transformers.AutoModelForCausalLM.from_pretrained(out / "final").eval()
    assert type(theirs).__name__ == {"gpt2": "GPT2LMHeadModel", "llama": "LlamaForCausalLM"}[arch]
    text = "Thou art the king.\nSweet night"
    ids = transformers.AutoTokenizer.from_pretrained(out / "final")(text, return_tensors="pt")["input_ids"]
    assert ids.tolist() == AutoTokenizer.from_pretrained(out / "final")(text, return_tensors="pt")["input_ids"].tolist()
    with torch.no_grad():
        torch.testing.assert_close(ours(ids).logits, theirs(ids).logits, atol=1e-5, rtol=0)


def test_clm_resume_is_bit_identical(corpus, tmp_path):
    common = ["pretrain", "--corpus", str(corpus), "--preset", "gpt2-tiny", "--save-every", "3", "--log-every", "1",
              "--eval-every", "3", "--max-steps", "6", *TINY]
    assert main([*common, "-o", str(tmp_path / "full")]) == 0
    # Stopped by the time budget after its first step (checkpointed there), then resumed to step 6.
    assert main([*common, "-o", str(tmp_path / "split"), "--max-minutes", "1e-9"]) == 0
    assert main([*common, "-o", str(tmp_path / "split"), "--resume"]) == 0

    def log(run, kind):
        records = [json.loads(line) for line in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]
        return [{k: v for k, v in r.items() if k not in ("elapsed", "tokens_per_s")} for r in records if kind in r]

    assert [r["step"] for r in log("split", "loss")] == [1, 2, 3, 4, 5, 6]
    assert log("split", "loss") == log("full", "loss")  # losses, grad norms, learning rates
    assert log("split", "eval_loss")[-1] == log("full", "eval_loss")[-1]
    full = (tmp_path / "full" / "final" / "model.safetensors").read_bytes()
    assert (tmp_path / "split" / "final" / "model.safetensors").read_bytes() == full


def test_clm_options_resolve_family_and_preset():
    assert (PretrainOptions(objective="clm").model_type, PretrainOptions(objective="clm").preset) == ("gpt2", "gpt2-mini")
    opts = PretrainOptions(objective="clm", preset="llama-small")
    assert (opts.model_type, opts.tokenizer_kind, opts.lowercase) == ("llama", "gpt2", False)
    assert PretrainOptions(objective="clm", model_type="llama").preset == "llama-mini"
    with pytest.raises(ValueError, match="not a llama preset"):
        PretrainOptions(objective="clm", model_type="llama", preset="gpt2-mini")
    with pytest.raises(ValueError, match="clm trains"):
        PretrainOptions(objective="clm", model_type="bert")
    with pytest.raises(ValueError, match="bert-mini"):
        PretrainOptions(preset="gpt2-mini")
    mlm = PretrainOptions()
    assert (mlm.model_type, mlm.preset, mlm.tokenizer_kind, mlm.lowercase) == ("bert", "bert-mini", "wordpiece", True)
