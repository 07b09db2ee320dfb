"""OpenAI request bodies and response/error shapes, as the official clients send and expect them."""

from __future__ import annotations

import time
from typing import Annotated, Literal

from pydantic import (BaseModel, ConfigDict, Field, StrictBool, StrictStr, ValidationError,
                      field_validator)

__all__ = ["ApiError", "ChatRequest", "RagOptions", "CompletionRequest", "parse_request", "error_body",
           "chat_response", "chat_chunk", "completion_response", "completion_chunk", "usage"]


class ApiError(Exception):
    """An error answered in OpenAI's shape: {"error": {"message", "type", "param", "code"}}."""

    TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
             404: "invalid_request_error", 413: "invalid_request_error", 429: "rate_limit_error",
             503: "server_error", 500: "server_error", 499: "invalid_request_error"}

    def __init__(self, status: int, message: str, code: str | None = None, param: str | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.param = status, message, code, param


def error_body(error: ApiError) -> dict:
    return {"error": {"message": error.message, "type": ApiError.TYPES.get(error.status, "api_error"),
                      "param": error.param, "code": error.code}}


# Strict types: `"4"`, `true` or `4.0` for max_tokens, or `"yes"` for stream, are refused rather
# than coerced, so a client's bug shows up as a 400 naming the field instead of a surprise.
_Tokens = Annotated[int, Field(strict=True, ge=1)]
_Float = Annotated[float, Field(strict=True, allow_inf_nan=False)]

MIN_TEMPERATURE = 0.01
"""Temperatures in (0, MIN_TEMPERATURE) are answered greedily: dividing logits by a value that
small overflows to inf/nan inside sampling, and the distribution is one-hot anyway."""

MAX_SEED = 2**63 - 1  # torch's generator takes a signed 64-bit seed

# OpenAI parameters that would change the answer's shape or content, and that this server does
# not implement: refused, so a client never mistakes a missing feature for an empty result.
# Each maps to the values that mean "not asked for" and are therefore accepted.
UNSUPPORTED = {
    "logprobs": (None, False, 0), "top_logprobs": (None, 0), "n": (None, 1), "best_of": (None, 1),
    "tools": (None, []), "tool_choice": (None, "none"), "functions": (None, []),
    "function_call": (None, "none"), "logit_bias": (None, {}), "echo": (None, False),
    "suffix": (None, ""), "response_format": (None, {"type": "text"}), "audio": (None,),
    "modalities": (None, ["text"]), "prediction": (None,), "parallel_tool_calls": (None, False, True),
}


class _Sampling(BaseModel):
    # Unknown OpenAI parameters (frequency_penalty, user, ...) are accepted and ignored, as
    # other OpenAI-compatible servers do; the ones that would change the answer are checked.
    model_config = ConfigDict(extra="ignore")

    model: StrictStr
    max_tokens: _Tokens | None = None
    # vLLM's extension: no end-of-answer token before this many tokens (stop strings still end it).
    min_tokens: Annotated[int, Field(strict=True, ge=0)] | None = None
    temperature: Annotated[_Float, Field(ge=0, le=2)] | None = None
    top_p: Annotated[_Float, Field(gt=0, le=1)] | None = None
    stop: StrictStr | list[StrictStr] | None = None
    seed: Annotated[int, Field(strict=True, ge=0, le=MAX_SEED)] | None = None
    stream: StrictBool = False
    stream_options: dict | None = None

    @field_validator("stop")
    @classmethod
    def _stops(cls, value):
        stops = [value] if isinstance(value, str) else list(value or [])
        if len(stops) > 4:
            raise ValueError("at most 4 stop sequences")
        return [s for s in stops if s]

    @property
    def include_usage(self) -> bool:
        return bool((self.stream_options or {}).get("include_usage"))

    @property
    def effective_temperature(self) -> float:
        """1 when unset (OpenAI's default); 0 (greedy) for anything below MIN_TEMPERATURE."""
        t = 1.0 if self.temperature is None else self.temperature
        return 0.0 if t < MIN_TEMPERATURE else t


class TextPart(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: Literal["text"]  # image, audio and file parts are refused: this server reads text
    text: StrictStr


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: StrictStr | list[TextPart] | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(p.text for p in self.content)
        return self.content or ""


class RagOptions(BaseModel):
    """affina's extension field `rag`: retrieve from a knowledge base into the prompt
    (serve/retrieval.py)."""
    model_config = ConfigDict(extra="forbid")

    index: Annotated[str, Field(strict=True, min_length=1)]
    k: Annotated[int, Field(strict=True, ge=1, le=20)] = 4
    mode: Literal["hybrid", "vector", "bm25"] = "hybrid"


class ChatRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: _Tokens | None = None
    rag: RagOptions | None = None

    def as_messages(self) -> list[dict]:
        # Templates know system/user/assistant; "developer" is OpenAI's newer name for system.
        return [{"role": "system" if m.role == "developer" else m.role, "content": m.text()}
                for m in self.messages]

    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


class CompletionRequest(_Sampling):
    # An empty prompt is refused (400) rather than generated from BOS: not every tokenizer has
    # a BOS token, and a model continuing nothing is rarely what a client meant.
    prompt: Annotated[str, Field(strict=True, min_length=1)] | list[StrictStr]
    rag: object = None  # retrieval is for chat: refused here rather than silently ignored

    @field_validator("rag", mode="before")
    @classmethod
    def _no_rag(cls, value):
        if value is not None:
            raise ValueError("retrieval works on /v1/chat/completions only")
        return value

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, value):
        if isinstance(value, list):
            if len(value) != 1:
                raise ValueError("send one prompt per request")
            value = value[0]
        if not value:
            raise ValueError("the prompt is empty")
        return value

    def requested_max_tokens(self) -> int | None:
        return self.max_tokens


def _has_lone_surrogate(value) -> bool:
    """JSON's \ud800 escapes decode to str that cannot be encoded as UTF-8 (log, tokenizer)."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return True
        return False
    if isinstance(value, dict):
        return any(_has_lone_surrogate(k) or _has_lone_surrogate(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_lone_surrogate(v) for v in value)
    return False


def parse_request(model_class, payload) -> _Sampling:
    if not isinstance(payload, dict):
        raise ApiError(400, "the request body must be a JSON object", "invalid_request")
    if _has_lone_surrogate(payload):
        raise ApiError(400, "the request holds text that is not valid Unicode (a lone surrogate "
                       "escape such as \\ud800)", "invalid_unicode")
    for name, accepted in UNSUPPORTED.items():
        if name in payload and not any(payload[name] == a and type(payload[name]) is type(a)
                                       for a in accepted):
            raise ApiError(400, f"{name}: not supported by this server", "unsupported_parameter", name)
    try:
        return model_class.model_validate(payload)
    except ValidationError as e:
        first = e.errors()[0]
        # Union members add their type name to the location; the client only needs the field.
        loc = [str(p) for p in first.get("loc", ()) if not _is_type_tag(p)]
        param = ".".join(loc) or None
        raise ApiError(400, f"{param}: {first.get('msg')}" if param else first.get("msg", str(e)),
                       "invalid_request", param) from None


def _is_type_tag(part) -> bool:
    return isinstance(part, str) and (part in ("str", "int", "float", "bool", "list[str]",
                                               "constrained-str", "list[TextPart]", "TextPart")
                                      or part.startswith(("list[", "function-")))


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def chat_response(request_id: str, model: str, text: str, finish_reason: str, usage_: dict) -> dict:
    return {"id": request_id, "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                         "logprobs": None, "finish_reason": finish_reason}],
            "usage": usage_}


def chat_chunk(request_id: str, model: str, created: int, delta: dict | None,
               finish_reason: str | None = None, usage_: dict | None = None) -> dict:
    choices = [] if delta is None else [{"index": 0, "delta": delta, "logprobs": None,
                                         "finish_reason": finish_reason}]
    chunk = {"id": request_id, "object": "chat.completion.chunk", "created": created, "model": model,
             "choices": choices}
    if usage_ is not None:
        chunk["usage"] = usage_
    return chunk


def completion_response(request_id: str, model: str, text: str, finish_reason: str, usage_: dict) -> dict:
    return {"id": request_id, "object": "text_completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}],
            "usage": usage_}


def completion_chunk(request_id: str, model: str, created: int, text: str | None,
                     finish_reason: str | None = None, usage_: dict | None = None) -> dict:
    choices = [] if text is None else [{"index": 0, "text": text, "logprobs": None,
                                        "finish_reason": finish_reason}]
    chunk = {"id": request_id, "object": "text_completion", "created": created, "model": model,
             "choices": choices}
    if usage_ is not None:
        chunk["usage"] = usage_
    return chunk
