"""`Guard`: the ASGI layer in front of the routes. It times every request into the metrics (by endpoint and
status), checks the API key of /v1/* requests (401), and reads request bodies up to the size limit (413 beyond,
before any parsing)."""

from __future__ import annotations

import hmac
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

from .errors import error_body
from .metrics import Metrics

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
DRAIN_FACTOR = 8


async def send_error(send: Send, status: int, message: str, headers: dict[str, str] | None = None) -> None:
    body = json.dumps(error_body(status, message)).encode()
    raw_headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw_headers += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw_headers})
    await send({"type": "http.response.body", "body": body})


def bearer_token(scope: Scope) -> str:
    headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
    auth = headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip()
    return headers.get("x-api-key", "")


class Guard:
    def __init__(self, app, metrics: Metrics, endpoints: set[str], max_body_bytes: int, api_key: str | None):
        self.app = app
        self.metrics = metrics
        self.endpoints = endpoints  # label values: known paths; anything else counts as "other"
        self.max_body_bytes = max_body_bytes
        self.api_key = api_key

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def timed_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self._guarded(scope, receive, timed_send)
        finally:
            endpoint = scope["path"] if scope["path"] in self.endpoints else "other"
            self.metrics.observe_request(endpoint, status, time.perf_counter() - start)

    async def _guarded(self, scope: Scope, receive: Receive, send: Send) -> None:
        protected = self.api_key is not None and scope["path"].startswith("/v1/")
        if protected and not hmac.compare_digest(bearer_token(scope).encode(), self.api_key.encode()):
            await send_error(send, 401, "missing or wrong API key: send 'Authorization: Bearer <key>'",
                             {"WWW-Authenticate": "Bearer"})
            return
        if scope["method"] not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        # Read the body here, bounded (a chunked body has no content-length), then hand it on in one message.
        # Past the limit the rest is read and dropped (up to DRAIN_FACTOR x the limit) so that the client, still
        # sending, gets the 413 rather than a reset connection.
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            more = message.get("more_body", False)
            if size > self.max_body_bytes:
                chunks = []
                if more and size <= DRAIN_FACTOR * self.max_body_bytes:
                    continue
                await send_error(send, 413, f"request body over {self.max_body_bytes} bytes")
                return
            chunks.append(chunk)
            if not more:
                break
        body, delivered = b"".join(chunks), False

        async def replay() -> Message:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # after the body: wait for the disconnect, as the server would

        await self.app(scope, replay, send)
