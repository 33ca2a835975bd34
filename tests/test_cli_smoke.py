"""Every `lmforge` subcommand, run as its own process (`python -m lmforge.cli ...`) on tiny data written
here, with its output checked: a broken import or a crash in any command fails this file, and
`test_every_subcommand_has_a_smoke_test` fails when a new command comes without one.

The subprocesses import lmforge from this checkout's `src` (PYTHONPATH), so the file tests the tree it
sits in. One tiny pretraining run and one fine-tuning run are shared by the tests that need a model.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lmforge.cli import build_parser, main
from lmforge.tokenizers import AutoTokenizer

SRC = Path(__file__).resolve().parents[1] / "src"
TINY_PRETRAIN = ["--preset", "bert-tiny", "--hidden-size", "32", "--num-hidden-layers", "1",
                 "--num-attention-heads", "2", "--intermediate-size", "64", "--vocab-size", "300",
                 "--max-seq-length", "32", "--batch-size", "8", "--max-steps", "4", "--log-every", "1",
                 "--eval-every", "2", "--save-every", "2", "--eval-batches", "1", "--eval-fraction", "0.1",
                 "--no-progress", "--threads", "1", "--seed", "7"]
POSITIVE = ["good", "great", "lovely", "superb"]
NEGATIVE = ["bad", "awful", "boring", "poor"]
FILLER = ["the", "movie", "plot", "was", "quite", "and", "actors", "film", "story", "really"]
CHINESE = "我爱自然语言处理机器学习深度模型电影故事"


def lmforge(*args: object, cache: Path, expect_rc: int = 0, stdin: str | None = None) -> subprocess.CompletedProcess:
    """Run `python -m lmforge.cli ARGS` with this checkout's sources and its own data cache (`stdin`: piped in)."""
    env = {**os.environ, "LMFORGE_CACHE": str(cache),
           "PYTHONPATH": os.pathsep.join(p for p in (str(SRC), os.environ.get("PYTHONPATH")) if p)}
    result = subprocess.run([sys.executable, "-m", "lmforge.cli", *map(str, args)], env=env, capture_output=True,
                            text=True, timeout=600, input=stdin if stdin is not None else "")
    assert result.returncode == expect_rc, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result


def registered_commands(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()) -> list[str]:
    """Every leaf subcommand of the parser, e.g. "tokenizer train", "pretrain"."""
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found += registered_commands(sub, (*prefix, name)) or [" ".join((*prefix, name))]
    return found


def test_every_subcommand_has_a_smoke_test():
    commands = registered_commands(build_parser())
    assert {"tokenizer train", "pretrain", "fill-mask", "finetune", "evaluate", "predict", "classify",
            "translate", "generate", "chat", "serve", "export onnx", "demo"} <= set(commands)
    smoke_tests = [name for name in globals() if name.startswith("test_smoke_")]
    for command in commands:
        slug = "test_smoke_" + command.replace(" ", "_").replace("-", "_")
        assert any(name == slug or name.startswith(slug + "_") for name in smoke_tests), (
            f"`lmforge {command}` has no smoke test ({slug}...) in {Path(__file__).name}")


# ------------------------------------------------------------------------------------------ tiny data
def english_sentences(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    stems = ["play", "walk", "talk", "jump", "work", "read", "cook", "paint"]
    suffixes = ["", "s", "ed", "ing", "er", "ers"]
    return [" ".join(rng.choice(stems) + rng.choice(suffixes) for _ in range(rng.randint(4, 9))).capitalize() + "."
            for _ in range(n)]


def chinese_sentences(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    clause = lambda: "".join(rng.choice(CHINESE) for _ in range(rng.randint(2, 8)))  # noqa: E731
    return [f"{clause()}，{clause()}。" for _ in range(n)]


def pseudo_word_corpus(path: Path) -> Path:
    """BERT-format text (a sentence per line, blank lines between documents) of seeded pseudo-words:
    many distinct words and many pairs of equal count, the case where tokenizer training broke ties
    differently in every process."""
    rng = random.Random(0)
    words = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 8))) for _ in range(400)]
    docs = ["\n".join(" ".join(rng.choice(words) for _ in range(rng.randint(5, 12))) + " ." for _ in range(6))
            for _ in range(50)]
    path.write_text("\n\n".join(docs) + "\n", encoding="utf-8")
    return path


