"""Prometheus text exposition (format 0.0.4) of the server's counters, written by hand: a dependency for four
metric families is not worth it. Updated on the event loop thread only, so no locks."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Histogram:
    def __init__(self, buckets: tuple[float, ...]):
        self.buckets = buckets
        self.counts = [0] * len(buckets)  # per bucket, not cumulative
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        for i, bound in enumerate(self.buckets):
            if value <= bound:
                self.counts[i] += 1
                break
        self.sum += value
        self.count += 1

    def lines(self, name: str, labels: str = "") -> list[str]:
        sep = "," if labels else ""
        out, cumulative = [], 0
        for bound, n in zip(self.buckets, self.counts):
            cumulative += n
            out.append(f'{name}_bucket{{{labels}{sep}le="{bound:g}"}} {cumulative}')
        out.append(f'{name}_bucket{{{labels}{sep}le="+Inf"}} {self.count}')
        suffix = f"{{{labels}}}" if labels else ""
        out += [f"{name}_sum{suffix} {self.sum:.6f}", f"{name}_count{suffix} {self.count}"]
        return out


class Metrics:
    def __init__(self, queue_depth: Callable[[], int] = lambda: 0):
        self.requests: Counter[tuple[str, int]] = Counter()  # (endpoint, status) -> count
        self.latency: dict[str, Histogram] = {}
        self.batch_sizes = Histogram(BATCH_BUCKETS)
        self.queue_depth = queue_depth

    def observe_request(self, endpoint: str, status: int, seconds: float) -> None:
        self.requests[endpoint, status] += 1
        self.latency.setdefault(endpoint, Histogram(LATENCY_BUCKETS)).observe(seconds)

    def render(self) -> str:
        lines = ["# HELP lmforge_requests_total HTTP requests by endpoint and status code.",
                 "# TYPE lmforge_requests_total counter"]
        lines += [f'lmforge_requests_total{{endpoint="{e}",status="{s}"}} {n}'
                  for (e, s), n in sorted(self.requests.items())]
        lines += ["# HELP lmforge_request_duration_seconds Request latency, queueing included.",
                  "# TYPE lmforge_request_duration_seconds histogram"]
        for endpoint, histogram in sorted(self.latency.items()):
            lines += histogram.lines("lmforge_request_duration_seconds", f'endpoint="{endpoint}"')
        lines += ["# HELP lmforge_batch_size Inputs per model forward pass (after micro-batching).",
                  "# TYPE lmforge_batch_size histogram"]
        lines += self.batch_sizes.lines("lmforge_batch_size")
        lines += ["# HELP lmforge_queue_depth Inputs waiting for the model.", "# TYPE lmforge_queue_depth gauge",
                  f"lmforge_queue_depth {self.queue_depth()}"]
        return "\n".join(lines) + "\n"
