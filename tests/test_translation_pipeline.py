"""pipeline("translation") / ("summarization"), `lmforge translate` and serve's /v1/translate on a tiny random
Marian folder: the outputs equal transformers' generate + decode (what its translation pipeline did)."""

from __future__ import annotations

import json

import pytest
import torch
from seq2seq_helpers import perturbed
from tokenizers import Tokenizer as BackendTokenizer
from tokenizers import decoders, models, pre_tokenizers, processors

from lmforge import pipeline
from lmforge.cli import main

transformers = pytest.importorskip("transformers")

WORDS = ["open", "close", "the", "a", "file", "folder", "window", "page", "user", "now", "again", "please"]
TEXTS = ["open the file", "close a window now please", "the user", "open the page again please now"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """transformers' MarianMTModel (perturbed) and a word-level tokenizer that appends </s>, as Marian's does."""
    folder = tmp_path_factory.mktemp("marian")
    vocab = {"</s>": 0, "<unk>": 1, **{w: i + 2 for i, w in enumerate(WORDS)}, "<pad>": len(WORDS) + 2}
    backend = BackendTokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 0)])
    backend.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    backend.add_special_tokens(["</s>", "<unk>", "<pad>"])
    backend.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "eos_token": "</s>", "unk_token": "<unk>",
        "pad_token": "<pad>", "model_max_length": 32}), encoding="utf-8")
    config = transformers.MarianConfig(
        vocab_size=len(vocab), d_model=32, encoder_layers=2, decoder_layers=2, encoder_ffn_dim=48, decoder_ffn_dim=48,
        encoder_attention_heads=4, decoder_attention_heads=4, max_position_embeddings=64, pad_token_id=vocab["<pad>"],
        eos_token_id=0, decoder_start_token_id=vocab["<pad>"], forced_eos_token_id=0, dropout=0.0)
    torch.manual_seed(3)
    model = perturbed(transformers.MarianMTModel(config), seed=3)
    with torch.no_grad():
        model.final_logits_bias.zero_()  # a random bias drowns the source: every text would get one output
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def bart_folder(tmp_path_factory):
    """transformers' BartForConditionalGeneration (perturbed) with BART's `<s> text </s>` template."""
    folder = tmp_path_factory.mktemp("bart")
    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3, **{w: i + 4 for i, w in enumerate(WORDS)}}
    backend = BackendTokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.post_processor = processors.TemplateProcessing(single="<s> $A </s>", special_tokens=[("<s>", 0),
                                                                                                 ("</s>", 2)])
    backend.decoder = decoders.WordPiece(prefix="##")
    backend.add_special_tokens(["<s>", "<pad>", "</s>", "<unk>"])
    backend.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
        "pad_token": "<pad>", "model_max_length": 32}), encoding="utf-8")
    config = transformers.BartConfig(
        vocab_size=len(vocab), d_model=32, encoder_layers=2, decoder_layers=2, encoder_ffn_dim=48, decoder_ffn_dim=48,
        encoder_attention_heads=4, decoder_attention_heads=4, max_position_embeddings=64, pad_token_id=1,
        bos_token_id=0, eos_token_id=2, decoder_start_token_id=2, forced_eos_token_id=2, dropout=0.0)
    torch.manual_seed(3)
    model = perturbed(transformers.BartForConditionalGeneration(config), seed=3)
    with torch.no_grad():
        model.final_logits_bias.zero_()
    model.save_pretrained(folder)
    return folder


def test_summarization_of_a_bart_folder_equals_transformers(bart_folder):
    got = pipeline("summarization", model=str(bart_folder))(TEXTS, num_beams=2, max_new_tokens=7)
    expected = reference(bart_folder, TEXTS, num_beams=2, max_new_tokens=7)
    assert got == [{"summary_text": text} for text in expected]


