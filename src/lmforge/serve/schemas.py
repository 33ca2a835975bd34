"""Request bodies (pydantic): strict types (a number is not a string), no empty or blank texts, no unknown fields
beyond the few OpenAI clients send."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr


def _unicode(text: str) -> str:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # JSON's "\ud800" escapes decode to strings no tokenizer takes
        raise ValueError("not valid Unicode (a lone surrogate escape)") from None
    return text


def _not_blank(text: str) -> str:
    if not text.strip():
        raise ValueError("empty or blank text")
    return _unicode(text)


Text = Annotated[StrictStr, AfterValidator(_not_blank)]
AnyText = Annotated[StrictStr, AfterValidator(_unicode)]  # may be empty
Texts = Text | Annotated[list[Text], Field(min_length=1)]


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: StrictStr | None = None  # accepted and ignored: the server serves one model


class ClassifyRequest(_Request):
    input: Texts
    top_k: Annotated[StrictInt, Field(ge=1)] | None = 1  # None: every label
    labels: Annotated[list[StrictStr], Field(min_length=1)] | None = None  # only these labels' scores


class FillMaskRequest(_Request):
    input: Texts
    top_k: Annotated[StrictInt, Field(ge=1, le=100)] = 5


class TokenClassifyRequest(_Request):
    input: Texts
    aggregation_strategy: Literal["simple", "none"] = "simple"


class EmbeddingsRequest(_Request):
    input: Texts
    encoding_format: Literal["float", "base64"] = "float"
    user: StrictStr | None = None


class TranslateRequest(_Request):
    input: Texts
    num_beams: Annotated[StrictInt, Field(ge=1, le=16)] = 1  # 1: greedy
    max_tokens: Annotated[StrictInt, Field(ge=1)] | None = None  # None: the server's --max-new-tokens


class _GenerationRequest(_Request):
    max_tokens: Annotated[StrictInt, Field(ge=1)] | None = None  # None: 16, as OpenAI's completions
    temperature: Annotated[StrictFloat | StrictInt, Field(ge=0, le=2)] = 1.0  # 0: greedy
    top_p: Annotated[StrictFloat | StrictInt, Field(gt=0, le=1)] | None = None
    n: StrictInt = 1
    stream: StrictBool = False
    stop: Text | Annotated[list[Text], Field(min_length=1, max_length=4)] | None = None
    seed: Annotated[StrictInt, Field(ge=0, le=2**63 - 1)] | None = None
    user: StrictStr | None = None


class CompletionRequest(_GenerationRequest):
    prompt: Texts


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Literal["system", "user", "assistant"]
    content: AnyText


class ChatRequest(_GenerationRequest):
    messages: Annotated[list[Message], Field(min_length=1)]
    max_completion_tokens: Annotated[StrictInt, Field(ge=1)] | None = None  # OpenAI's newer name of max_tokens
