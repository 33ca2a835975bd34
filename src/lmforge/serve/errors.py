"""Errors as JSON (`{"error": {"message", "type", "param", "code"}}`, OpenAI's shape): every bad request gets a 4xx
with a message naming the field, never a 5xx or an HTML page."""

from __future__ import annotations

from typing import Any


class ApiError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.headers = headers or {}


ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
               405: "invalid_request_error", 413: "request_too_large", 422: "invalid_request_error",
               503: "overloaded_error", 504: "timeout_error"}


def error_body(status: int, message: str, param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": ERROR_TYPES.get(status, "server_error"), "param": param,
                      "code": status}}


def validation_message(errors: list[dict[str, Any]]) -> tuple[int, str, str | None]:
    """(status, message, param) of pydantic's errors for a request body: 400 for a body that is not JSON,
    422 (naming the field) for JSON of the wrong shape."""
    first = errors[0]
    if first.get("type") == "json_invalid":
        detail = first.get("ctx", {}).get("error", "")
        return 400, f"malformed JSON body: {detail}".rstrip(": "), None
    # A union (input: text or list of texts) reports one error per member: the deepest is the telling one.
    first = max(errors, key=lambda e: len(e.get("loc", ())))
    path = ""
    for part in first.get("loc", ()):
        if isinstance(part, int):
            path += f"[{part}]"
        elif part != "body" and not ("[" in part or part in ("str", "int") or part.startswith("function-")):
            path += f".{part}" if path else part
    message = f"{path or 'body'}: {first.get('msg', 'invalid value')}"
    if path == "input" and first.get("type") in ("string_type", "list_type"):
        message = "input: expected a non-empty string or a list of non-empty strings"
    # Other fields that are wrong too (a union's members all fail on the same field: not "more errors").
    fields = {str(e["loc"][1]) for e in errors if len(e.get("loc", ())) > 1 and e["loc"][0] == "body"}
    others = sorted(fields - {str(first["loc"][1])}) if len(first.get("loc", ())) > 1 else []
    if others:
        message += f" (also wrong: {', '.join(others)})"
    return 422, message, path or None