def sentiment_csv(path: Path, n: int, seed: int) -> Path:
    rng = random.Random(seed)
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label"])
        for i in range(n):
            label = "positive" if i % 2 else "negative"
            words = [rng.choice(FILLER) for _ in range(rng.randint(3, 7))]
            words.insert(rng.randint(0, len(words)), rng.choice(POSITIVE if i % 2 else NEGATIVE))
            writer.writerow([" ".join(words), label])
    return path


# ----------------------------------------------------------------------------------- tokenizer train
@pytest.fixture(scope="module", params=["wordpiece", "bpe"])
def trained_tokenizer(request, tmp_path_factory):
    """`lmforge tokenizer train` on an English and a Chinese file, once per kind."""
    root = tmp_path_factory.mktemp(f"tokenizer-{request.param}")
    english = root / "english.txt"
    english.write_text("\n".join(english_sentences(200, seed=1)) + "\n", encoding="utf-8")
    chinese = root / "chinese.txt"
    chinese.write_text("\n".join(chinese_sentences(200, seed=2)) + "\n", encoding="utf-8")
    out = root / "tok"
    vocab_size = {"wordpiece": 120, "bpe": 400}[request.param]  # byte-level BPE starts with 256 + 5 tokens
    result = lmforge("tokenizer", "train", english, chinese, "-o", out, "--kind", request.param,
                     "--vocab-size", vocab_size, cache=root / "cache")
    return request.param, out, result.stdout


def test_smoke_tokenizer_train_english(trained_tokenizer):
    kind, out, stdout = trained_tokenizer
    tok = AutoTokenizer.from_pretrained(out)
    assert stdout.strip() == f"{kind} tokenizer with {tok.vocab_size} tokens written to {out}"
    assert tok.convert_ids_to_tokens(list(range(5))) == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    text = "Players walked talking painters cooked."
    tokens = tok.tokenize(text)
    assert tok.unk_token not in tokens and len(tokens) < len(text.replace(" ", ""))  # pieces longer than a character
    if kind == "wordpiece":
        assert tokens == ["players", "walked", "talking", "painters", "cooked", "."]  # words of the corpus
        pieces = tok.tokenize("Cooktalking")  # an unseen word: its first piece, then "##" pieces
        assert len(pieces) > 1 and all(p.startswith("##") for p in pieces[1:])
        assert pieces[0] + "".join(p[2:] for p in pieces[1:]) == "cooktalking"
        assert (out / "vocab.txt").read_text(encoding="utf-8").splitlines() == tok.convert_ids_to_tokens(
            list(range(tok.vocab_size)))
    else:
        assert tok.decode(tok.encode(text), skip_special_tokens=True) == text.lower()


def test_smoke_tokenizer_train_chinese(trained_tokenizer):
    kind, out, _ = trained_tokenizer
    tok = AutoTokenizer.from_pretrained(out)
    text = "我爱自然语言处理，机器学习。"
    tokens = tok.tokenize(text)
    if kind == "wordpiece":
        # BERT's basic tokenizer splits CJK ideographs into one word each (punctuation too).
        assert tokens == list(text)
    else:
        # Each ideograph is isolated before byte-level BPE; frequent ones become one token each.
        assert len(tok.tokenize("我爱自然语言处理")) == len("我爱自然语言处理")
        assert tok.decode(tok.encode(text), skip_special_tokens=True) == text
        assert tok.decode(tok.encode("机器学习 with 深度模型 😀"), skip_special_tokens=True) == "机器学习 with 深度模型 😀"


# ------------------------------------------------------------------------- pretrain -> fine-tune chain
@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """One tiny `lmforge pretrain` run, shared: (corpus, run folder, stdout)."""
    root = tmp_path_factory.mktemp("pretrain")
    corpus = pseudo_word_corpus(root / "corpus.txt")
    out = root / "run"
    result = lmforge("pretrain", "--corpus", corpus, "-o", out, *TINY_PRETRAIN, cache=root / "cache")
    return corpus, out, result.stdout


