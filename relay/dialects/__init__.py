"""Upstream dialects: how to talk to one generation of the Qwen Chat web API.

Each dialect is one small module that builds the upstream request(s) and
supplies the normalisation stages for the shared pipeline, so handlers never
branch on the dialect (§3–§5 of the protocol notes):

- ``qwen-v1``: cumulative deltas, inline ``<think>`` (Jan–Apr 2025);
- ``qwen-phase``: incremental deltas tagged with ``phase`` (May–Sep 2025);
- ``qwen-v2``: a chat is created first, one user message per call (Sep 2025 →).
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from ..openai_wire import ChatRequest
from ..pipeline.frames import Frame, StreamStats

__all__ = ["DIALECTS", "ChatOptions", "Completion", "Dialect", "PostJson", "UpstreamCall", "get_dialect"]


@dataclass(frozen=True, slots=True)
class Completion:
    """A whole (non-stream) answer, normalised."""

    content: str
    reasoning: str
    finish_reason: str
    usage: dict[str, Any] | None
    message_extra: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class ChatOptions:
    """What the client asked of Qwen beyond the text: model, thinking, search."""

    upstream_model: str
    #: None leaves the choice to the upstream's default for the model.
    thinking: bool | None = None
    thinking_budget: int | None = None
    search: bool = False


@dataclass(frozen=True, slots=True)
class UpstreamCall:
    """One upstream request, as a dialect builds it."""

    path: str
    body: dict[str, Any]
    #: ask the upstream for SSE; False only for qwen-v1 non-stream answers.
    stream: bool
    chat_id: str | None = None


#: POST a JSON body to a path with the caller's token and return the decoded answer.
PostJson = Callable[[str, dict[str, Any]], Awaitable[Any]]


class Dialect(Protocol):
    name: str
    models_path: str

    async def prepare(self, request: ChatRequest, options: ChatOptions, post_json: PostJson) -> UpstreamCall:
        """Build the completion request (qwen-v2 first creates a chat)."""

    def stream_frames(self, payloads: AsyncIterable[dict[str, Any]],
                      stats: StreamStats) -> AsyncIterator[Frame]:
        """Upstream stream payloads → incremental frames."""

    def completion(self, payload: Any) -> Completion:
        """A non-stream upstream body → the answer."""

    def models(self, payload: Any) -> list[dict[str, Any]]:
        """The upstream model list body → its entries."""

    def stop_call(self, call: UpstreamCall, response_id: str) -> UpstreamCall | None:
        """The request that stops generation after the client left, if the dialect has one."""


def get_dialect(name: str) -> Dialect:
    try:
        return DIALECTS[name]
    except KeyError:
        raise ValueError(f"unknown dialect {name!r}; expected one of {', '.join(DIALECTS)}") from None


from .qwen_phase import QwenPhase
from .qwen_v1 import QwenV1
from .qwen_v2 import QwenV2

DIALECTS: dict[str, Dialect] = {"qwen-v1": QwenV1(), "qwen-phase": QwenPhase(), "qwen-v2": QwenV2()}
