"""Validate a ``POST /api/chat/completions`` body the way Qwen would (§2.2).

Pure: takes decoded JSON, returns a :class:`ChatRequest` or raises
:class:`BadRequest` carrying the status and ``detail`` to answer. Unknown fields
are tolerated, as the real service tolerates what newer web clients add.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from relay.emulator.faults import (
    NO_DIRECTIVE,
    Directive,
    DirectiveError,
    parse_directive,
    strip_directives,
)

__all__ = ["BadRequest", "ChatRequest", "message_text", "parse_chat_request"]


class BadRequest(Exception):
    """A request the emulator refuses; ``detail`` goes into the JSON body."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


@dataclass(frozen=True, slots=True)
class ChatRequest:
    """The parts of a chat request that decide the answer."""

    model: str
    stream: bool
    incremental: bool
    # Text of every message, in order (directive lines included).
    texts: tuple[str, ...]
    # The last user message without directive lines: what the default answer echoes.
    user_text: str
    directive: Directive
    has_directive: bool


def message_text(content: Any) -> str:
    """Flatten a message's content: a string, or a list of ``{"type":"text"}`` parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(
            part["text"]
            for part in content
            if isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)
        )
    return ""


def parse_chat_request(body: Any) -> ChatRequest:
    """Check the body's shape and the directive; raise BadRequest if wrong.

    Whether the model exists is the server's call: it logs the model first.
    """
    if not isinstance(body, dict):
        raise BadRequest(400, "Request body must be a JSON object")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest(400, "messages must be a non-empty list")
    if not all(isinstance(message, dict) for message in messages):
        raise BadRequest(400, "each message must be an object")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise BadRequest(400, "model is required")
    stream = body.get("stream", False)
    incremental = body.get("incremental_output", False)
    if not isinstance(stream, bool) or not isinstance(incremental, bool):
        raise BadRequest(400, "stream and incremental_output must be booleans")
    texts = tuple(message_text(message.get("content")) for message in messages)
    try:
        directive = parse_directive(texts)
    except DirectiveError as exc:
        raise BadRequest(400, str(exc)) from exc
    users = [text for message, text in zip(messages, texts, strict=True) if message.get("role") == "user"]
    return ChatRequest(
        model=model,
        stream=stream,
        incremental=incremental,
        texts=texts,
        user_text=strip_directives(users[-1] if users else texts[-1]),
        directive=directive if directive is not None else NO_DIRECTIVE,
        has_directive=directive is not None,
    )
