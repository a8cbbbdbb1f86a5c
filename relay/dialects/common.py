"""What every dialect shares: errors, model lists and variants, history folding."""

from __future__ import annotations

import json
from typing import Any

from ..errors import (
    AuthenticationFailed,
    RelayError,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamRateLimited,
    UpstreamRejected,
)

__all__ = [
    "CONTEXT_LENGTH_CODES",
    "describe_error",
    "error_from_payload",
    "first_choice",
    "fold_messages",
    "length_or_raise",
    "message_text",
    "model_entries",
    "model_variants",
    "models_that_must_think",
    "raise_for_unsuccessful",
    "sources_text",
]

_AUTH_CODES = frozenset({"unauthorized", "invalid_token", "token_expired"})
_RATE_CODES = frozenset({"too_many_requests", "ratelimited", "rate_limited"})
CONTEXT_LENGTH_CODES = frozenset({"contextlengthexceeded", "context_length_exceeded"})
_MAX_MESSAGE = 300
_SECONDS_PER_HOUR = 3600
#: suffixes of the synthetic model ids, with (thinking, search) (issue 4).
VARIANT_SUFFIXES: tuple[tuple[str, bool, bool], ...] = (
    ("-thinking", True, False),
    ("-search", False, True),
    ("-thinking-search", True, True),
)


def describe_error(error: Any) -> tuple[str, str]:
    """Return ``(code, message)`` from any of the upstream's error shapes."""
    if isinstance(error, dict):
        code = error.get("code")
        message = error.get("details") or error.get("message") or error.get("detail") or ""
        if not isinstance(message, str):
            message = json.dumps(message, ensure_ascii=False)
        return (code if isinstance(code, str) else ""), message[:_MAX_MESSAGE]
    if isinstance(error, str):
        return "", error[:_MAX_MESSAGE]
    return "", ""


def error_from_payload(error: Any, status: int | None = None) -> RelayError:
    """Map an upstream error (``{"code": ..., "details": ...}``) to ours (§4.3, §4.5, §5)."""
    code, message = describe_error(error)
    key = code.lower()
    text = f"Qwen Chat error {code or status or 'unknown'}: {message or 'no details'}"
    if key in _AUTH_CODES or status in (401, 403):
        return AuthenticationFailed("Qwen Chat rejected the token (expired or invalid); sign in again "
                                    "and copy a fresh token.")
    if key in _RATE_CODES or status == 429:
        hours = error.get("num") if isinstance(error, dict) else None
        retry_after = float(hours) * _SECONDS_PER_HOUR if isinstance(hours, int | float) else 60.0
        return UpstreamRateLimited(text, retry_after_s=retry_after)
    if status == 400:  # only an HTTP 400 blames the request; in-stream Bad_Request is "internal error"
        return UpstreamRejected(text, status=400)
    return UpstreamError(text, code="upstream_error")


def length_or_raise(error: Any) -> str:
    """An in-stream ``{"error": ...}``: ``ContextLengthExceeded`` ends the answer with
    finish_reason "length" (returned); every other code raises its mapped error (§5)."""
    code, _ = describe_error(error)
    if code.lower() in CONTEXT_LENGTH_CODES:
        return "length"
    raise error_from_payload(error)


def first_choice(payload: dict[str, Any]) -> dict[str, Any] | None:
    """``choices[0]`` when it is an object (Qwen sends no ``index``)."""
    choices = payload.get("choices")
    choice = choices[0] if isinstance(choices, list) and choices else None
    return choice if isinstance(choice, dict) else None


def raise_for_unsuccessful(payload: Any, status: int | None = None) -> None:
    """qwen-v2 answers errors as ``{"success": false, "data": {"code": ...}}`` (§4.5)."""
    if isinstance(payload, dict) and payload.get("success") is False:
        raise error_from_payload(payload.get("data"), status)


