"""Frames → the Responses API's stream events (what the openai SDK and Codex CLI parse).

Every event is ``event: <type>`` + ``data: {"type", "sequence_number", …}``,
numbered from 0. The stream opens with ``response.created`` and
``response.in_progress``; each output item is announced
(``response.output_item.added``), filled (text, reasoning summary or call
arguments deltas, then their ``.done``) and closed
(``response.output_item.done``) before the next one opens; the last event is
``response.completed`` (or ``response.incomplete`` when the answer hit the
token limit) carrying the whole response, or ``response.failed`` for a fault
after the head. There is no ``[DONE]``: OpenAI sends none on this API.

Items follow the answer as it arrives: thinking opens a ``reasoning`` item,
text a ``message`` item, each complete tool call one ``function_call`` item
(added, its arguments in one delta, done). Switching kind closes the open item,
so thinking that resumes after text opens a second reasoning item.

The answer is stored (``previous_response_id``) before ``response.completed``
goes out: a client that continues the moment it reads it must find it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from ...errors import RelayError
from ...jsonio import dumps
from ...pipeline.frames import Frame, ToolCall
from .objects import (
    LENGTH,
    function_call_item,
    message_item,
    output_text_part,
    reasoning_item,
    response_object,
    responses_usage,
)
from .request import ResponsesContext, new_item_id

__all__ = ["KEEPALIVE_COMMENT", "ResponsesEncoder", "Save"]

KEEPALIVE_COMMENT = b": keep-alive\n\n"
#: stores a finished response object (the surface's ``ResponseStore.save`` with the turn's owner and input).
Save = Callable[[dict[str, Any]], Awaitable[None]]


class ResponsesEncoder:
    """Serialise frames of one stream into Responses events; see the module docstring."""

    __slots__ = ("_context", "_delta_head", "_open", "_output", "_save", "_sequence", "_started", "_texts")

    def __init__(self, context: ResponsesContext, save: Save | None = None) -> None:
        self._context = context
        self._save = save
        self._sequence = 0
        self._started = False
        #: closed items, in output order.
        self._output: list[dict[str, Any]] = []
        #: the open item: ("message" | "reasoning", its id), or None.
        self._open: tuple[str, str] | None = None
        #: the open item's text so far, in pieces.
        self._texts: list[str] = []
        #: the open item's delta events up to the sequence number (built once per item).
        self._delta_head = b""

    # -- the StreamEncoder protocol ---------------------------------------------------

    def start(self) -> bytes:
        """``response.created`` and ``response.in_progress``, once (``frame`` makes sure of it too)."""
        if self._started:
            return b""
        self._started = True
        response = response_object(self._context, status="in_progress", output=[])
        return (self._event("response.created", {"response": response})
                + self._event("response.in_progress", {"response": response}))

    def keep_alive(self) -> bytes:
        return KEEPALIVE_COMMENT

    def frame(self, frame: Frame) -> bytes:
        out = self.start()
        if frame.reasoning:
            out += self._text("reasoning", frame.reasoning)
        if frame.content:
            out += self._text("message", frame.content)
        if frame.tool_calls:
            out += self._close()
            for call in frame.tool_calls:
                out += self._call(call)
        return out

    async def finish(self, finish_reason: str, stop_sequence: str | None, usage: dict[str, Any]) -> bytes:
        """Close the open item, store the response, then ``response.completed`` (or ``.incomplete``)."""
        incomplete = finish_reason == LENGTH
        out = self._close("incomplete" if incomplete else "completed")
        response = response_object(self._context, status="incomplete" if incomplete else "completed",
                                   output=self._output, usage=responses_usage(usage),
                                   incomplete_reason="max_output_tokens" if incomplete else None)
        if self._save is not None:
            await self._save(response)
        kind = "response.incomplete" if incomplete else "response.completed"
        return out + self._event(kind, {"response": response})

    def error(self, exc: RelayError) -> bytes:
        """``response.failed``: the items so far (an open one ``incomplete``) and the error."""
        output = list(self._output)
        if self._open is not None:
            output.append(self._item(self._open, "".join(self._texts), "incomplete"))
        code = exc.envelope()["error"]["code"] or "server_error"
        response = response_object(self._context, status="failed", output=output,
                                   error={"code": code, "message": exc.message})
        return self._event("response.failed", {"response": response})

    # -- items ----------------------------------------------------------------------

    def _text(self, kind: str, text: str) -> bytes:
        """A text or reasoning delta, opening its item first when another kind is open."""
        out = b""
        if self._open is None or self._open[0] != kind:
            out = self._close() + self._begin(kind)
        self._texts.append(text)
        sequence = self._sequence
        self._sequence += 1
        return out + b"".join((self._delta_head, str(sequence).encode(), b',"delta":', dumps(text),
                               b'}\n\n' if kind == "reasoning" else b',"logprobs":[]}\n\n'))

    def _begin(self, kind: str) -> bytes:
        item_id = new_item_id("msg" if kind == "message" else "rs")
        self._open = (kind, item_id)
        self._texts = []
        index = len(self._output)
        where = {"item_id": item_id, "output_index": index}
        if kind == "message":
            out = self._event("response.output_item.added", {"output_index": index, "item": {
                "id": item_id, "type": "message", "status": "in_progress", "role": "assistant", "content": []}})
            out += self._event("response.content_part.added",
                               {**where, "content_index": 0, "part": output_text_part("")})
            delta_type, index_field = b"response.output_text.delta", b',"content_index":0'
        else:
            out = self._event("response.output_item.added", {"output_index": index, "item": {
                "id": item_id, "type": "reasoning", "status": "in_progress", "summary": []}})
            out += self._event("response.reasoning_summary_part.added",
                               {**where, "summary_index": 0, "part": {"type": "summary_text", "text": ""}})
            delta_type, index_field = b"response.reasoning_summary_text.delta", b',"summary_index":0'
        self._delta_head = b"".join((
            b"event: ", delta_type, b'\ndata: {"type":"', delta_type, b'","item_id":', dumps(item_id),
            b',"output_index":', str(index).encode(), index_field, b',"sequence_number":'))
        return out

    def _close(self, status: str = "completed") -> bytes:
        """The open item's ``.done`` events, and the item into the output."""
        if self._open is None:
            return b""
        kind, item_id = self._open
        text = "".join(self._texts)
        where = {"item_id": item_id, "output_index": len(self._output)}
        if kind == "message":
            out = (self._event("response.output_text.done", {**where, "content_index": 0, "text": text,
                                                             "logprobs": []})
                   + self._event("response.content_part.done",
                                 {**where, "content_index": 0, "part": output_text_part(text)}))
        else:
            part = {"type": "summary_text", "text": text}
            out = (self._event("response.reasoning_summary_text.done", {**where, "summary_index": 0, "text": text})
                   + self._event("response.reasoning_summary_part.done", {**where, "summary_index": 0,
                                                                          "part": part}))
        item = self._item(self._open, text, status)
        out += self._event("response.output_item.done", {"output_index": len(self._output), "item": item})
        self._output.append(item)
        self._open, self._texts = None, []
        return out

    def _item(self, opened: tuple[str, str], text: str, status: str) -> dict[str, Any]:
        kind, item_id = opened
        return message_item(item_id, text, status) if kind == "message" else reasoning_item(item_id, text, status)

    def _call(self, call: ToolCall) -> bytes:
        """One complete call: added, its arguments in one delta, done."""
        item_id = new_item_id("fc")
        index = len(self._output)
        names = self._context.names
        where = {"item_id": item_id, "output_index": index}
        out = self._event("response.output_item.added", {"output_index": index, "item": function_call_item(
            item_id, call, names, status="in_progress", arguments="")})
        out += self._event("response.function_call_arguments.delta", {**where, "delta": call.arguments})
        out += self._event("response.function_call_arguments.done", {**where, "arguments": call.arguments})
        item = function_call_item(item_id, call, names)
        out += self._event("response.output_item.done", {"output_index": index, "item": item})
        self._output.append(item)
        return out

    def _event(self, kind: str, fields: dict[str, Any]) -> bytes:
        data = dumps({"type": kind, "sequence_number": self._sequence, **fields})
        self._sequence += 1
        return b"".join((b"event: ", kind.encode(), b"\ndata: ", data, b"\n\n"))
