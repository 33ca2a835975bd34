"""`lmforge serve` in-process (FastAPI's TestClient) on tiny random BERT folders: every endpoint, micro-batching
equal to one-at-a-time pipeline calls, and the protections (4xx for every bad request, 401, 413, 503, 504)."""

from __future__ import annotations

import asyncio
import base64
import threading
import time

import numpy as np
import pytest
import torch

pytest.importorskip("fastapi")
pytest.importorskip("httpx")
from fastapi.testclient import TestClient  # noqa: E402

from lmforge import BertConfig, BertForMaskedLM, BertForSequenceClassification, BertForTokenClassification  # noqa: E402
from lmforge.models.bert import BertModel  # noqa: E402
from lmforge.pipelines import pipeline  # noqa: E402
from lmforge.serve.app import create_app  # noqa: E402
from lmforge.serve.batcher import MicroBatcher  # noqa: E402
from lmforge.serve.options import ServeOptions  # noqa: E402
from lmforge.tokenizers import train_tokenizer  # noqa: E402

TEXTS = [f"the movie number {i} was {'good' if i % 2 else 'bad'} and the actors were fine ." for i in range(200)]
QUERIES = ["great movie", "the plot was bad and the actors were awful and boring", "fine",
           "the movie number 7 was good",
           "bad", "the actors were fine .", "good good good good good good good", "number 3"]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """One tiny folder per servable encoder task, weights perturbed away from their init."""
    tokenizer = train_tokenizer(TEXTS, tmp_path_factory.mktemp("tok"), vocab_size=120, min_frequency=1)
    out = {}
    three_labels = {"id2label": {0: "neg", 1: "pos", 2: "mixed"}}
    for name, cls, extra in [("classify", BertForSequenceClassification, three_labels),
                             ("fill-mask", BertForMaskedLM, {}),
                             ("token-classify", BertForTokenClassification, {"id2label": {0: "O", 1: "B-X", 2: "I-X"}}),
                             ("embeddings", BertModel, {})]:
        torch.manual_seed(0)
        model = cls(BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=16, num_hidden_layers=1,
                               num_attention_heads=2, intermediate_size=32, max_position_embeddings=64, **extra))
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.1)
        folder = tmp_path_factory.mktemp(name)
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        out[name] = folder
    return out


def client(folder, **options) -> TestClient:
    return TestClient(create_app(ServeOptions(model=str(folder), **options)))


def test_embeddings_are_openai_shaped_and_equal_the_pipeline(folders):
    with client(folders["embeddings"]) as c:
        r = c.post("/v1/embeddings", json={"input": QUERIES[:3], "model": "x"})
        b64 = c.post("/v1/embeddings", json={"input": QUERIES[0], "encoding_format": "base64"}).json()
    assert r.status_code == 200, r.text
    body = r.json()
    assert [d["index"] for d in body["data"]] == [0, 1, 2] and body["object"] == "list"
    assert body["usage"]["prompt_tokens"] == body["usage"]["total_tokens"] > 3
    expected = pipeline("sentence-embedding", model=str(folders["embeddings"]))(QUERIES[:3])
    np.testing.assert_allclose([d["embedding"] for d in body["data"]], expected, atol=1e-5)
    decoded = np.frombuffer(base64.b64decode(b64["data"][0]["embedding"]), dtype="<f4")
    np.testing.assert_allclose(decoded, expected[0], atol=1e-5)


def test_classify_top_k_and_label_filter(folders):
    with client(folders["classify"]) as c:
        one = c.post("/v1/classify", json={"input": "great movie"}).json()["data"][0]["labels"]
        every = c.post("/v1/classify", json={"input": ["great movie"], "top_k": None}).json()["data"][0]["labels"]
        only = c.post("/v1/classify", json={"input": "great movie", "labels": ["pos"], "top_k": None}).json()
        unknown = c.post("/v1/classify", json={"input": "great movie", "labels": ["happy"]})
    assert len(one) == 1 and len(every) == 3 and one[0] == every[0]
    assert abs(sum(x["score"] for x in every) - 1) < 1e-5
    assert [x["label"] for x in only["data"][0]["labels"]] == ["pos"]
    assert unknown.status_code == 422 and "happy" in unknown.json()["error"]["message"]