def model_entries(payload: Any) -> list[dict[str, Any]]:
    """The model entries of ``{"data": [...]}`` or ``{"success":…, "data": {"data": [...]}}``."""
    raise_for_unsuccessful(payload)
    data = payload.get("data") if isinstance(payload, dict) else None
    if isinstance(data, dict):
        data = data.get("data")
    if not isinstance(data, list):
        raise UpstreamProtocolError("The upstream model list has no 'data' array.")
    return [entry for entry in data if isinstance(entry, dict) and isinstance(entry.get("id"), str)]


def _meta(entry: dict[str, Any]) -> dict[str, Any]:
    info = entry.get("info")
    meta = info.get("meta") if isinstance(info, dict) else None
    return meta if isinstance(meta, dict) else {}


def model_variants(entries: list[dict[str, Any]]) -> dict[str, tuple[str, bool, bool]]:
    """Synthetic ids → ``(base id, thinking, search)``, only where the model can.

    A model can think when ``info.meta.abilities.thinking`` (or
    ``capabilities.thinking``) is truthy, and search when ``info.meta.chat_type``
    lists ``"search"`` (§2.1, §4.4). An id the upstream itself lists is never
    shadowed by a variant.
    """
    real = {entry["id"] for entry in entries}
    variants: dict[str, tuple[str, bool, bool]] = {}
    for entry in entries:
        meta = _meta(entry)
        abilities, capabilities = meta.get("abilities"), meta.get("capabilities")
        can_think = bool((isinstance(abilities, dict) and abilities.get("thinking"))
                         or (isinstance(capabilities, dict) and capabilities.get("thinking")))
        chat_types = meta.get("chat_type")
        can_search = isinstance(chat_types, list) and "search" in chat_types
        for suffix, thinking, search in VARIANT_SUFFIXES:
            if (thinking and not can_think) or (search and not can_search):
                continue
            variant = entry["id"] + suffix
            if variant not in real:
                variants[variant] = (entry["id"], thinking, search)
    return variants


def models_that_must_think(entries: list[dict[str, Any]]) -> frozenset[str]:
    """Ids whose ``info.meta.think_skip.enable`` is false: asked Fast, they answer ``invalid_input`` (§7.3)."""
    must = set()
    for entry in entries:
        skip = _meta(entry).get("think_skip")
        if isinstance(skip, dict) and skip.get("enable") is False:
            must.add(entry["id"])
    return frozenset(must)


def message_text(content: Any) -> str:
    """The text of an OpenAI message ``content``: a string or a list of parts."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        return ""
    pieces = []
    for part in content:
        if not isinstance(part, dict):
            continue
        if isinstance(part.get("text"), str):
            pieces.append(part["text"])
        elif part.get("type") in ("image_url", "image", "input_image"):
            pieces.append("[image]")
    return "\n".join(pieces)


_ROLE_LABELS = {"system": "System", "developer": "System", "user": "User", "assistant": "Assistant",
                "tool": "Tool result", "function": "Tool result"}


def fold_messages(messages: list[dict[str, Any]]) -> str:
    """Fold an OpenAI conversation into the one user message qwen-v2 accepts (§4.2).

    Format (documented in README, "Dialects"): a lone user message is sent as it
    is. Otherwise each message becomes a block ``<Role>: <text>`` (System, User,
    Assistant, Tool result), blocks separated by a blank line, in order; the
    last user message comes last, so the model answers it.
    """
    if len(messages) == 1 and messages[0].get("role") == "user":
        return message_text(messages[0].get("content"))
    blocks = []
    for message in messages:
        label = _ROLE_LABELS.get(str(message.get("role")), "User")
        blocks.append(f"{label}: {message_text(message.get('content'))}")
    return "\n\n".join(blocks)


def sources_text(sources: list[dict[str, Any]]) -> str:
    """Web-search results as a short Markdown list appended to the answer."""
    lines = []
    for index, source in enumerate(sources[:10], start=1):
        title = source.get("title") if isinstance(source.get("title"), str) else None
        url = source.get("url") if isinstance(source.get("url"), str) else None
        if url:
            lines.append(f"{index}. [{title or url}]({url})")
    return "\n\nSources:\n" + "\n".join(lines) if lines else ""
