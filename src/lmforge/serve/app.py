"""`create_app(options)`: the FastAPI application of `lmforge serve`: the model's pipeline behind the micro-batcher,
the endpoints of its task, /health and /metrics, JSON errors, and the guard (metrics, API key, body size)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable, Hashable
from pathlib import Path
from typing import Any

import torch
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..pipelines import pipeline
from .batcher import MicroBatcher, QueueFull
from .encoders import EncoderService
from .errors import ApiError, error_body, validation_message
from .kinds import ENDPOINTS, detect_task
from .metrics import Metrics
from .middleware import Guard
from .options import ServeOptions
from .schemas import (
    ChatRequest,
    ClassifyRequest,
    CompletionRequest,
    EmbeddingsRequest,
    FillMaskRequest,
    TokenClassifyRequest,
    TranslateRequest,
)

logger = logging.getLogger(__name__)


def error_response(status: int, message: str, param: str | None = None,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(error_body(status, message, param), status_code=status, headers=headers)


def model_display_name(model: str) -> str:
    """The `model` field of responses: the folder's (or GGUF file's) name, "model" folders by their parent."""
    path = Path(model)
    return path.parent.name if path.name == "model" and path.parent.name else path.name


def create_app(options: ServeOptions) -> FastAPI:
    if options.threads is not None:
        torch.set_num_threads(options.threads)
    task = options.task or detect_task(options.model)
    if task not in ENDPOINTS:
        raise ValueError(f"serve: task {task!r} has no endpoints; servable tasks: {sorted(ENDPOINTS)}")
    # batch_size = max_batch_size: a coalesced batch is one forward pass (the pipeline splits only bigger ones).
    if str(options.model).endswith(".gguf"):
        from ..recipes.generate import load_causal_lm

        model, tokenizer = load_causal_lm(options.model)
        pipe = pipeline(task, model=model, tokenizer=tokenizer, batch_size=options.max_batch_size)
    else:
        pipe = pipeline(task, model=options.model, batch_size=options.max_batch_size)
    if task == "text-generation":
        from .generation import GenerationService

        service = GenerationService(pipe, options)
    else:
        service = EncoderService(pipe, options, model_display_name(options.model))
    metrics = Metrics()
    batcher = MicroBatcher(service.run, options.max_batch_size, options.max_wait_ms, options.max_queue,
                           on_batch=metrics.batch_sizes.observe)
    metrics.queue_depth = lambda: batcher.queue_depth
    served = ENDPOINTS[task]
    model_name = model_display_name(options.model)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        batcher.start()
        logger.info("serving %s (%s) on %s", options.model, task, ", ".join(served))
        yield
        await batcher.close()  # after the server stopped taking requests: finish the queued ones

    app = FastAPI(title="lmforge", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.batcher = batcher
    app.state.metrics = metrics
    app.state.pipeline = pipe

    async def run_batched(key: Hashable, inputs: list[Any]) -> list[Any]:
        try:
            return await asyncio.wait_for(batcher.submit(key, inputs), options.timeout)
        except QueueFull as e:
            raise ApiError(503, f"server busy: {e}; retry later", headers={"Retry-After": "1"}) from None
        except asyncio.TimeoutError:
            raise ApiError(504, f"the request took longer than the {options.timeout:g} s timeout") from None

    async def serve(prepared: tuple[Hashable, list[Any], Any]) -> dict:
        key, inputs, shape = prepared
        return shape(await run_batched(key, inputs))

    if task == "text-classification":
        @app.post("/v1/classify")
        async def classify(body: ClassifyRequest) -> dict:
            return await serve(service.classify(body))
    elif task == "fill-mask":
        @app.post("/v1/fill-mask")
        async def fill_mask(body: FillMaskRequest) -> dict:
            return await serve(service.fill_mask(body))
    elif task == "token-classification":
        @app.post("/v1/token-classify")
        async def token_classify(body: TokenClassifyRequest) -> dict:
            return await serve(service.token_classify(body))
    elif task == "sentence-embedding":
        @app.post("/v1/embeddings")
        async def embeddings(body: EmbeddingsRequest) -> dict:
            return await serve(service.embeddings(body))

    elif task in ("translation", "summarization"):
        @app.post(served[0])
        async def text2text(body: TranslateRequest) -> dict:
            return await serve(service.text2text(body))
    elif task == "text-generation":
        add_generation_routes(app, service, options, model_name, batcher, run_batched)

    @app.get("/v1/models")
    async def models() -> dict:  # OpenAI clients list models first
        return {"object": "list", "data": [{"id": model_name, "object": "model", "owned_by": "lmforge"}]}

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "model": model_name, "task": task, "endpoints": list(served),
                "queue_depth": batcher.queue_depth}

    @app.get("/metrics")
    async def prometheus() -> PlainTextResponse:
        return PlainTextResponse(metrics.render(), media_type="text/plain; version=0.0.4")

    @app.exception_handler(ApiError)
    async def api_error(request: Request, e: ApiError) -> JSONResponse:
        return error_response(e.status, e.message, e.param, e.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid_body(request: Request, e: RequestValidationError) -> JSONResponse:
        status, message, param = validation_message(list(e.errors()))
        return error_response(status, message, param)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, e: StarletteHTTPException) -> JSONResponse:
        if e.status_code == 404:
            message = (f"no endpoint {request.url.path}; this server serves a {task} model: "
                       f"{', '.join((*served, '/v1/models', '/health', '/metrics'))}")
        elif e.status_code == 405:
            message = f"{request.method} is not allowed on {request.url.path}"
        else:
            message = str(e.detail)
        return error_response(e.status_code, message, headers=getattr(e, "headers", None))

    @app.exception_handler(Exception)
    async def server_error(request: Request, e: Exception) -> JSONResponse:
        logger.exception("internal error on %s", request.url.path)
        return error_response(500, f"internal error: {type(e).__name__}")

    app.add_middleware(Guard, metrics=metrics, endpoints={*served, "/v1/models", "/health", "/metrics"},
                       max_body_bytes=options.max_body_bytes, api_key=options.api_key)
    return app


def serve(options: ServeOptions) -> None:
    """Run the server until SIGINT / SIGTERM; uvicorn then stops accepting, lets in-flight requests finish
    (up to `timeout` seconds), and the batcher drains its queue."""
    import uvicorn

    app = create_app(options)
    uvicorn.run(app, host=options.host, port=options.port, log_level="info",
                timeout_graceful_shutdown=int(options.timeout) + 1)


def sse_event(data: dict) -> bytes:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n".encode()


def add_generation_routes(app: FastAPI, gen, options: ServeOptions, model_name: str, batcher: MicroBatcher,
                          run_batched: Callable) -> None:
    """/v1/completions and /v1/chat/completions; `"stream": true` answers with server-sent events."""
    from .generation import StreamSink

    async def stream(key: Hashable, ids: tuple[int, ...], stop: tuple[str, ...], opening: dict | None,
                     chunk: Callable[[str | None, str | None], dict]) -> StreamingResponse:
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()
        sink = StreamSink(gen.tokenizer, lambda text: loop.call_soon_threadsafe(events.put_nowait, ("text", text)),
                          stop)
        try:
            future = batcher.enqueue(key, [(ids, sink)])
        except QueueFull as e:
            raise ApiError(503, f"server busy: {e}; retry later", headers={"Retry-After": "1"}) from None
        # The end is queued after every piece: call_soon_threadsafe keeps the model thread's order.
        future.add_done_callback(lambda f: loop.call_soon(events.put_nowait, ("end", f)))
        try:  # until the first piece, errors are still a status code (the timeout too)
            first = await asyncio.wait_for(events.get(), options.timeout)
        except asyncio.TimeoutError:
            sink.cancelled.set()
            future.cancel()
            raise ApiError(504, f"no output within the {options.timeout:g} s timeout") from None
        if first[0] == "end":
            first[1].result()  # raises the model's error, if any

        async def events_out() -> AsyncIterator[bytes]:
            event = first
            try:
                if opening is not None:
                    yield sse_event(opening)
                while event[0] == "text":
                    yield sse_event(chunk(event[1], None))
                    event = await events.get()
                yield sse_event(chunk(None, event[1].result()[0].finish_reason))
                yield b"data: [DONE]\n\n"
            finally:
                sink.cancelled.set()  # done, or the client left: the generation stops at its next token

        return StreamingResponse(events_out(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    def usage(results) -> dict:
        prompt = sum(r.prompt_tokens for r in results)
        completion = sum(r.completion_tokens for r in results)
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest):
        settings = gen.settings(body)
        prompts = gen.completion_prompts(body, settings)
        head = {"id": f"cmpl-{uuid.uuid4().hex[:24]}", "object": "text_completion", "created": int(time.time()),
                "model": body.model or model_name}
        if body.stream:
            return await stream(gen.batch_key(settings, stream=True), prompts[0], settings.stop, None,
                                lambda text, finish: {**head, "choices": [
                                    {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}]})
        results = await run_batched(gen.batch_key(settings, stream=False), prompts)
        return {**head, "choices": [{"index": i, "text": r.text, "logprobs": None, "finish_reason": r.finish_reason}
                                    for i, r in enumerate(results)], "usage": usage(results)}

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatRequest):
        settings = gen.settings(body)
        ids = gen.chat_prompt(body, settings)
        head = {"id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "created": int(time.time()),
                "model": body.model or model_name}
        if body.stream:
            chunk = {**head, "object": "chat.completion.chunk"}
            opening = {**chunk, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                             "finish_reason": None}]}
            return await stream(gen.batch_key(settings, stream=True), ids, settings.stop, opening,
                                lambda text, finish: {**chunk, "choices": [
                                    {"index": 0, "delta": {} if text is None else {"content": text},
                                     "finish_reason": finish}]})
        [result] = await run_batched(gen.batch_key(settings, stream=False), [ids])
        return {**head, "object": "chat.completion",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": result.text},
                             "finish_reason": result.finish_reason}], "usage": usage([result])}
