"""The one handler behind every surface: a request in, an answer out, streaming or not.

``serve(surface)`` is the aiohttp handler of a surface's route. What differs
between surfaces (their request, events, envelope) is the surface's
(``relay.surfaces``); everything else is here once: the caller, admission, the
model check, the gate, the credential, retries while nothing was sent, the
non-stream deadline, the chain (``chain.answer_frames``), the clean-up, the
metrics. The response is committed in one place, ``_Output.send``, when the
first bytes leave the encoder.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from functools import partial

from aiohttp import web
from aiohttp.typedefs import Handler

from ..accounts.credential import Credential
from ..dialects import ChatOptions
from ..errors import UpstreamChallenge, UpstreamProtocolError
from ..jsonio import dumps
from ..keys import CALLS, CONFIG, GATE, METRICS, OPERATOR
from ..middleware import INFO
from ..openai_wire import ChatRequest, estimate_usage, parse_json_body, prompt_chars, usage_for_chars
from ..operator.auth import Caller
from ..pipeline import StreamStats, aggregate, close_source
from ..pipeline.aggregate import Aggregate
from ..pipeline.encode import encode
from ..pipeline.toolcalls import MISSING_CALL
from ..surfaces.base import Surface, Turn
from ..surfaces.openai_chat import OPENAI_CHAT
from ..tooling import plan_tools
from .chain import answer_frames
from .common import caller as identify_caller
from .common import json_response, read_body
from .exchange import clean_up, count_stream_stats, gated, nonstream_deadline, until_committed, with_token
from .models import resolve_cached, resolve_request

__all__ = ["SSE_HEADERS", "complete_once", "serve"]

SSE_HEADERS = {
    "Content-Type": "text/event-stream; charset=utf-8",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",  # nginx: do not buffer this response
}
_EMPTY_ANSWER = "The upstream returned an empty answer (no text)."
#: coalesced client output is flushed at the latest at this size (bounded memory).
_COALESCE_MAX_BYTES = 64 * 1024


def serve(surface: Surface) -> Handler:
    """The handler of ``surface``'s route."""
    async def handle(request: web.Request) -> web.StreamResponse:
        info = request[INFO]
        caller = identify_caller(request)
        app = request.app
        turn = surface.parse(parse_json_body(await read_body(request)), app)
        info.model, info.stream = turn.chat.model, turn.chat.stream
        async with caller.admit(turn.chat.model, app[OPERATOR].state):  # a relay key's model, rpm, concurrency
            await surface.prepare_turn(turn, app, caller)  # may extend the conversation (a stored response)
            chat = turn.chat
            if not chat.stream:
                return await _whole(request, surface, caller, turn)
            # A stream's frames live as long as it does: no frame between this one and _stream's.
            options = resolve_cached(app, caller, chat) or await resolve_request(request, caller, chat)
            async with app[GATE].slot(app[CONFIG].timeouts.queue_s):
                return await with_token(app, caller, until_committed(app, partial(
                    _stream, request, surface, turn, options)))

    return handle


async def _whole(request: web.Request, surface: Surface, caller: Caller, turn: Turn) -> web.Response:
    """The non-stream answer, all of it within --nonstream-deadline."""
    app = request.app
    chat = turn.chat
    async with nonstream_deadline(app):
        options = resolve_cached(app, caller, chat) or await resolve_request(request, caller, chat)
        exchange = until_committed(app, partial(_aggregate, request, surface, turn, options))
        answer = await gated(request, caller, exchange)
        if turn.plan.forced and not answer.tool_calls:
            # tool_choice demanded a call and the model answered in prose: one more try.
            answer = await gated(request, caller, exchange)
            if not answer.tool_calls:
                raise UpstreamProtocolError(MISSING_CALL, code="tool_call_missing")
    if not answer.content and not answer.tool_calls and answer.finish_reason != "length":
        raise UpstreamProtocolError(_EMPTY_ANSWER, code="upstream_empty_answer")
    usage = answer.usage or estimate_usage(chat.messages, len(answer.content))
    request[INFO].note_usage(usage)
    response = await json_response(request, dumps(await surface.render(turn, answer, usage, app)))
    request[INFO].bytes_out = response.content_length or 0
    return response


async def complete_once(request: web.Request, caller: Caller, chat: ChatRequest,
                        options: ChatOptions) -> Aggregate:
    """One whole answer to ``chat``, admitted as every answer is (the translation endpoints).

    A concurrency slot (queued up to --queue-timeout, else 429), the caller's
    token or a pool credential, the retries while nothing was sent; the
    caller's ``admit`` and the ``nonstream_deadline`` around it are the caller's.
    """
    exchange = until_committed(request.app, partial(_aggregate, request, OPENAI_CHAT, Turn(plan_tools(chat)),
                                                    options))
    answer = await gated(request, caller, exchange)
    request[INFO].note_usage(answer.usage)
    return answer