def reference(folder, texts, **settings):
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    model = transformers.AutoModelForSeq2SeqLM.from_pretrained(folder).eval()
    out = []
    for text in texts:  # one at a time, as transformers' pipeline ran by default
        with torch.no_grad():
            ids = model.generate(**tokenizer(text, return_tensors="pt"), do_sample=False, **settings)
        out.append(tokenizer.decode(ids[0], skip_special_tokens=True, clean_up_tokenization_spaces=False))
    return out


@pytest.mark.parametrize("num_beams", [1, 3])
def test_translation_equals_transformers(folder, num_beams):
    got = pipeline("translation", model=str(folder), batch_size=3)(TEXTS, num_beams=num_beams, max_new_tokens=9)
    expected = reference(folder, TEXTS, num_beams=num_beams, max_new_tokens=9)
    assert got == [{"translation_text": text} for text in expected]
    assert num_beams > 1 or len(set(expected)) > 1  # greedy outputs depend on the source


def test_one_text_and_summarization_shape(folder):
    one = pipeline("translation", model=str(folder))("open the file", max_new_tokens=5)
    assert isinstance(one, list) and len(one) == 1 and set(one[0]) == {"translation_text"}
    summary = pipeline("summarization", model=str(folder))(TEXTS[:2], max_new_tokens=5)
    assert [s["summary_text"] for s in summary] == [t["translation_text"] for t in
                                                    pipeline("translation", model=str(folder))(TEXTS[:2],
                                                                                              max_new_tokens=5)]


def test_cli_translate(folder, capsys):
    assert main(["translate", str(folder), *TEXTS[:2], "--max-new-tokens", "7", "--num-beams", "2", "--json"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    expected = reference(folder, TEXTS[:2], num_beams=2, max_new_tokens=7)
    assert [line["translation_text"] for line in lines] == expected
    assert [line["text"] for line in lines] == TEXTS[:2]


def test_serve_translate(folder):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from lmforge.serve.app import create_app
    from lmforge.serve.options import ServeOptions

    with TestClient(create_app(ServeOptions(model=str(folder), max_inputs=3, max_new_tokens=10))) as client:
        health = client.get("/health").json()
        assert health["task"] == "translation" and health["endpoints"] == ["/v1/translate"]
        response = client.post("/v1/translate", json={"input": TEXTS[:3], "num_beams": 2, "max_tokens": 8})
        assert response.status_code == 200
        data = response.json()["data"]
        expected = reference(folder, TEXTS[:3], num_beams=2, max_new_tokens=8)
        assert [d["translation_text"] for d in data] == expected and [d["index"] for d in data] == [0, 1, 2]
        for body, status, fragment in [({"input": TEXTS}, 413, "limit is 3"),
                                       ({"input": "open", "max_tokens": 11}, 422, "limit of 10"),
                                       ({"input": " "}, 422, "blank"),
                                       ({"input": "open", "num_beams": 0}, 422, "num_beams")]:
            response = client.post("/v1/translate", json=body)
            assert response.status_code == status and fragment in response.text, response.text


def test_serve_translate_batches_concurrent_requests(folder):
    """4 concurrent requests with the same settings: one generate call; each gets the one-at-a-time output."""
    pytest.importorskip("fastapi")
    import threading

    from fastapi.testclient import TestClient

    from lmforge.serve.app import create_app
    from lmforge.serve.options import ServeOptions

    results: dict[int, dict] = {}
    options = ServeOptions(model=str(folder), max_batch_size=4, max_wait_ms=5000, max_new_tokens=6)
    with TestClient(create_app(options)) as client:
        def send(i: int) -> None:
            results[i] = client.post("/v1/translate", json={"input": TEXTS[i], "max_tokens": 6}).json()

        threads = [threading.Thread(target=send, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        batches = client.app.state.metrics.batch_sizes
    assert batches.count == 1 and batches.sum == 4
    expected = reference(folder, TEXTS, max_new_tokens=6)
    assert [results[i]["data"][0]["translation_text"] for i in range(4)] == expected
