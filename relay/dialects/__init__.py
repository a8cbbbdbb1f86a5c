"""Upstream dialects: how to talk to one generation of the Qwen Chat web API.

Each dialect is one small module that builds the upstream request and supplies
the normalisation stages for the shared pipeline, so handlers never branch on
the dialect (§3–§5 of the protocol notes).
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass
from typing import Any, Protocol

from ..openai_wire import ChatRequest
from ..pipeline.frames import Frame, StreamStats

__all__ = ["DIALECTS", "Completion", "Dialect", "get_dialect"]


@dataclass(frozen=True, slots=True)
class Completion:
    """A whole (non-stream) answer, normalised."""

    content: str
    reasoning: str
    finish_reason: str
    usage: dict[str, Any] | None
    message_extra: dict[str, Any] | None = None


class Dialect(Protocol):
    name: str
    models_path: str
    chat_path: str

    def chat_body(self, request: ChatRequest) -> dict[str, Any]:
        """The upstream JSON body for this OpenAI request."""

    def stream_frames(self, payloads: AsyncIterable[dict[str, Any]],
                      stats: StreamStats) -> AsyncIterator[Frame]:
        """Upstream stream payloads → incremental frames."""

    def completion(self, payload: Any) -> Completion:
        """A non-stream upstream body → the answer."""

    def models(self, payload: Any) -> list[dict[str, Any]]:
        """The upstream model list body → its entries."""


def get_dialect(name: str) -> Dialect:
    try:
        return DIALECTS[name]
    except KeyError:
        raise ValueError(f"unknown dialect {name!r}; expected one of {', '.join(DIALECTS)}") from None


from .qwen_v1 import QwenV1

DIALECTS: dict[str, Dialect] = {"qwen-v1": QwenV1()}
