"""Dialect ``qwen-phase``: v1 paths, incremental deltas tagged with ``phase`` (§3).

The body adds ``incremental_output: true`` and, on the last message,
``feature_config.output_schema: "phase"`` — without it the upstream omits the
``phase`` key and thinking cannot be told from the answer (§3, Qwen2API issue of
2026-07). The answer is always streamed from upstream and aggregated for
non-stream clients, so thinking is separated the same way in both.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator
from typing import Any

from ..config import Config
from ..errors import UpstreamProtocolError
from ..openai_wire import ChatRequest
from ..pipeline.frames import Frame, StreamStats
from . import ChatOptions, Completion, SendJson, UpstreamCall
from .common import model_entries
from .phased import phase_frames
from .qwen_v1 import base_body
from .v1_errors import payload_error, refusal
from .web_headers import LegacyHeaders

__all__ = ["DEFAULT_THINKING_BUDGET", "QwenPhase"]

#: the web app's budget in mid-2025 [C]; a request's ``thinking_budget`` replaces it.
DEFAULT_THINKING_BUDGET = 38912


class QwenPhase:
    name = "qwen-phase"
    models_path = "/api/models"
    refusal = staticmethod(refusal)
    chat_path = "/api/chat/completions"

    def header_set(self, origin: str, config: Config) -> LegacyHeaders:
        return LegacyHeaders(origin, config)

    def models_call(self) -> UpstreamCall:
        return UpstreamCall(self.models_path, None, method="GET", kind="models")

    async def prepare(self, request: ChatRequest, options: ChatOptions, send_json: SendJson) -> UpstreamCall:
        body = base_body(request, options)
        body["stream"] = True
        body["incremental_output"] = True
        last = dict(body["messages"][-1])
        config = dict(last.get("feature_config") or {})
        config.update({
            "thinking_enabled": bool(options.thinking),
            "output_schema": "phase",
            "thinking_budget": options.thinking_budget or DEFAULT_THINKING_BUDGET,
        })
        last["feature_config"] = config
        body["messages"] = [*body["messages"][:-1], last]
        return UpstreamCall(self.chat_path, body, stream=True)

    def stream_frames(self, payloads: AsyncIterable[dict[str, Any]],
                      stats: StreamStats) -> AsyncIterator[Frame]:
        return phase_frames(payloads, stats, payload_error)

    def completion(self, payload: Any) -> Completion:
        raise UpstreamProtocolError("qwen-phase answers are always streamed; got one JSON body.")

    def models(self, payload: Any) -> list[dict[str, Any]]:
        return model_entries(payload)

    def stop_call(self, call: UpstreamCall, response_id: str) -> UpstreamCall | None:
        return None

    def delete_call(self, call: UpstreamCall) -> UpstreamCall | None:
        return None  # no chats are created
