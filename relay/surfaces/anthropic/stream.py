"""Frames → Anthropic Messages stream events (what Claude Code and the SDKs parse).

    message_start
    content_block_start / content_block_delta… / content_block_stop   (per block, in order)
    message_delta (stop_reason, stop_sequence, usage)
    message_stop

Each event has its ``event:`` line (Claude Code fails without them). Blocks
open as the answer changes kind: ``thinking`` (``thinking_delta``), ``text``
(``text_delta``), ``tool_use`` (the whole input in one ``input_json_delta``:
the pipeline emits complete calls). ``ping`` while the upstream is silent;
a fault after the head is ``event: error``, which ends the stream.
"""

from __future__ import annotations

from typing import Any

from ...errors import RelayError
from ...jsonio import dumps
from ...pipeline.frames import Frame
from .envelope import error_body
from .message import message_id, stop_reason, tool_use_id, usage_of

__all__ = ["MessagesEncoder"]

PING = b'event: ping\ndata: {"type":"ping"}\n\n'
_STOP_EVENT = b'event: message_stop\ndata: {"type":"message_stop"}\n\n'


def _event(name: bytes, data: dict[str, Any]) -> bytes:
    return b"".join((b"event: ", name, b"\ndata: ", dumps(data), b"\n\n"))


class MessagesEncoder:
    """One stream's events; ``_open`` is the kind of the block being written, if any."""

    __slots__ = ("_index", "_input_tokens", "_model", "_open")

    def __init__(self, model: str, input_tokens: int) -> None:
        self._model = model
        self._input_tokens = input_tokens
        self._index = -1
        self._open: str | None = None

    def start(self) -> bytes:
        usage = usage_of({"prompt_tokens": self._input_tokens, "completion_tokens": 0})
        return _event(b"message_start", {"type": "message_start", "message": {
            "id": message_id(), "type": "message", "role": "assistant", "model": self._model, "content": [],
            "stop_reason": None, "stop_sequence": None, "usage": usage}})

    def keep_alive(self) -> bytes:
        return PING

    def frame(self, frame: Frame) -> bytes:
        out = b""
        if frame.reasoning:
            out += self._block("thinking", {"type": "thinking", "thinking": "", "signature": ""})
            out += self._delta({"type": "thinking_delta", "thinking": frame.reasoning})
        if frame.content:
            out += self._block("text", {"type": "text", "text": ""})
            # The hot path: one text delta.
            out += b"".join((b'event: content_block_delta\ndata: {"type":"content_block_delta","index":',
                             str(self._index).encode(), b',"delta":{"type":"text_delta","text":',
                             dumps(frame.content), b"}}\n\n"))
        for call in frame.tool_calls or ():
            out += self._block("tool_use", {"type": "tool_use", "id": tool_use_id(call), "name": call.name,
                                            "input": {}}, always=True)
            out += self._delta({"type": "input_json_delta", "partial_json": call.arguments})
        return out

    async def finish(self, finish_reason: str, stop_sequence: str | None, usage: dict[str, Any]) -> bytes:
        delta = {"stop_reason": stop_reason(finish_reason, stop_sequence), "stop_sequence": stop_sequence}
        counts = usage_of(usage)
        return self._close() + _event(b"message_delta", {
            "type": "message_delta", "delta": delta,
            "usage": {"input_tokens": counts["input_tokens"], "output_tokens": counts["output_tokens"]},
        }) + _STOP_EVENT

    def error(self, exc: RelayError) -> bytes:
        return _event(b"error", error_body(exc))

    def _block(self, kind: str, block: dict[str, Any], *, always: bool = False) -> bytes:
        """Open a block of ``kind`` (closing the one before), unless one is open already."""
        if self._open == kind and not always:
            return b""
        out = self._close()
        self._index += 1
        self._open = kind
        return out + _event(b"content_block_start", {"type": "content_block_start", "index": self._index,
                                                      "content_block": block})

    def _delta(self, delta: dict[str, Any]) -> bytes:
        return _event(b"content_block_delta", {"type": "content_block_delta", "index": self._index, "delta": delta})

    def _close(self) -> bytes:
        if self._open is None:
            return b""
        self._open = None
        return _event(b"content_block_stop", {"type": "content_block_stop", "index": self._index})
