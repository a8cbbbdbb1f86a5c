"""Dialect ``qwen-v1``: cumulative deltas, the original Worker's protocol (§2).

``GET /api/models``; ``POST /api/chat/completions`` with ``{model, messages,
stream, max_tokens}``. Every stream delta holds the whole answer so far, so the
stream passes through ``deaccumulate``.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator
from typing import Any

from ..errors import UpstreamProtocolError
from ..openai_wire import ChatRequest, usage_from_upstream
from ..pipeline._util import closing_source
from ..pipeline.deaccumulate import deaccumulate
from ..pipeline.frames import Frame, StreamStats
from . import Completion
from .common import (
    CONTEXT_LENGTH_CODES,
    describe_error,
    error_from_payload,
    model_entries,
)

__all__ = ["QwenV1"]

#: request fields the relay handles itself and must not forward.
#: ``incremental_output`` would switch the upstream to increments (§2.2) behind the
#: back of ``deaccumulate``; this dialect is cumulative by definition.
_RELAY_ONLY = frozenset({"stream_options", "max_completion_tokens", "incremental_output"})
_KNOWN_DELTA = frozenset({"role", "content"})


class QwenV1:
    name = "qwen-v1"
    models_path = "/api/models"
    chat_path = "/api/chat/completions"

    def chat_body(self, request: ChatRequest) -> dict[str, Any]:
        """Forward the client body, unknown fields included (§2.2)."""
        body = {k: v for k, v in request.body.items() if k not in _RELAY_ONLY}
        body["model"] = request.model
        body["stream"] = request.stream
        body["messages"] = [_upstream_message(m) for m in request.messages]
        limit = request.body.get("max_completion_tokens")
        if "max_tokens" not in body and isinstance(limit, int):
            body["max_tokens"] = limit
        return body

    def stream_frames(self, payloads: AsyncIterable[dict[str, Any]],
                      stats: StreamStats) -> AsyncIterator[Frame]:
        return deaccumulate(_frames(payloads), stats)

    def completion(self, payload: Any) -> Completion:
        if not isinstance(payload, dict):
            raise UpstreamProtocolError("The upstream answer is not a JSON object.")
        if "error" in payload:
            raise error_from_payload(payload["error"])
        choices = payload.get("choices")
        choice = choices[0] if isinstance(choices, list) and choices else None
        message = choice.get("message") if isinstance(choice, dict) else None
        if not isinstance(message, dict):
            _, detail = describe_error(payload.get("detail") or payload)
            raise UpstreamProtocolError(f"The upstream answer has no choices[0].message ({detail}).")
        content = message.get("content")
        finish = choice.get("finish_reason") if isinstance(choice, dict) else None
        extra = {k: v for k, v in message.items() if k not in _KNOWN_DELTA}
        return Completion(
            content=content if isinstance(content, str) else "",
            reasoning="",
            finish_reason=finish if isinstance(finish, str) else "stop",
            usage=usage_from_upstream(payload.get("usage")),
            message_extra=extra or None,
        )

    def models(self, payload: Any) -> list[dict[str, Any]]:
        return model_entries(payload)


def _upstream_message(message: dict[str, Any]) -> dict[str, Any]:
    # Qwen Chat knows no "developer" role; relays rewrite it to "system" (§2.2).
    if message.get("role") == "developer":
        return {**message, "role": "system"}
    return message


async def _frames(payloads: AsyncIterable[dict[str, Any]]) -> AsyncIterator[Frame]:
    """Normalise v1 payloads; ``content`` stays cumulative for ``deaccumulate``."""
    async with closing_source(payloads):
        async for payload in payloads:
            error = payload.get("error")
            if error is not None:
                code, _ = describe_error(error)
                if code.lower() in CONTEXT_LENGTH_CODES:
                    yield Frame(finish_reason="length")
                    return
                raise error_from_payload(error)
            usage = usage_from_upstream(payload.get("usage"))
            choices = payload.get("choices")
            choice = choices[0] if isinstance(choices, list) and choices else None
            if not isinstance(choice, dict):
                if usage is not None:
                    yield Frame(usage=usage)
                continue
            delta = choice.get("delta")
            if not isinstance(delta, dict):
                delta = {}
            content = delta.get("content")
            finish = choice.get("finish_reason")
            extra = None
            if len(delta) > 2 or (delta and not delta.keys() <= _KNOWN_DELTA):
                extra = {k: v for k, v in delta.items() if k not in _KNOWN_DELTA} or None
            yield Frame(
                content=content if isinstance(content, str) else "",
                finish_reason=finish if isinstance(finish, str) else None,
                usage=usage,
                extra=extra,
            )
