"""The encoder endpoints: /v1/classify, /v1/fill-mask, /v1/token-classify, /v1/embeddings, and the encoder-decoders'
/v1/translate and /v1/summarize (one text out per text in, micro-batched the same way). Each request is
checked here (token limits, mask tokens, label names: 4xx before it queues), its inputs go through the micro-batcher
to the task's pipeline, and its slice of the outputs is shaped into the response."""

from __future__ import annotations

import base64
from collections.abc import Hashable
from typing import Any

import numpy as np

from ..pipelines import Pipeline
from .errors import ApiError
from .options import ServeOptions
from .schemas import ClassifyRequest, EmbeddingsRequest, FillMaskRequest, TokenClassifyRequest, TranslateRequest


def as_list(texts: str | list[str]) -> list[str]:
    return [texts] if isinstance(texts, str) else list(texts)


class EncoderService:
    """A pipeline and the request checks of its task. `run` is the batcher's model call (model thread)."""

    def __init__(self, pipe: Pipeline, options: ServeOptions, model_name: str):
        self.pipe = pipe
        self.options = options
        self.model_name = model_name
        self.max_tokens = min(options.max_tokens or pipe.max_length, pipe.max_length)

    # ------------------------------------------------------------------------------------ checks (event loop)
    def check_inputs(self, texts: list[str]) -> int:
        """413 for too many inputs, 422 for one over the token limit; returns the number of tokens."""
        if len(texts) > self.options.max_inputs:
            raise ApiError(413, f"input: {len(texts)} inputs in one request; the limit is {self.options.max_inputs}",
                           "input")
        lengths = [len(ids) for ids in self.pipe.tokenizer(texts)["input_ids"]]
        for i, n in enumerate(lengths):
            if n > self.max_tokens:
                where = "input" if len(texts) == 1 else f"input[{i}]"
                raise ApiError(422, f"{where}: {n} tokens; the limit is {self.max_tokens}", where)
        return sum(lengths)

    # ------------------------------------------------------------------------------------ model (model thread)
    def run(self, key: Hashable, inputs: list[Any]) -> list[Any]:
        task, *params = key
        if task == "classify":
            return self.pipe(inputs, top_k=None)
        if task == "fill-mask":
            return self.pipe(inputs, top_k=params[0])
        if task == "token-classify":
            return self.pipe(inputs, aggregation_strategy=params[0])
        if task == "embeddings":
            return self.pipe(inputs)
        if task == "text2text":
            return self.pipe(inputs, num_beams=params[0], max_new_tokens=params[1])
        raise ValueError(f"unknown batch key {key!r}")

    # ------------------------------------------------------------------------------------ requests -> batches
    def classify(self, body: ClassifyRequest) -> tuple[Hashable, list[str], Any]:
        texts = as_list(body.input)
        self.check_inputs(texts)
        id2label = self.pipe.model.config.id2label
        known = list(id2label.values())
        if body.labels is not None:
            unknown = [label for label in body.labels if label not in known]
            if unknown:
                raise ApiError(422, f"labels: unknown label(s) {unknown}; the model's labels are {known}", "labels")
        if body.top_k is not None and body.top_k > len(known):
            raise ApiError(422, f"top_k: {body.top_k} is more than the model's {len(known)} labels", "top_k")

        def shape(outputs: list[list[dict]]) -> dict:
            data = []
            for i, ranked in enumerate(outputs):
                if body.labels is not None:
                    ranked = [r for r in ranked if r["label"] in body.labels]
                if body.top_k is not None:
                    ranked = ranked[:body.top_k]
                data.append({"index": i, "labels": ranked})
            return {"object": "list", "data": data}

        return ("classify",), texts, shape

    def fill_mask(self, body: FillMaskRequest) -> tuple[Hashable, list[str], Any]:
        texts = as_list(body.input)
        mask = self.pipe.tokenizer.mask_token
        for i, text in enumerate(texts):
            if mask not in text:
                where = "input" if len(texts) == 1 else f"input[{i}]"
                raise ApiError(422, f"{where}: no {mask} token in the text", where)
        self.check_inputs(texts)
        top_k = min(body.top_k, self.pipe.tokenizer.vocab_size)

        def shape(outputs: list[Any]) -> dict:
            # one mask: a list of candidates; several: a list per mask (as the pipeline) -> always a list per mask
            return {"object": "list", "data": [
                {"index": i, "masks": out if out and isinstance(out[0], list) else [out]}
                for i, out in enumerate(outputs)]}

        return ("fill-mask", top_k), texts, shape

    def token_classify(self, body: TokenClassifyRequest) -> tuple[Hashable, list[str], Any]:
        texts = as_list(body.input)
        self.check_inputs(texts)

        def shape(outputs: list[Any]) -> dict:
            return {"object": "list", "data": [{"index": i, "entities": out} for i, out in enumerate(outputs)]}

        return ("token-classify", body.aggregation_strategy), texts, shape

    def embeddings(self, body: EmbeddingsRequest) -> tuple[Hashable, list[str], Any]:
        texts = as_list(body.input)
        tokens = self.check_inputs(texts)

        def encode(vector: list[float]) -> list[float] | str:
            if body.encoding_format == "float":
                return vector
            return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode("ascii")

        def shape(outputs: list[list[float]]) -> dict:
            return {"object": "list", "model": body.model or self.model_name,
                    "data": [{"object": "embedding", "index": i, "embedding": encode(v)}
                             for i, v in enumerate(outputs)],
                    "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}

        return ("embeddings",), texts, shape

    def text2text(self, body: TranslateRequest) -> tuple[Hashable, list[str], Any]:
        """/v1/translate and /v1/summarize: requests with the same beams and length share a generate call."""
        texts = as_list(body.input)
        self.check_inputs(texts)
        max_tokens = body.max_tokens or self.options.max_new_tokens
        if max_tokens > self.options.max_new_tokens:
            raise ApiError(422, f"max_tokens: {max_tokens} is more than the server's limit of "
                                f"{self.options.max_new_tokens}", "max_tokens")

        def shape(outputs: list[dict[str, str]]) -> dict:
            return {"object": "list", "model": body.model or self.model_name,
                    "data": [{"index": i, **out} for i, out in enumerate(outputs)]}

        return ("text2text", body.num_beams, max_tokens), texts, shape