def test_fill_mask_and_token_classify(folders):
    with client(folders["fill-mask"]) as c:
        r = c.post("/v1/fill-mask", json={"input": ["the [MASK] was good", "the [MASK] was [MASK]"], "top_k": 2})
        no_mask = c.post("/v1/fill-mask", json={"input": ["the [MASK] was good", "no mask"]})
    assert r.status_code == 200, r.text
    masks = [d["masks"] for d in r.json()["data"]]
    assert [len(m) for m in masks] == [1, 2] and all(len(c) == 2 for m in masks for c in m)
    assert no_mask.status_code == 422 and no_mask.json()["error"]["param"] == "input[1]"
    with client(folders["token-classify"]) as c:
        r = c.post("/v1/token-classify", json={"input": "the movie was good", "aggregation_strategy": "none"})
    expected = pipeline("token-classification", model=str(folders["token-classify"]))("the movie was good",
                                                                                       aggregation_strategy="none")
    assert [t["entity"] for t in r.json()["data"][0]["entities"]] == [t["entity"] for t in expected]


def test_concurrent_requests_share_one_forward_and_equal_one_at_a_time(folders):
    """8 concurrent requests, max batch 8, a long wait: one batch of 8 inputs; results as the pipeline's."""
    results: dict[int, dict] = {}
    with client(folders["classify"], max_batch_size=8, max_wait_ms=5000) as c:
        def send(i: int) -> None:
            results[i] = c.post("/v1/classify", json={"input": QUERIES[i], "top_k": None}).json()

        threads = [threading.Thread(target=send, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        batches = c.app.state.metrics.batch_sizes
    assert batches.count == 1 and batches.sum == 8  # one forward pass for all eight
    clf = pipeline("text-classification", model=str(folders["classify"]))
    for i, query in enumerate(QUERIES):
        expected = {x["label"]: x["score"] for x in clf(query, top_k=None)}  # one at a time
        got = {x["label"]: x["score"] for x in results[i]["data"][0]["labels"]}
        assert got.keys() == expected.keys()
        assert max(abs(got[k] - expected[k]) for k in got) < 1e-6


@pytest.mark.parametrize("body, status, fragment", [
    (b'{"input": "unterminated', 400, "malformed JSON"),
    (b'{"input": 5}', 422, "input"),
    (b'{"input": ""}', 422, "empty"),
    (b'{"input": ["fine", "   "]}', 422, "empty"),
    (b'{"input": []}', 422, "input"),
    (b'{"input": "fine", "top_k": "3"}', 422, "top_k"),
    (b'{"input": "fine", "top_k": 0}', 422, "top_k"),
    (b'{"input": "fine", "top_k": 9}', 422, "top_k"),
    (b'{"input": "fine", "temperature": 1}', 422, "temperature"),
    (b'{"input": 3, "top_k": "x"}', 422, "(also wrong: top_k)"),
    (b'{"input": "\\ud800"}', 422, "Unicode"),
    (b'["fine"]', 422, "body"),
    (b'', 422, ""),
])
def test_bad_bodies_get_a_clear_4xx(folders, body, status, fragment):
    with client(folders["classify"]) as c:
        r = c.post("/v1/classify", content=body, headers={"content-type": "application/json"})
    assert r.status_code == status, r.text
    assert fragment in r.json()["error"]["message"]


def test_unknown_endpoint_method_and_limits(folders):
    with client(folders["classify"], max_inputs=4, max_tokens=6, max_body_bytes=2000) as c:
        missing = c.post("/v1/embeddings", json={"input": "fine"})
        method = c.get("/v1/classify")
        too_many = c.post("/v1/classify", json={"input": ["fine"] * 5})
        too_long = c.post("/v1/classify", json={"input": ["fine", "the movie was good and fine and bad"]})
        too_big = c.post("/v1/classify", content=b'{"input": "' + b"a" * 3000 + b'"}')
    assert missing.status_code == 404 and "/v1/classify" in missing.json()["error"]["message"]
    assert method.status_code == 405
    assert too_many.status_code == 413
    assert too_long.status_code == 422 and too_long.json()["error"]["param"] == "input[1]"
    assert too_big.status_code == 413


def test_api_key(folders, monkeypatch):
    monkeypatch.setenv("LMFORGE_API_KEY", "s3cret")
    with client(folders["classify"]) as c:
        anonymous = c.post("/v1/classify", json={"input": "fine"})
        wrong = c.post("/v1/classify", json={"input": "fine"}, headers={"Authorization": "Bearer nope"})
        right = c.post("/v1/classify", json={"input": "fine"}, headers={"Authorization": "Bearer s3cret"})
        health = c.get("/health")
    assert anonymous.status_code == 401 and wrong.status_code == 401 and "API key" in wrong.json()["error"]["message"]
    assert right.status_code == 200 and health.status_code == 200


def wait_until(condition, seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)


def blocked_model(c: TestClient) -> threading.Event:
    """Make the model thread wait on the returned event before each batch."""
    release = threading.Event()
    run = c.app.state.batcher.run

    def slow(key, inputs):
        release.wait(10)
        return run(key, inputs)

    c.app.state.batcher.run = slow
    return release


def test_full_queue_gets_503_with_retry_after(folders):
    codes: list[int] = []
    with client(folders["classify"], max_batch_size=1, max_wait_ms=0, max_queue=1) as c:
        release = blocked_model(c)
        send = lambda: codes.append(c.post("/v1/classify", json={"input": "fine"}).status_code)  # noqa: E731
        running = threading.Thread(target=send)
        running.start()
        batcher = c.app.state.batcher
        wait_until(lambda: batcher.queue_depth == 0 and c.app.state.metrics.batch_sizes.count == 1)  # in the model
        queued = threading.Thread(target=send)
        queued.start()
        wait_until(lambda: batcher.queue_depth == 1)
        rejected = c.post("/v1/classify", json={"input": "fine"})
        release.set()
        running.join()
        queued.join()
    assert rejected.status_code == 503 and rejected.headers["retry-after"] == "1"
    assert codes == [200, 200]


def test_slow_request_gets_504(folders):
    with client(folders["classify"], timeout=0.3) as c:
        release = blocked_model(c)
        r = c.post("/v1/classify", json={"input": "fine"})
        release.set()
        after = c.post("/v1/classify", json={"input": "fine"})
    assert r.status_code == 504 and "timeout" in r.json()["error"]["message"]
    assert after.status_code == 200


def test_metrics_count_requests_batches_and_queue(folders):
    with client(folders["classify"]) as c:
        c.post("/v1/classify", json={"input": ["fine", "bad"]})
        c.post("/v1/classify", json={"input": 1})
        c.get("/nowhere")
        text = c.get("/metrics").text
    assert 'lmforge_requests_total{endpoint="/v1/classify",status="200"} 1' in text
    assert 'lmforge_requests_total{endpoint="/v1/classify",status="422"} 1' in text
    assert 'lmforge_requests_total{endpoint="other",status="404"} 1' in text
    assert 'lmforge_batch_size_bucket{le="2"} 1' in text and "lmforge_queue_depth 0" in text
    assert 'lmforge_request_duration_seconds_count{endpoint="/v1/classify"} 2' in text


def test_batcher_close_drains_queued_jobs():
    async def scenario():
        batcher = MicroBatcher(lambda key, xs: [x * 2 for x in xs], max_batch_size=2, max_wait_ms=10_000,
                               max_queue=100)
        batcher.start()
        jobs = [asyncio.ensure_future(batcher.submit("double", [i])) for i in range(5)]
        await asyncio.sleep(0)  # all five queued, the first batch still waiting for company
        await batcher.close()
        return [job.result() for job in jobs]

    assert asyncio.run(scenario()) == [[0], [2], [4], [6], [8]]
