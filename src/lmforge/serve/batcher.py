"""`MicroBatcher`: concurrent requests coalesced into one model call.

Requests queue as jobs (a key naming the call and its parameters, and a list of inputs). The first job in the
queue waits up to `max_wait_ms` for jobs of the same key to join it, or until `max_batch_size` inputs are
there; the inputs then go to `run(key, inputs)` in one call on the single model thread, and each job gets its
slice of the outputs. While the model works the event loop keeps accepting, so under load the next batch is
already full when the model is free. The queue is bounded in inputs (`QueueFull` beyond it); a job whose
caller gave up (timeout, disconnect) before its batch starts is dropped; `close()` drains what is queued.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Hashable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any


class QueueFull(Exception):
    """More inputs are waiting than the queue holds."""


@dataclass
class _Job:
    key: Hashable
    inputs: list[Any]
    future: asyncio.Future
    enqueued: float = field(default_factory=time.monotonic)


class MicroBatcher:
    def __init__(self, run: Callable[[Hashable, list[Any]], list[Any]], max_batch_size: int, max_wait_ms: float,
                 max_queue: int, on_batch: Callable[[int], None] = lambda n: None):
        self.run = run
        self.max_batch_size = max_batch_size
        self.max_wait = max_wait_ms / 1000
        self.max_queue = max_queue
        self.on_batch = on_batch  # called with the size of each batch (metrics)
        self._queue: deque[_Job] = deque()
        self._queued_inputs = 0
        self._changed: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._closing = False
        # One thread: the model runs one batch at a time (torch parallelises inside the batch).
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lmforge-model")

    @property
    def queue_depth(self) -> int:
        return self._queued_inputs

    def start(self) -> None:
        self._changed = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def close(self) -> None:
        """Stop taking jobs, finish the queued ones, stop the model thread."""
        self._closing = True
        if self._task is not None:
            self._changed.set()
            await self._task
        self._executor.shutdown(wait=True)

    async def submit(self, key: Hashable, inputs: list[Any]) -> list[Any]:
        return await self.enqueue(key, inputs)

    def enqueue(self, key: Hashable, inputs: list[Any]) -> asyncio.Future:
        """Queue a job now (QueueFull at once when the queue is full); the future gets its outputs."""
        if self._task is None or self._closing:
            raise RuntimeError("the batcher is not running")
        if self._queued_inputs + len(inputs) > self.max_queue and self._queue:
            raise QueueFull(f"{self._queued_inputs} inputs are queued (limit {self.max_queue})")
        job = _Job(key, list(inputs), asyncio.get_running_loop().create_future())
        self._queue.append(job)
        self._queued_inputs += len(job.inputs)
        self._changed.set()
        return job.future

    def _ready(self, key: Hashable) -> int:
        return sum(len(j.inputs) for j in self._queue if j.key == key)

    def _take(self) -> list[_Job]:
        """The first live job and the following jobs of its key, up to max_batch_size inputs."""
        while self._queue and self._queue[0].future.done():  # caller gone: drop it
            self._queued_inputs -= len(self._queue.popleft().inputs)
        if not self._queue:
            return []
        key, taken, size, kept = self._queue[0].key, [], 0, deque()
        for job in self._queue:
            fits = not taken or size + len(job.inputs) <= self.max_batch_size
            if job.key == key and fits and not job.future.done():
                taken.append(job)
                size += len(job.inputs)
            elif not job.future.done():
                kept.append(job)
        self._queue = kept
        self._queued_inputs = sum(len(j.inputs) for j in kept)
        return taken

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._queue:
                if self._closing:
                    return
                self._changed.clear()
                await self._changed.wait()
                continue
            first = self._queue[0]
            # Wait for company: until the batch is full, the first job has waited max_wait, or we are closing.
            while not self._closing and self._ready(first.key) < self.max_batch_size:
                remaining = first.enqueued + self.max_wait - time.monotonic()
                if remaining <= 0 or first.future.done():
                    break
                self._changed.clear()
                try:
                    await asyncio.wait_for(self._changed.wait(), remaining)
                except asyncio.TimeoutError:
                    break
            jobs = self._take()
            if not jobs:
                continue
            inputs = [x for job in jobs for x in job.inputs]
            self.on_batch(len(inputs))
            try:
                outputs = await loop.run_in_executor(self._executor, self.run, jobs[0].key, inputs)
            except Exception as e:  # noqa: BLE001 - every caller of the batch gets the error
                for job in jobs:
                    if not job.future.done():
                        job.future.set_exception(e)
                continue
            start = 0
            for job in jobs:
                if not job.future.done():
                    job.future.set_result(outputs[start:start + len(job.inputs)])
                start += len(job.inputs)
