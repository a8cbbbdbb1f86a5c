"""Upstream dialects: how to talk to one generation of the Qwen Chat web API.

Each dialect is one small module that builds the upstream request(s) and
supplies the normalisation stages for the shared pipeline, so handlers never
branch on the dialect (§3–§5 of the protocol notes):

- ``qwen-v1``: cumulative deltas, inline ``<think>`` (Jan–Apr 2025);
- ``qwen-phase``: incremental deltas tagged with ``phase`` (May–Sep 2025);
- ``qwen-v2``: a chat is created first, one user message per call (Sep 2025 →).
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from ..openai_wire import ChatRequest
from ..pipeline.frames import Frame, StreamStats

if TYPE_CHECKING:
    from ..accounts.credential import Credential
    from ..config import Config
    from .v2_errors import Refusal

__all__ = ["DIALECTS", "ChatOptions", "Completion", "Dialect", "HeaderSet", "SendJson", "UpstreamCall",
           "get_dialect"]


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
    #: False for a model that must think (``info.meta.think_skip.enable: false``): never
    #: asked to skip thinking, the client that wanted none just sees none (§7.3).
    can_skip_thinking: bool = True
    #: thinking may run, but none of it reaches the client (OpenRouter's ``reasoning.exclude``).
    hide_reasoning: bool = False

    @property
    def shows_reasoning(self) -> bool:
        """False when the client asked for no thinking, or for none to reach it."""
        return self.thinking is not False and not self.hide_reasoning


@dataclass(frozen=True, slots=True)
class UpstreamCall:
    """One upstream request, as a dialect builds it."""

    path: str
    body: dict[str, Any] | None
    #: ask the upstream for SSE; False only for qwen-v1 non-stream answers.
    stream: bool = False
    chat_id: str | None = None
    method: str = "POST"
    #: what the call is for (``web_headers.CALL_KINDS``): decides Referer and Accept.
    kind: str = "completion"


#: send a call with the caller's credentials and return the decoded JSON answer.
SendJson = Callable[[UpstreamCall], Awaitable[Any]]


class HeaderSet(Protocol):
    def for_call(self, call: UpstreamCall, credential: Credential) -> list[tuple[str, str]]:
        """Every request header of ``call`` made with ``credential``."""


class RefusalCheck(Protocol):
    def __call__(self, status: int, headers: Mapping[str, str], content_type: str,
                 body: bytes) -> Refusal | None: ...


class Dialect(Protocol):
    name: str
    #: how this generation of the service says no (``v1_errors`` / ``v2_errors``).
    refusal: RefusalCheck

    def header_set(self, origin: str, config: Config) -> HeaderSet:
        """The builder of this dialect's request headers (``web_headers``)."""

    def models_call(self) -> UpstreamCall:
        """The model-list request."""

    async def prepare(self, request: ChatRequest, options: ChatOptions, send_json: SendJson) -> UpstreamCall:
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

    def delete_call(self, call: UpstreamCall) -> UpstreamCall | None:
        """The request that deletes the chat ``call`` answered in, if the dialect creates chats."""


def get_dialect(name: str, config: Config | None = None) -> Dialect:
    """The dialect called ``name``, set up by ``config`` when given."""
    if name not in DIALECTS:
        raise ValueError(f"unknown dialect {name!r}; expected one of {', '.join(DIALECTS)}")
    if name == "qwen-v2" and config is not None:
        return QwenV2(config.max_upstream_body_bytes)
    return DIALECTS[name]


from .qwen_phase import QwenPhase
from .qwen_v1 import QwenV1
from .qwen_v2 import QwenV2

DIALECTS: dict[str, Dialect] = {"qwen-v1": QwenV1(), "qwen-phase": QwenPhase(), "qwen-v2": QwenV2()}
