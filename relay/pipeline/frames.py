"""The values that flow between pipeline stages."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["HEARTBEAT", "SILENT_CHUNK", "SILENT_PAYLOAD", "Frame", "StreamStats", "ToolCall"]


@dataclass(frozen=True, slots=True)
class ToolCall:
    """One complete function call the model made, ready for ``delta.tool_calls``.

    Defined here, beside ``Frame`` which carries it, and re-exported by
    ``toolcalls.py`` (the stage that makes them), so the import graph stays one-way.
    """

    #: 0, 1, 2… in order of appearance within the answer (OpenAI's ``tool_calls[].index``).
    index: int
    #: ``"call_"`` + 24 hex characters, unique per call.
    id: str
    name: str
    #: The arguments object as compact JSON text (``ensure_ascii=False``).
    arguments: str


@dataclass(slots=True)
class Frame:
    """One upstream event, normalised: text so far or new text, plus metadata.

    ``content`` is cumulative until ``deaccumulate`` has run (qwen-v1), then
    incremental; ``extra`` carries delta fields we do not know, so they reach the
    client instead of being dropped. ``tool_calls`` (set by ``extract_tool_calls``)
    come after the frame's ``content`` in the answer.
    """

    content: str = ""
    reasoning: str = ""
    finish_reason: str | None = None
    usage: dict[str, Any] | None = None
    extra: dict[str, Any] | None = None
    tool_calls: list[ToolCall] | None = None
    #: set with ``finish_reason`` "stop" when the relay cut the text at one of the client's stop sequences.
    stop_sequence: str | None = None


# The upstream was silent for --keepalive-interval. Silence is noticed where the
# bytes are read (``UpstreamResponse.iter_bytes``, the one place that knows the
# network is quiet) and travels down the chain as a marker, compared by
# identity, in each stage's own currency: bytes, then a payload, then a frame.
# Every stage passes it on untouched; the surface's encoder turns it into a
# keep-alive its client understands (an SSE comment, Anthropic's ``ping``).
#: the marker among upstream byte chunks.
SILENT_CHUNK: bytes = bytes(bytearray(b"\0silence"))
#: the marker among decoded payloads.
SILENT_PAYLOAD: dict[str, Any] = {}
#: the marker among frames; never mutated.
HEARTBEAT: Frame = Frame()


@dataclass(slots=True)
class StreamStats:
    """Per-request counters the stages fill in, read by the access log and metrics."""

    events: int = 0
    comments: int = 0
    garbage: int = 0
    divergences: int = 0
    #: frames of a second candidate response, dropped (§7.4: only the first is followed).
    foreign_frames: int = 0
    #: frames of an unknown or non-answer phase (``code_interpreter``, …), dropped (§7.4).
    dropped_phase_frames: int = 0
    content_chars: int = 0
    reasoning_chars: int = 0
    #: tool calls sent (``delta.tool_calls`` entries) and their name + arguments characters.
    tool_calls: int = 0
    tool_call_chars: int = 0
    bytes_out: int = 0
    #: the usage the client was told at the end of the stream (the upstream's, else the estimate).
    usage: dict[str, Any] | None = None
    #: the code of the error event that ended the stream, if one did.
    error_code: str | None = None
    #: the followed response's id (qwen-v2's first ``response.created``), needed to stop generation.
    response_id: str | None = None
    #: web-search results seen so far (qwen-v1), appended to the answer at its end.
    sources: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