@pytest.fixture(scope="module")
def finetuned(pretrained, tmp_path_factory):
    """One tiny `lmforge finetune` run on the pretrained model: (data file, run folder, stdout)."""
    _, pretrain_dir, _ = pretrained
    root = tmp_path_factory.mktemp("finetune")
    data = sentiment_csv(root / "reviews.csv", 60, seed=1)
    out = root / "run"
    result = lmforge("finetune", "--model", pretrain_dir / "final", "--data", data, "-o", out, "--epochs", "1",
                     "--batch-size", "16", "--max-length", "32", "--learning-rate", "1e-3", "--no-progress",
                     "--threads", "1", cache=root / "cache")
    return data, out, result.stdout


def losses(run_dir: Path) -> list[dict]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if "loss" in k or "accuracy" in k or k == "step"} for r in records]


def test_smoke_pretrain(pretrained):
    _, out, stdout = pretrained
    assert stdout.startswith("step 2: eval_mlm_loss=")  # evaluation lines, then the summary
    summary = json.loads(stdout[stdout.index("{\n"):])
    assert summary["final_dir"] == str(out / "final") and summary["steps"] == 4
    assert summary["first_loss"] > 0 and "eval_mlm_loss" in summary["final_eval"]
    assert (out / "final" / "model.safetensors").is_file() and (out / "final" / "vocab.txt").is_file()
    assert [r["step"] for r in losses(out) if "loss" in r] == [1, 2, 3, 4]


def test_smoke_pretrain_causal_lm(tmp_path):
    """`lmforge pretrain --objective clm`: a GPT-2-style tokenizer, EOS-joined blocks, held-out perplexity, and a
    folder that loads as a causal LM."""
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join("\n".join(english_sentences(6, seed=i)) for i in range(20)) + "\n", encoding="utf-8")
    out = tmp_path / "run"
    result = lmforge("pretrain", "--objective", "clm", "--arch", "llama", "--preset", "llama-tiny", "--corpus", corpus,
                     "-o", out, "--hidden-size", "32", "--intermediate-size", "64", "--vocab-size", "300",
                     "--max-seq-length", "16", "--batch-size", "4", "--max-steps", "2", "--eval-fraction", "0.2",
                     "--eval-batches", "1", "--no-progress", "--threads", "1", cache=tmp_path / "cache")
    summary = json.loads(result.stdout[result.stdout.index("{\n"):])
    assert summary["steps"] == 2 and summary["final_eval"]["eval_perplexity"] > 1
    config = json.loads((out / "final" / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and config["max_position_embeddings"] == 16
    tokenizer = AutoTokenizer.from_pretrained(out / "final")
    assert tokenizer.eos_token == "<|endoftext|>" and tokenizer.decode(tokenizer.encode("Play walks.")) == "Play walks."


def test_same_seed_same_run(pretrained, tmp_path):
    """A second process with the same corpus, options and seed (and its own cache) repeats the run exactly:
    byte-identical tokenizer files, the same logged losses, the same weights."""
    corpus, first, _ = pretrained
    second = tmp_path / "run"
    lmforge("pretrain", "--corpus", corpus, "-o", second, *TINY_PRETRAIN, cache=tmp_path / "cache")
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        assert (second / "tokenizer" / name).read_bytes() == (first / "tokenizer" / name).read_bytes(), name
    assert losses(second) == losses(first)
    assert (second / "final" / "model.safetensors").read_bytes() == (first / "final" / "model.safetensors").read_bytes()


def test_smoke_fill_mask(pretrained, tmp_path):
    _, out, _ = pretrained
    vocab = (out / "final" / "vocab.txt").read_text(encoding="utf-8").splitlines()
    result = lmforge("fill-mask", out / "final", "abc [MASK] de .", "--top-k", "3", "--json", cache=tmp_path)
    candidates = json.loads(result.stdout)[0]
    assert len(candidates) == 3 and len({c["token"] for c in candidates}) == 3
    for c in candidates:
        assert 0 <= c["token"] < len(vocab) and 0.0 <= c["score"] <= 1.0
        assert "[MASK]" not in c["sequence"] and c["token_str"].removeprefix("##") in c["sequence"]
    assert [c["score"] for c in candidates] == sorted((c["score"] for c in candidates), reverse=True)


def test_smoke_finetune(finetuned):
    _, out, stdout = finetuned
    summary = json.loads(stdout[stdout.index("{\n"):])
    assert summary["best_dir"] == str(out / "best") and summary["steps"] >= 1
    assert set(summary["test"]) >= {"accuracy", "macro_f1"}
    config = json.loads((out / "best" / "config.json").read_text())
    assert sorted(config["id2label"].values()) == ["negative", "positive"]


def test_smoke_evaluate(finetuned, tmp_path):
    data, out, _ = finetuned
    result = lmforge("evaluate", out / "best", "--data", data, "--split", "all", "-o", tmp_path / "m.json",
                     cache=tmp_path)
    report = json.loads(result.stdout)
    assert report["examples"] == 60 and 0.0 <= report["metrics"]["accuracy"] <= 1.0
    assert json.loads((tmp_path / "m.json").read_text()) == report


def test_smoke_predict(finetuned, tmp_path):
    _, out, _ = finetuned
    inputs = tmp_path / "in.jsonl"
    texts = ["a superb film", "boring and poor", "the plot"]
    inputs.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts), encoding="utf-8")
    result = lmforge("predict", out / "best", inputs, "-o", tmp_path / "pred.jsonl", cache=tmp_path)
    assert result.stdout.strip() == f"3 predictions written to {tmp_path / 'pred.jsonl'}"
    rows = [json.loads(line) for line in (tmp_path / "pred.jsonl").read_text().splitlines()]
    assert [r["text"] for r in rows] == texts
    assert all(r["label"] in {"positive", "negative"} for r in rows)


