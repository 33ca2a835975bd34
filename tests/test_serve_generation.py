"""`lmforge serve` on a tiny random Llama folder: /v1/completions and /v1/chat/completions (OpenAI shapes), their
server-sent-event streams, micro-batched greedy requests equal to one at a time, stop strings and limits."""

from __future__ import annotations

import json
import threading

import pytest
import torch

pytest.importorskip("fastapi")
pytest.importorskip("httpx")
pytest.importorskip("jinja2")
from fastapi.testclient import TestClient  # noqa: E402

from lmforge import LlamaConfig, LlamaForCausalLM  # noqa: E402
from lmforge.pipelines import pipeline  # noqa: E402
from lmforge.serve.app import create_app  # noqa: E402
from lmforge.serve.options import ServeOptions  # noqa: E402
from lmforge.tokenizers import train_tokenizer  # noqa: E402

CHAT_TEMPLATE = ("{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
                 "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
PROMPTS = ["the", "hello world, said the", "the quick brown fox jumps", "over the lazy"]
CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hello world"}]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-llama")
    texts = ["the quick brown fox jumps over the lazy dog", "hello world, said the model", "a lazy dog sleeps"] * 20
    tokenizer = train_tokenizer(texts, folder, kind="bpe", vocab_size=200, min_frequency=2, lowercase=False)
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(folder)
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=48,
                                         num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2,
                                         max_position_embeddings=256, pad_token_id=tokenizer.pad_token_id,
                                         bos_token_id=None, eos_token_id=tokenizer.sep_token_id))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    model.save_pretrained(folder)
    return folder


def client(folder, **options) -> TestClient:
    return TestClient(create_app(ServeOptions(model=str(folder), **options)))


def events(response) -> list:
    """The `data:` payloads of an SSE body, JSON-decoded ([DONE] kept as the string)."""
    out = []
    for line in response.text.split("\n\n"):
        if line.startswith("data: "):
            data = line[len("data: "):]
            out.append(data if data == "[DONE]" else json.loads(data))
    return out


def test_completion_equals_the_pipeline_and_reports_usage(folder):
    with client(folder) as c:
        r = c.post("/v1/completions", json={"prompt": PROMPTS[1], "max_tokens": 6, "temperature": 0})
    assert r.status_code == 200, r.text
    body = r.json()
    expected = pipeline("text-generation", model=str(folder))(PROMPTS[1], max_new_tokens=6, return_full_text=False)
    assert body["object"] == "text_completion" and body["choices"][0]["text"] == expected[0]["generated_text"]
    usage = body["usage"]
    assert usage["completion_tokens"] <= 6
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert body["choices"][0]["finish_reason"] == ("length" if usage["completion_tokens"] == 6 else "stop")


