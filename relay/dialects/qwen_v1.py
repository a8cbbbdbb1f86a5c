"""Dialect ``qwen-v1``: cumulative deltas, the original Worker's protocol (§2).

``GET /api/models``; ``POST /api/chat/completions`` with ``{model, messages,
stream, max_tokens}``. Every stream delta holds the whole answer so far, so the
stream passes through ``deaccumulate``; thinking models write ``<think>…</think>``
inline, which ``split_think`` moves to reasoning.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator
from typing import Any

from ..config import Config
from ..errors import UpstreamProtocolError
from ..openai_wire import ChatRequest, usage_from_upstream
from ..pipeline import close_source, stage
from ..pipeline.deaccumulate import deaccumulate
from ..pipeline.frames import HEARTBEAT, SILENT_PAYLOAD, Frame, StreamStats
from ..pipeline.think import ThinkSplitter, split_think
from . import ChatOptions, Completion, SendJson, UpstreamCall
from .common import (
    describe_error,
    error_from_payload,
    first_choice,
    length_or_raise,
    model_entries,
    sources_text,
)
from .v1_errors import refusal
from .web_headers import LegacyHeaders

__all__ = ["RELAY_ONLY_FIELDS", "QwenV1", "upstream_messages"]

#: request fields the relay handles itself and must not forward. ``incremental_output``
#: would switch the upstream to increments (§2.2) behind ``deaccumulate``'s back.
RELAY_ONLY_FIELDS = frozenset({"stream_options", "max_completion_tokens", "incremental_output",
                               "enable_thinking", "thinking_budget", "chat_template_kwargs"})
_KNOWN_DELTA = frozenset({"role", "content"})


class QwenV1:
    name = "qwen-v1"
    models_path = "/api/models"
    refusal = staticmethod(refusal)
    chat_path = "/api/chat/completions"

    def header_set(self, origin: str, config: Config) -> LegacyHeaders:
        return LegacyHeaders(origin, config)

    def models_call(self) -> UpstreamCall:
        return UpstreamCall(self.models_path, None, method="GET", kind="models")

    async def prepare(self, request: ChatRequest, options: ChatOptions, send_json: SendJson) -> UpstreamCall:
        """Forward the client body, unknown fields included (§2.2)."""
        return UpstreamCall(self.chat_path, base_body(request, options), stream=request.stream)

    def stream_frames(self, payloads: AsyncIterable[dict[str, Any]],
                      stats: StreamStats) -> AsyncIterator[Frame]:
        return _append_sources(split_think(deaccumulate(_frames(payloads, stats), stats)), stats)

    def completion(self, payload: Any) -> Completion:
        if not isinstance(payload, dict):
            raise UpstreamProtocolError("The upstream answer is not a JSON object.")
        if "error" in payload:
            raise error_from_payload(payload["error"])
        choices = payload.get("choices")
        choice = choices[0] if isinstance(choices, list) and choices else None
        message = choice.get("message") if isinstance(choice, dict) else None
        if not isinstance(message, dict) or not isinstance(choice, dict):
            _, detail = describe_error(payload.get("detail") or payload)
            raise UpstreamProtocolError(f"The upstream answer has no choices[0].message ({detail}).")
        content = message.get("content")
        text = content if isinstance(content, str) else ""
        reasoning = ""
        if text.lstrip()[:1] == "<":  # maybe "<think>…": only then is there reasoning to split off
            splitter = ThinkSplitter()
            reasoning, text = splitter.feed(text)
            held_reasoning, held_text = splitter.flush()
            reasoning, text = reasoning + held_reasoning, text + held_text
        finish = choice.get("finish_reason")
        extra = {k: v for k, v in message.items() if k not in _KNOWN_DELTA}
        return Completion(
            content=text,
            reasoning=reasoning,
            finish_reason=finish if isinstance(finish, str) else "stop",
            usage=usage_from_upstream(payload.get("usage")),
            message_extra=extra or None,
        )

    def models(self, payload: Any) -> list[dict[str, Any]]:
        return model_entries(payload)

    def stop_call(self, call: UpstreamCall, response_id: str) -> UpstreamCall | None:
        return None  # v1 has no stop endpoint: closing the connection is the stop

    def delete_call(self, call: UpstreamCall) -> UpstreamCall | None:
        return None  # no chats are created


def upstream_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    # Qwen Chat knows no "developer" role; relays rewrite it to "system" (§2.2).
    return [{**m, "role": "system"} if m.get("role") == "developer" else m for m in messages]


def base_body(request: ChatRequest, options: ChatOptions) -> dict[str, Any]:
    """The v1-path body: the client's fields plus model, stream, thinking and search."""
    body = {k: v for k, v in request.body.items() if k not in RELAY_ONLY_FIELDS}
    body["model"] = options.upstream_model
    body["stream"] = request.stream
    messages = upstream_messages(request.messages)
    limit = request.body.get("max_completion_tokens")
    if "max_tokens" not in body and isinstance(limit, int):
        body["max_tokens"] = limit
    if options.search:
        body["chat_type"] = "search"
    if options.thinking is not None or options.search:
        last = dict(messages[-1])
        last["chat_type"] = "search" if options.search else "t2t"
        config = dict(last.get("feature_config") or {})
        if options.thinking is not None:
            config["thinking_enabled"] = options.thinking
        last["feature_config"] = config
        messages = [*messages[:-1], last]
    body["messages"] = messages
    return body