async def _aggregate(request: web.Request, surface: Surface, turn: Turn, options: ChatOptions,
                     credential: Credential) -> Aggregate:
    """Ask once and read the whole answer through the chain."""
    app = request.app
    calls, config = app[CALLS], app[CONFIG]
    call = await calls.dialect.prepare(turn.chat, options, calls.sender(credential))
    challenged = False
    stats = StreamStats()
    try:
        async with calls.open(call, credential) as upstream:
            frames = answer_frames(upstream, call, calls.dialect, turn, stats, config,
                                   shows_reasoning=options.shows_reasoning,
                                   reasoning_in_content=surface.reasoning_in_content(app), streaming=False)
            try:
                return await aggregate(frames)
            finally:
                count_stream_stats(app[METRICS], stats)
    except UpstreamChallenge:
        challenged = True
        raise
    finally:
        if not challenged:  # a challenged credential rests: not even a delete goes out on it
            clean_up(app, calls, call, credential)


async def _stream(request: web.Request, surface: Surface, turn: Turn, options: ChatOptions,
                  credential: Credential) -> web.StreamResponse:
    """Send the request and relay the stream; on the way out, record metrics and stop an abandoned upstream.

    ``until_committed`` and the pool may run this again (another try, another
    credential): safe, because an error leaves here only while the response is
    unprepared; after, it is the encoder's error event.
    """
    app = request.app
    info = request[INFO]
    calls, config = app[CALLS], app[CONFIG]
    dialect = calls.dialect
    chat = turn.chat
    call = await dialect.prepare(chat, options, calls.sender(credential))
    stats = StreamStats()
    challenged = False
    try:
        async with calls.open(call, credential) as upstream:
            call = replace(call, body={})  # sent: the prompt need not live as long as the stream
            started = time.perf_counter()
            output = _Output(request, stats)
            try:
                frames = answer_frames(upstream, call, dialect, turn, stats, config,
                                       shows_reasoning=options.shows_reasoning,
                                       reasoning_in_content=surface.reasoning_in_content(app), streaming=True,
                                       before_wait=output.flush)
                usage_estimate = partial(usage_for_chars, prompt_chars(chat.messages))
                chunks = encode(frames, surface.encoder(turn, stats, app), stats, usage_estimate)
                await output.send(chunks, chat)
                return output.response
            finally:
                info.bytes_out = stats.bytes_out
                info.note_usage(stats.usage)
                info.error_code = info.error_code or stats.error_code
                info.client_gone = info.client_gone or output.client_gone
                metrics = app[METRICS]
                metrics.stream_duration.observe(time.perf_counter() - started)
                count_stream_stats(metrics, stats)
    except asyncio.CancelledError:
        info.client_gone = True  # the client left (aiohttp cancels its handler): stop what it asked for
        raise
    except UpstreamChallenge:
        challenged = True
        raise
    finally:  # also when the call was refused at its head: the chat exists
        app[METRICS].client_disconnects += info.client_gone
        if not challenged:  # a challenged credential rests: not even a delete goes out on it
            clean_up(app, calls, call, credential, stats.response_id if info.client_gone else None)


class _Output:
    """The client's side of a stream: commits it, and coalesces its writes.

    A write is a syscall and a chunked-encoding frame; events are small and
    arrive in bursts (one upstream read often holds many). ``flush`` runs before
    every upstream wait (the transport's ``before_wait``), so nothing is
    delayed, and at ``_COALESCE_MAX_BYTES`` so memory stays bounded and
    backpressure still reaches the upstream.
    """

    __slots__ = ("_pending", "_request", "_size", "_stats", "client_gone", "response")

    def __init__(self, request: web.Request, stats: StreamStats) -> None:
        self._request = request
        self._stats = stats
        self.response = web.StreamResponse(headers=SSE_HEADERS)
        self._pending: list[bytes] = []
        self._size = 0
        self.client_gone = False

    async def send(self, chunks: AsyncIterator[bytes], chat: ChatRequest) -> None:
        """Relay ``chunks``; the first one commits the 200 (the only place that does).

        An error before the first chunk leaves here unsent, for a status answer.
        """
        response = self.response
        try:
            async for data in chunks:
                if not response.prepared:
                    await response.prepare(self._request)
                    chat.release_prompt()  # committed: no retry can resend it now
                self._pending.append(data)
                self._size += len(data)
                del data  # not held while the next chunk is awaited
                if self._size >= _COALESCE_MAX_BYTES:
                    await self.flush()
            await self.flush()
            await response.write_eof()
        except ConnectionResetError:  # the client left (also just as the answer began)
            self.client_gone = True
        except asyncio.CancelledError:
            self.client_gone = True
            raise
        finally:
            await close_source(chunks)

    async def flush(self) -> None:
        if not self._pending:
            return
        data = b"".join(self._pending) if len(self._pending) > 1 else self._pending[0]
        self._pending.clear()
        self._size = 0
        await self.response.write(data)
        self._stats.bytes_out += len(data)