def test_smoke_classify(finetuned, tmp_path):
    _, out, _ = finetuned
    result = lmforge("classify", out / "best", "a lovely film", "awful plot", "--top-k", "2", cache=tmp_path)
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["text"] for line in lines] == ["a lovely film", "awful plot"]
    for line in lines:
        assert {p["label"] for p in line["prediction"]} == {"positive", "negative"}
        assert sum(p["score"] for p in line["prediction"]) == pytest.approx(1.0, abs=1e-5)


@pytest.fixture(scope="module")
def seq2seq_run(tmp_path_factory):
    """`finetune --task seq2seq` from scratch: a tiny Marian config.json and a tokenizer trained on the pairs."""
    from lmforge.models.marian import MarianConfig

    tmp = tmp_path_factory.mktemp("s2s")
    rows = [f"{verb} the {word} %s\t{zverb}{zword} %s" for verb, zverb in (("open", "打开"), ("close", "关闭"))
            for word, zword in (("file", "文件"), ("page", "页面"), ("disk", "磁盘"))] * 5
    data = tmp / "pairs.tsv"
    data.write_text("source\ttarget\n" + "\n".join(rows) + "\n", encoding="utf-8")
    MarianConfig(vocab_size=10, d_model=16, encoder_layers=1, decoder_layers=1, encoder_ffn_dim=32,
                 decoder_ffn_dim=32, encoder_attention_heads=2, decoder_attention_heads=2,
                 max_position_embeddings=32, pad_token_id=1, eos_token_id=0, decoder_start_token_id=1,
                 dropout=0.0).to_json_file(tmp / "config.json")
    lmforge("finetune", "--task", "seq2seq", "--model", tmp / "config.json", "--data", data, "-o", tmp / "run",
            "--vocab-size", "280", "--max-steps", "4", "--eval-every", "2", "--max-new-tokens", "4",
            "--threads", "1", "--no-progress", cache=tmp)
    return tmp, data


def test_smoke_finetune_seq2seq(seq2seq_run):
    tmp, _ = seq2seq_run
    results = json.loads((tmp / "run" / "results.json").read_text(encoding="utf-8"))
    assert results["task"] == "seq2seq" and [h["step"] for h in results["history"]] == [2, 4]
    assert {"chrf", "bleu", "placeholders", "loss"} <= set(results["test"])