@stage
async def _frames(payloads: AsyncIterable[dict[str, Any]], stats: StreamStats) -> AsyncIterator[Frame]:
    """Normalise v1 payloads; ``content`` stays cumulative for ``deaccumulate``."""
    try:
        async for payload in payloads:
            if payload is SILENT_PAYLOAD:
                yield HEARTBEAT
                continue
            ends = payload.get("error") is not None
            frame = _frame(payload, stats)
            del payload  # nothing held while the next event is awaited (see pipeline.parse)
            if frame is not None:
                yield frame
                del frame
            if ends:
                return
    finally:
        await close_source(payloads)


def _frame(payload: dict[str, Any], stats: StreamStats) -> Frame | None:
    """One v1 payload as a frame; None when it holds nothing for the client."""
    error = payload.get("error")
    if error is not None:
        return Frame(finish_reason=length_or_raise(error))
    usage = usage_from_upstream(payload.get("usage"))
    choice = first_choice(payload)
    if choice is None:
        return Frame(usage=usage) if usage is not None else None
    delta = choice.get("delta")
    if not isinstance(delta, dict):
        delta = {}
    if delta.get("name") == "web_search":
        extra = delta.get("extra")
        info = extra.get("web_search_info") if isinstance(extra, dict) else None
        if isinstance(info, list):
            stats.sources.extend(item for item in info if isinstance(item, dict))
        return None  # not answer text: kept out of the cumulative count
    content = delta.get("content")
    finish = choice.get("finish_reason")
    extra = None
    if len(delta) > 2 or (delta and not delta.keys() <= _KNOWN_DELTA):
        extra = {k: v for k, v in delta.items() if k not in _KNOWN_DELTA} or None
    return Frame(
        content=content if isinstance(content, str) else "",
        finish_reason=finish if isinstance(finish, str) else None,
        usage=usage,
        extra=extra,
    )


@stage
async def _append_sources(frames: AsyncIterable[Frame], stats: StreamStats) -> AsyncIterator[Frame]:
    """After the answer, the web-search sources as a short list (never lost)."""
    try:
        async for frame in frames:
            if frame is HEARTBEAT:
                yield frame
                continue
            if frame.finish_reason is not None and stats.sources:
                frame.content += sources_text(stats.sources)
                stats.sources.clear()
            yield frame
    finally:
        await close_source(frames)
    if stats.sources:
        yield Frame(content=sources_text(stats.sources))