def test_concurrent_greedy_completions_share_one_generate_and_equal_one_at_a_time(folder):
    answers: dict[int, str] = {}
    with client(folder, max_batch_size=4, max_wait_ms=5000) as c:
        def send(i: int) -> None:
            r = c.post("/v1/completions", json={"prompt": PROMPTS[i], "max_tokens": 5, "temperature": 0})
            answers[i] = r.json()["choices"][0]["text"]

        threads = [threading.Thread(target=send, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        batches = c.app.state.metrics.batch_sizes
    assert batches.count == 1 and batches.sum == 4
    generator = pipeline("text-generation", model=str(folder))
    alone = [generator(p, max_new_tokens=5, return_full_text=False)[0]["generated_text"] for p in PROMPTS]
    assert [answers[i] for i in range(4)] == alone


def test_streamed_completion_equals_the_whole_one(folder):
    request = {"prompt": PROMPTS[0], "max_tokens": 8, "temperature": 0}
    with client(folder) as c:
        whole = c.post("/v1/completions", json=request).json()["choices"][0]
        streamed = c.post("/v1/completions", json={**request, "stream": True})
    assert streamed.status_code == 200 and streamed.headers["content-type"].startswith("text/event-stream")
    chunks = events(streamed)
    assert chunks[-1] == "[DONE]" and chunks[-2]["choices"][0]["finish_reason"] == whole["finish_reason"]
    assert "".join(ch["choices"][0]["text"] for ch in chunks[:-1]) == whole["text"]


def test_chat_completion_and_its_stream(folder):
    request = {"messages": CHAT, "max_tokens": 6, "temperature": 0}
    with client(folder) as c:
        whole = c.post("/v1/chat/completions", json=request).json()
        streamed = events(c.post("/v1/chat/completions", json={**request, "stream": True}))
    expected = pipeline("text-generation", model=str(folder))(CHAT, max_new_tokens=6, return_full_text=False)
    message = whole["choices"][0]["message"]
    assert whole["object"] == "chat.completion" and message == {"role": "assistant",
                                                               "content": expected[0]["generated_text"]}
    assert streamed[0]["choices"][0]["delta"]["role"] == "assistant" and streamed[-1] == "[DONE]"
    assert all(ch["object"] == "chat.completion.chunk" for ch in streamed[:-1])
    assert "".join(ch["choices"][0]["delta"].get("content", "") for ch in streamed[:-1]) == message["content"]


def test_stop_string_ends_the_text_before_it(folder):
    with client(folder) as c:
        free = c.post("/v1/completions", json={"prompt": "the", "max_tokens": 12, "temperature": 0}).json()
        text = free["choices"][0]["text"]
        if len(text.strip()) < 3:
            pytest.skip(f"the tiny model's continuation {text!r} is too short to cut")
        stop = text.strip()[1:3]
        cut = c.post("/v1/completions", json={"prompt": "the", "max_tokens": 12, "temperature": 0, "stop": stop})
        streamed = events(c.post("/v1/completions", json={"prompt": "the", "max_tokens": 12, "temperature": 0,
                                                          "stop": [stop], "stream": True}))
    expected = text[:text.find(stop)]
    assert cut.json()["choices"][0] == {**cut.json()["choices"][0], "text": expected, "finish_reason": "stop"}
    assert "".join(ch["choices"][0]["text"] for ch in streamed[:-1]) == expected


def test_seeded_sampling_repeats(folder):
    request = {"prompt": "the", "max_tokens": 8, "temperature": 1.0, "seed": 3}
    with client(folder) as c:
        first, second = (c.post("/v1/completions", json=request).json()["choices"][0]["text"] for _ in range(2))
    assert first == second


@pytest.mark.parametrize("path, body, fragment", [
    ("/v1/completions", {"prompt": "the", "max_tokens": 1000}, "max_tokens"),
    ("/v1/completions", {"prompt": "the", "n": 2}, "n"),
    ("/v1/completions", {"prompt": "the " * 300}, "tokens"),
    ("/v1/completions", {"prompt": ["the", "a"], "stream": True}, "one prompt"),
    ("/v1/completions", {"prompt": "the", "temperature": "hot"}, "temperature"),
    ("/v1/completions", {"prompt": ""}, "empty"),
    ("/v1/chat/completions", {"messages": []}, "messages"),
    ("/v1/chat/completions", {"messages": [{"role": "wizard", "content": "hi"}]}, "role"),
    ("/v1/chat/completions", {"messages": [{"role": "user"}]}, "content"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "\ud800"}]}, "Unicode"),
    ("/v1/completions", {"prompt": "the", "seed": 2**70}, "seed"),
])
def test_bad_generation_requests_are_422(folder, path, body, fragment):
    with client(folder, max_new_tokens=32) as c:  # json.dumps escapes the lone surrogate that httpx would refuse
        r = c.post(path, content=json.dumps(body).encode(), headers={"content-type": "application/json"})
    assert r.status_code == 422, r.text
    assert fragment in r.json()["error"]["message"]


def test_stream_sink_holds_back_stop_starts_and_stops_when_the_client_left(folder):
    from lmforge.serve.generation import Cancelled, StreamSink
    from lmforge.tokenizers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    ids = tokenizer("the quick brown fox jumps", add_special_tokens=False)["input_ids"]
    sent: list[str] = []
    sink = StreamSink(tokenizer, sent.append, ("fox",))
    sink.put(torch.tensor([[5, 6]]))  # the prompt: not emitted
    for token in ids:
        sink.put(torch.tensor([token]))
    sink.end()
    assert "".join(sent) == tokenizer.decode(ids).split("fox")[0] and sink.stopped
    gone = StreamSink(tokenizer, sent.append, ())
    gone.put(torch.tensor([[5]]))
    gone.cancelled.set()
    with pytest.raises(Cancelled):
        gone.put(torch.tensor([ids[0]]))


def test_models_endpoint_names_the_served_model(folder):
    with client(folder) as c:
        body = c.get("/v1/models").json()
    assert body["data"][0]["id"] == folder.name and body["object"] == "list"


@pytest.mark.slow
def test_smollm2_gguf_chat_completion(smollm2_gguf):
    """SmolLM2-135M-Instruct (GGUF) behind /v1/chat/completions: greedy answers end at its end-of-turn token."""
    with TestClient(create_app(ServeOptions(model=str(smollm2_gguf)))) as c:
        r = c.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "What is the capital of "
                                                               "France?"}], "max_tokens": 30, "temperature": 0})
    choice = r.json()["choices"][0]
    assert "Paris" in choice["message"]["content"] and choice["finish_reason"] == "stop"
