"""What a surface is: one client API mapped onto the one pipeline.

A surface owns everything its clients see and nothing else: how their request
reads (``parse`` → a ``Turn``, the OpenAI-shaped request the pipeline runs),
how a stream is written (``encoder``: frames → bytes), how a whole answer is
written (``render``: the aggregate of the same frames → a JSON body), and its
error envelope. Admission, the gate, the deadline, retries, the credential,
the chain of stages and the access log belong to ``handlers.serve``, shared by
every surface.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from ..errors import RelayError
from ..pipeline.encode import StreamEncoder
from ..pipeline.frames import StreamStats

if TYPE_CHECKING:
    from aiohttp import web

    from ..openai_wire import ChatRequest
    from ..operator.auth import Caller
    from ..pipeline.aggregate import Aggregate
    from ..tooling import ToolPlan

__all__ = ["StreamEncoder", "Surface", "Turn"]


@dataclass(slots=True)
class Turn:
    """One client request, as a surface hands it to the pipeline."""

    #: the request in OpenAI chat form, its tools rendered into the prompt.
    plan: ToolPlan
    #: cut the answer at the first of these (``stop`` / ``stop_sequences``), applied by the relay.
    stop_sequences: tuple[str, ...] = ()
    #: the model id as the client named it (``claude-…``), when the surface mapped it to a Qwen id.
    client_model: str | None = None
    #: whatever else the surface's encoder and renderer need (Responses: its input items).
    context: Any = None

    @property
    def chat(self) -> ChatRequest:
        return self.plan.request

    @property
    def model(self) -> str:
        """The model id the client sees in answers."""
        return self.client_model or self.plan.request.model


class Surface(Protocol):
    #: names the surface in logs and metrics ("openai-chat", "anthropic", "responses").
    name: str

    def parse(self, body: Any, app: web.Application) -> Turn:
        """Validate the client's body (``InvalidRequest`` on what its API would refuse)."""

    async def prepare_turn(self, turn: Turn, app: web.Application, caller: Caller) -> None:
        """Anything the turn needs from shared state before it runs (the caller's stored response)."""

    def encoder(self, turn: Turn, stats: StreamStats, app: web.Application) -> StreamEncoder:
        """The stream encoder for ``turn``."""

    async def render(self, turn: Turn, answer: Aggregate, usage: dict[str, Any],
                     app: web.Application) -> dict[str, Any]:
        """The whole (non-stream) answer's JSON body."""

    def error_response(self, exc: RelayError) -> web.Response:
        """An error before anything was sent, in the surface's envelope and status."""

    def reasoning_in_content(self, app: web.Application) -> bool:
        """Whether thinking goes into the text as ``<think>…</think>`` (OpenAI chat's option)."""