def test_smoke_translate(seq2seq_run):
    tmp, _ = seq2seq_run
    result = lmforge("translate", tmp / "run" / "best", "open the file %s", "close the disk %s", "--json",
                     "--num-beams", "2", "--max-new-tokens", "3", cache=tmp)
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["text"] for line in lines] == ["open the file %s", "close the disk %s"]
    assert all(isinstance(line["translation_text"], str) for line in lines)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(method: str, url: str, body: dict | None = None, timeout: float = 30) -> tuple[int, dict]:
    import urllib.error
    import urllib.request

    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method, headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_smoke_export_onnx(tmp_path):
    """`lmforge export onnx` on a tiny classifier folder: the graph, the folder's files, the verified max diff;
    a model kind it cannot export is a one-line error."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from lmforge import BertConfig
    from lmforge.models.bert import BertForMultipleChoice, BertForSequenceClassification

    config = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, num_labels=2)
    torch.manual_seed(0)
    BertForSequenceClassification(config).save_pretrained(tmp_path / "clf")
    result = lmforge("export", "onnx", tmp_path / "clf", tmp_path / "out", cache=tmp_path)
    assert f"wrote {tmp_path / 'out' / 'model.onnx'}" in result.stdout
    verify = result.stdout.strip().splitlines()[-1]
    assert verify.startswith("verify: max |onnxruntime - lmforge| = ") and verify.endswith(" ok"), result.stdout
    assert float(verify.split("= ")[1].split()[0]) <= 1e-4
    assert (tmp_path / "out" / "config.json").is_file()
    BertForMultipleChoice(config).save_pretrained(tmp_path / "mc")
    bad = lmforge("export", "onnx", tmp_path / "mc", tmp_path / "out2", cache=tmp_path, expect_rc=2)
    assert "error: cannot export BertForMultipleChoice" in bad.stderr


def test_smoke_serve(tmp_path):
    """`lmforge serve` on a tiny sentence-embedding folder: /health answers, /v1/embeddings works, and SIGTERM
    during a request (held in the batcher by --max-wait-ms) lets it finish before the process exits."""
    pytest.importorskip("fastapi")
    pytest.importorskip("uvicorn")
    import signal
    import threading
    import time

    import torch

    from lmforge import BertConfig
    from lmforge.models.bert import BertModel
    from lmforge.tokenizers import train_tokenizer

    tokenizer = train_tokenizer(english_sentences(200, seed=1), tmp_path / "model", vocab_size=100, min_frequency=1)
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=32)).save_pretrained(tmp_path / "model")
    port = free_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(SRC), os.environ.get("PYTHONPATH")) if p)}
    server = subprocess.Popen([sys.executable, "-m", "lmforge.cli", "serve", str(tmp_path / "model"), "--port",
                               str(port), "--max-wait-ms", "1500", "--threads", "1"], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                status, health = http("GET", f"{base}/health", timeout=2)
                break
            except OSError:
                assert server.poll() is None and time.monotonic() < deadline, server.stdout.read()
                time.sleep(0.2)
        assert status == 200 and health["task"] == "sentence-embedding" and "/v1/embeddings" in health["endpoints"]
        answers = []
        request = threading.Thread(target=lambda: answers.append(
            http("POST", f"{base}/v1/embeddings", {"input": ["playing", "walks"]})))
        request.start()
        time.sleep(0.5)  # the request is waiting in the batcher (1.5 s for company)
        server.send_signal(signal.SIGTERM)
        request.join(30)
        # uvicorn re-raises the signal once it has shut down: the process ends by SIGTERM, after the drain.
        assert server.wait(30) in (0, -signal.SIGTERM)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    status, body = answers[0]
    assert status == 200 and len(body["data"]) == 2 and len(body["data"][0]["embedding"]) == 16


def test_smoke_demo_help(tmp_path):
    # The demo itself needs the movie-review data (fetched at run time); tests/test_demo.py runs it at
    # the smallest size when that data is available. Here: the command and its recipe module import.
    result = lmforge("demo", "--help", cache=tmp_path)
    assert result.stdout.startswith("usage: lmforge demo")
    for flag in ("--pretrain-minutes", "--pretrain-steps", "--fractions", "--skip-minilm", "--output-dir"):
        assert flag in result.stdout


# ----------------------------------------------------------------------- causal LM: generate, chat, perplexity
CHAT_TEMPLATE = ("{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
                 "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


@pytest.fixture(scope="module")
def causal_lm(tmp_path_factory):
    """A tiny random Llama saved as an HF folder with a byte-level BPE tokenizer and a chat template."""
    from lmforge import LlamaConfig, LlamaForCausalLM
    from lmforge.tokenizers import train_tokenizer

    root = tmp_path_factory.mktemp("causal-lm")
    folder = root / "model"
    tokenizer = train_tokenizer(english_sentences(200, seed=3) + chinese_sentences(50, seed=4), folder, kind="bpe",
                                vocab_size=320, min_frequency=2, lowercase=False)
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(folder)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         pad_token_id=tokenizer.pad_token_id, bos_token_id=None, eos_token_id=tokenizer.sep_token_id)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder)
    text = root / "held_out.txt"
    text.write_text("\n".join(english_sentences(30, seed=5)) + "\n", encoding="utf-8")
    return folder, text


def test_smoke_generate(causal_lm, tmp_path):
    folder, _ = causal_lm
    greedy = lmforge("generate", folder, "Walks and talks", "--max-new-tokens", "8", "--threads", "1", cache=tmp_path)
    assert greedy.stdout.startswith("Walks and talks") and len(greedy.stdout) > len("Walks and talks\n")
    sampled = [lmforge("generate", folder, "Walks", "--max-new-tokens", "8", "--temperature", "1.5", "--seed", s,
                       cache=tmp_path).stdout for s in ("1", "1", "2")]
    assert sampled[0] == sampled[1] != sampled[2]
    beams = lmforge("generate", folder, "Walks", "--max-new-tokens", "6", "--num-beams", "3", "--chat",
                    cache=tmp_path)
    assert beams.stdout.endswith("\n") and not beams.stdout.startswith("Walks")
    bad = lmforge("generate", folder, "Walks", "--top-p", "1.5", cache=tmp_path, expect_rc=2)
    assert bad.stderr.strip().endswith("generate: top_p must be in (0, 1], got 1.5")


def test_smoke_chat(causal_lm, tmp_path):
    folder, _ = causal_lm
    result = lmforge("chat", folder, "--max-new-tokens", "5", "--system", "Be brief.", cache=tmp_path,
                     stdin="Hello there\nAnd again\n/reset\nAfter reset\n")
    # Piped: no prompt shown; the answers (random text) and the reset notice. tests/test_text_generation.py
    # checks what each turn sends to the model.
    assert result.stdout.count("(history cleared)\n") == 1 and ">>>" not in result.stdout
    assert result.stdout.endswith("\n") and result.returncode == 0


def test_smoke_evaluate_perplexity(causal_lm, tmp_path):
    folder, text = causal_lm
    result = lmforge("evaluate", "--perplexity", folder, text, "--max-length", "64", "--stride", "32",
                     cache=tmp_path)
    report = json.loads(result.stdout)
    assert report["windows"] > 2 and report["max_length"] == 64 and report["stride"] == 32
    assert 1.0 < report["perplexity"] < 10 * 320  # a random model over ~320 tokens: near the vocabulary size


@pytest.mark.slow
def test_smoke_generate_and_chat_on_the_smollm2_gguf(smollm2_gguf, tmp_path):
    result = lmforge("generate", smollm2_gguf, "The capital of France is", "--max-new-tokens", "4", cache=tmp_path)
    assert result.stdout.startswith("The capital of France is Paris"), result.stdout
    chat = lmforge("chat", smollm2_gguf, "--max-new-tokens", "12", cache=tmp_path,
                   stdin="What is the capital of France?\n")
    assert "Paris" in chat.stdout, chat.stdout


# --------------------------------------------------------------------- input that is not UTF-8: one line
def test_non_utf8_inputs_are_one_line_errors_naming_file_and_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LMFORGE_CACHE", str(tmp_path / "cache"))
    bad_csv = tmp_path / "data.csv"
    bad_csv.write_bytes(b"text,label\ngood film,pos\nna\xefve film,neg\n")  # latin-1 on line 3
    bad_txt = tmp_path / "corpus.txt"
    bad_txt.write_bytes(b"A fine sentence.\n\nAnother one, caf\xe9 style.\n")  # latin-1 on line 3
    expected = {bad_csv: f"{bad_csv}:3: not valid UTF-8 (byte 0xef at column 3)",
                bad_txt: f"{bad_txt}:3: not valid UTF-8 (byte 0xe9 at column 17)"}
    runs = [(["finetune", "--model", str(tmp_path), "--data", str(bad_csv), "-o", str(tmp_path / "ft")], bad_csv),
            (["tokenizer", "train", str(bad_txt), "-o", str(tmp_path / "tok")], bad_txt),
            (["pretrain", "--corpus", str(bad_txt), "-o", str(tmp_path / "pt"), *TINY_PRETRAIN], bad_txt)]
    for argv, bad in runs:
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1, err
        assert expected[bad] in err and "re-save the file as UTF-8" in err
