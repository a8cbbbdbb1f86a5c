"""The OpenAI side of the wire: validate requests, build responses.

Pure data in, pure data out, so plain dicts test it. Shapes follow the OpenAI
Chat Completions API closely enough that the official SDKs parse them
unchanged; unknown request fields are kept for the upstream, not rejected.
"""

from __future__ import annotations

import json
import random
import re
import time
from dataclasses import dataclass
from typing import Any

from .errors import InvalidRequest
from .jsonio import has_lone_surrogate, loads

__all__ = [
    "ChatRequest",
    "completion_object",
    "estimate_usage",
    "model_list",
    "new_completion_id",
    "parse_chat_request",
    "parse_json_body",
    "prompt_chars",
    "usage_for_chars",
    "usage_from_upstream",
]

_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
_ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
_NUMBER_FIELDS = ("temperature", "top_p", "presence_penalty", "frequency_penalty")
_INT_FIELDS = ("max_tokens", "max_completion_tokens", "n", "seed")
_TYPED_FIELDS = frozenset(_NUMBER_FIELDS + _INT_FIELDS)


@dataclass(frozen=True, slots=True)
class ChatRequest:
    model: str
    messages: list[dict[str, Any]]
    stream: bool
    include_usage: bool
    #: the whole client body, unknown fields included, for the dialect to forward.
    body: dict[str, Any]

    def release_prompt(self) -> None:
        """Drop the conversation: called once a stream is committed and nothing can resend it.

        A coding agent's prompt is often 100 KB or more; without this it would
        stay in memory for as long as the stream stays open.
        """
        self.messages.clear()
        self.body.clear()


def parse_json_body(raw: bytes) -> Any:
    """Decode a request body, turning every way it can be broken into a 400."""
    if not raw:
        raise InvalidRequest("The request body is empty; expected a JSON object.")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidRequest(f"The request body is not valid UTF-8 (byte {exc.start}).") from exc
    try:
        body = loads(text, parse_constant=_reject_constant)
    except RecursionError as exc:
        raise InvalidRequest("The request body is nested too deeply to parse.") from exc
    except ValueError as exc:
        raise InvalidRequest(f"The request body is not valid JSON: {exc}.") from exc
    # "\ud800" alone decodes to a string no UTF-8 encoder accepts; pairs (emoji) are fine.
    if _SURROGATE_ESCAPE.search(text) and has_lone_surrogate(body):
        raise InvalidRequest("The request body contains an unpaired UTF-16 surrogate escape.")
    return body


def _reject_constant(name: str) -> Any:
    # NaN and Infinity are not JSON (RFC 8259); Python's parser accepts them by default.
    raise ValueError(f"{name} is not a valid JSON value")


def parse_chat_request(body: Any) -> ChatRequest:
    """Validate a chat completion request as the OpenAI API would."""
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    model = body.get("model")
    if model is None:
        raise InvalidRequest("you must provide a model parameter", param="model", code="missing_required_parameter")
    if not isinstance(model, str) or not model.strip():
        raise InvalidRequest("'model' must be a non-empty string.", param="model", code="invalid_type")
    messages = body.get("messages")
    if messages is None:
        raise InvalidRequest("'messages' is a required property.", param="messages",
                             code="missing_required_parameter")
    if not isinstance(messages, list):
        raise InvalidRequest("'messages' must be an array of message objects.", param="messages",
                             code="invalid_type")
    if not messages:
        raise InvalidRequest("'messages' must contain at least one message.", param="messages")
    for index, message in enumerate(messages):
        _check_message(index, message)
    stream = _optional(body, "stream", bool, "a boolean") or False
    options = _optional(body, "stream_options", dict, "an object")
    include_usage = False
    if options is not None:
        include_usage = _optional(options, "include_usage", bool, "a boolean", "stream_options.") or False
    if not _TYPED_FIELDS.isdisjoint(body):  # most requests (a translation) set none of them
        _check_numbers(body)
    return ChatRequest(model=model, messages=messages, stream=stream,
                       include_usage=include_usage, body=body)


def _check_numbers(body: dict[str, Any]) -> None:
    for name in _NUMBER_FIELDS:
        value = body.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
            raise InvalidRequest(f"'{name}' must be a number.", param=name, code="invalid_type")
    for name in _INT_FIELDS:
        value = body.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise InvalidRequest(f"'{name}' must be an integer.", param=name, code="invalid_type")
    if body.get("n") not in (None, 1):
        raise InvalidRequest("Only n=1 is supported: Qwen Chat returns one choice.", param="n",
                             code="unsupported_value")


