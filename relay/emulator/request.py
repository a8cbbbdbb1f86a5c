"""Validate chat bodies the way Qwen would: v1/phase (§2.2, §3) and v2 (§4.2).

Pure: takes decoded JSON, returns a :class:`ChatRequest` / :class:`V2Request` or
raises :class:`BadRequest` carrying the status, ``detail`` and v2 ``code`` to answer.
Unknown fields are tolerated, as the real service tolerates what newer web clients add.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from relay.emulator.directive import (
    NO_DIRECTIVE,
    Directive,
    DirectiveError,
    parse_directive,
    strip_directives,
)
from relay.emulator.translation import translation_texts

__all__ = [
    "BadRequest",
    "ChatRequest",
    "Features",
    "V2Request",
    "message_text",
    "parse_chat_request",
    "parse_v2_request",
]


class BadRequest(Exception):
    """A request the emulator refuses; ``detail`` goes into the JSON body."""

    def __init__(self, status: int, detail: str, code: str = "Bad_Request") -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.code = code


@dataclass(frozen=True, slots=True)
class Features:
    """What the request switched on, read from the body and its last message."""

    # The last message's feature_config (§2.2, §3, §4.2), or None.
    feature_config: dict[str, Any] | None
    # Body chat_type, else the last message's; "search" asks for web search.
    chat_type: str | None
    is_search: bool

    def flag(self, name: str) -> Any:
        """One feature_config value, or None."""
        return None if self.feature_config is None else self.feature_config.get(name)


@dataclass(frozen=True, slots=True)
class ChatRequest:
    """The parts of a v1-path chat request that decide the answer."""

    model: str
    stream: bool
    incremental: bool
    # Text of every message, in order (directive lines included).
    texts: tuple[str, ...]
    # The last user message without directive lines: what the default answer echoes.
    user_text: str
    directive: Directive
    has_directive: bool
    features: Features

    @property
    def is_phase(self) -> bool:
        """Deltas carry phase/status only with ``output_schema: "phase"`` (§3 last paragraph)."""
        return bool(self.features.flag("output_schema") == "phase")

    @property
    def dialect(self) -> str:
        """"phase" once either §3 switch is on, else "v1"."""
        return "phase" if self.incremental or self.is_phase else "v1"


@dataclass(frozen=True, slots=True)
class V2Request:
    """The parts of a v2 completion that decide the answer (§4.2)."""

    model: str
    chat_id: str | None
    parent_id: str | None
    # The one user message's text, directive lines included (history folded in).
    user_message: str
    # Its ``fid`` if the client sent one: [I] the parent of the new response.
    user_fid: str | None
    texts: tuple[str, ...]
    user_text: str
    directive: Directive
    has_directive: bool
    features: Features


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


def _messages(body: Any) -> list[dict[str, Any]]:
    if not isinstance(body, dict):
        raise BadRequest(400, "Request body must be a JSON object")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest(400, "messages must be a non-empty list")
    if not all(isinstance(message, dict) for message in messages):
        raise BadRequest(400, "each message must be an object")
    return messages


def _model(body: dict[str, Any]) -> str:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise BadRequest(400, "model is required")
    return model


def _directive(texts: Sequence[str]) -> Directive | None:
    """The last directive line in the texts, or in the values of a translation prompt's object."""
    try:
        return parse_directive([*texts, *translation_texts(texts)])
    except DirectiveError as exc:
        raise BadRequest(400, str(exc)) from exc


def _features(body: dict[str, Any], messages: list[dict[str, Any]]) -> Features:
    last = messages[-1]
    config = last.get("feature_config")
    body_type, message_type = body.get("chat_type"), last.get("chat_type")
    chat_type = body_type if isinstance(body_type, str) else message_type
    return Features(
        feature_config=dict(config) if isinstance(config, dict) else None,
        chat_type=chat_type if isinstance(chat_type, str) else None,
        is_search="search" in (body_type, message_type),
    )


def parse_chat_request(body: Any) -> ChatRequest:
    """Check a v1-path body's shape and the directive; raise BadRequest if wrong.

    Whether the model exists is the server's call: it logs the model first.
    """
    messages = _messages(body)
    model = _model(body)
    stream = body.get("stream", False)
    incremental = body.get("incremental_output", False)
    if not isinstance(stream, bool) or not isinstance(incremental, bool):
        raise BadRequest(400, "stream and incremental_output must be booleans")
    texts = tuple(message_text(message.get("content")) for message in messages)
    directive = _directive(texts)
    users = [text for message, text in zip(messages, texts, strict=True) if message.get("role") == "user"]
    return ChatRequest(
        model=model,
        stream=stream,
        incremental=incremental,
        texts=texts,
        user_text=strip_directives(users[-1] if users else texts[-1]),
        directive=directive if directive is not None else NO_DIRECTIVE,
        has_directive=directive is not None,
        features=_features(body, messages),
    )


def parse_v2_request(body: Any) -> V2Request:
    """Check a v2 completion body: exactly one user message (§4.2 [C]).

    [I] Zero user messages is refused like two; other roles are tolerated and only
    feed the directive search. ``stream`` is not read: v2 always streams (§4.2).
    """
    messages = _messages(body)
    users = [message for message in messages if message.get("role") == "user"]
    if len(users) != 1:
        raise BadRequest(400, f"expected only one user message per request, got {len(users)}")
    model = _model(body)
    texts = tuple(message_text(message.get("content")) for message in messages)
    directive = _directive(texts)
    user_message = message_text(users[0].get("content"))
    chat_id, parent_id, fid = body.get("chat_id"), body.get("parent_id"), users[0].get("fid")
    return V2Request(
        model=model,
        chat_id=chat_id if isinstance(chat_id, str) and chat_id else None,
        parent_id=parent_id if isinstance(parent_id, str) and parent_id else None,
        user_message=user_message,
        user_fid=fid if isinstance(fid, str) and fid else None,
        texts=texts,
        user_text=strip_directives(user_message),
        directive=directive if directive is not None else NO_DIRECTIVE,
        has_directive=directive is not None,
        features=_features(body, messages),
    )