def _check_message(index: int, message: Any) -> None:
    where = f"messages[{index}]"
    if not isinstance(message, dict):
        raise InvalidRequest(f"'{where}' must be an object.", param=where, code="invalid_type")
    role = message.get("role")
    if not isinstance(role, str) or role not in _ROLES:
        raise InvalidRequest(
            f"'{where}.role' must be one of {', '.join(sorted(_ROLES))}; got {json.dumps(role)}.",
            param=f"{where}.role", code="invalid_value")
    content = message.get("content")
    if content is not None and not isinstance(content, str | list):
        raise InvalidRequest(f"'{where}.content' must be a string or an array of content parts.",
                             param=f"{where}.content", code="invalid_type")


def _optional(body: dict[str, Any], name: str, kind: type, described: str, prefix: str = "") -> Any:
    value = body.get(name)
    if value is not None and not isinstance(value, kind):
        raise InvalidRequest(f"'{prefix}{name}' must be {described}.", param=prefix + name, code="invalid_type")
    return value


def new_completion_id() -> str:
    # Unique, not secret: a PRNG draw, no syscall per completion.
    return f"chatcmpl-{random.getrandbits(128):032x}"


def completion_object(*, completion_id: str, created: int, model: str, content: str | None,
                      reasoning: str, finish_reason: str, usage: dict[str, Any],
                      message_extra: dict[str, Any] | None = None,
                      tool_calls: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Build a non-stream ``chat.completion`` object (``content`` None beside tool calls)."""
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if tool_calls:
        message["tool_calls"] = tool_calls
    if reasoning:
        message["reasoning_content"] = reasoning
    if message_extra:
        message.update({k: v for k, v in message_extra.items() if k not in message})
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish_reason}],
        "usage": usage,
    }


def model_list(models: list[dict[str, Any]], created: int) -> dict[str, Any]:
    """Build the OpenAI ``list`` of models from the upstream's entries."""
    data = []
    for entry in models:
        model_id = entry.get("id")
        if not isinstance(model_id, str) or not model_id:
            continue
        item: dict[str, Any] = {
            "id": model_id,
            "object": "model",
            "created": entry["created"] if isinstance(entry.get("created"), int) else created,
            "owned_by": entry["owned_by"] if isinstance(entry.get("owned_by"), str) else "qwen",
        }
        if isinstance(entry.get("name"), str):
            item["name"] = entry["name"]
        data.append(item)
    return {"object": "list", "data": data}


def usage_from_upstream(raw: Any) -> dict[str, Any] | None:
    """Map Qwen's usage (OpenAI names or ``input_tokens``/``output_tokens``) to OpenAI's."""
    if not isinstance(raw, dict):
        return None
    prompt = raw.get("prompt_tokens", raw.get("input_tokens"))
    completion = raw.get("completion_tokens", raw.get("output_tokens"))
    if not isinstance(prompt, int) or not isinstance(completion, int):
        return None
    usage: dict[str, Any] = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": raw["total_tokens"] if isinstance(raw.get("total_tokens"), int) else prompt + completion,
    }
    details = raw.get("output_tokens_details") or raw.get("completion_tokens_details")
    if isinstance(details, dict) and isinstance(details.get("reasoning_tokens"), int):
        usage["completion_tokens_details"] = {"reasoning_tokens": details["reasoning_tokens"]}
    return usage


def estimate_usage(messages: list[dict[str, Any]], completion_chars: int) -> dict[str, int]:
    """Rough token counts (≈ 4 characters a token) when the upstream reports none.

    Clients such as Roo Code and Immersive Translate expect integer usage on every
    answer; an estimate is more useful to them than a missing field.
    """
    return usage_for_chars(prompt_chars(messages), completion_chars)


def prompt_chars(messages: list[dict[str, Any]]) -> int:
    """The characters of text in the conversation (what ``estimate_usage`` counts)."""
    chars = 0
    for message in messages:
        content = message.get("content")
        if isinstance(content, str):
            chars += len(content)
        elif isinstance(content, list):
            for part in content:
                if isinstance(part, dict) and isinstance(part.get("text"), str):
                    chars += len(part["text"])
    return chars


def usage_for_chars(prompt_chars: int, completion_chars: int) -> dict[str, int]:
    """``estimate_usage`` from counts taken earlier (a stream releases its prompt)."""
    prompt = max(1, (prompt_chars + 3) // 4)
    completion = (completion_chars + 3) // 4
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def now() -> int:
    return int(time.time())
