"""POST /v1/chat/completions, streaming and not."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from functools import partial
from typing import TypeVar

from aiohttp import web

from ..accounts.credential import Credential
from ..config import Config
from ..dialects import ChatOptions, Completion, Dialect
from ..errors import (
    RelayError,
    UpstreamChallenge,
    UpstreamProtocolError,
)
from ..jsonio import dumps
from ..keys import CALLS, CONFIG, GATE, METRICS, OPERATOR
from ..middleware import INFO, RequestInfo
from ..openai_wire import (
    ChatRequest,
    completion_object,
    estimate_usage,
    new_completion_id,
    now,
    parse_chat_request,
    parse_json_body,
    prompt_chars,
    usage_for_chars,
)
from ..operator.auth import Caller
from ..pipeline import (
    Frame,
    SseEncoder,
    StreamStats,
    aggregate,
    close_source,
    encode_sse,
    stage,
    upstream_payloads,
)
from ..pipeline.think import THINK_CLOSE, THINK_OPEN, drop_reasoning, reasoning_as_content
from ..pipeline.toolcalls import ToolCall, ToolCallParser, extract_tool_calls, tool_calls_json
from ..tooling import ToolPlan, plan_tools
from ..upstream import UpstreamResponse
from .common import caller as identify_caller
from .common import json_response, read_body
from .exchange import clean_up, count_stream_stats, gated, nonstream_deadline, until_committed, with_token
from .models import resolve_cached, resolve_request

__all__ = ["chat_completions", "complete_once"]

T = TypeVar("T")
_log = logging.getLogger("relay.upstream")

SSE_HEADERS = {
    "Content-Type": "text/event-stream; charset=utf-8",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",  # nginx: do not buffer this response
}
_EMPTY_ANSWER = "The upstream returned an empty answer (no text)."
_MISSING_CALL = ("tool_choice required a tool call, but the model answered without one "
                 "(the non-stream path retries once).")
KEEPALIVE_COMMENT = b": keep-alive\n\n"
#: coalesced client output is flushed at the latest at this size (bounded memory).
_COALESCE_MAX_BYTES = 64 * 1024


async def chat_completions(request: web.Request) -> web.StreamResponse:
    info = request[INFO]
    caller = identify_caller(request)
    plan = plan_tools(parse_chat_request(parse_json_body(await read_body(request))))
    chat = plan.request
    info.model, info.stream = chat.model, chat.stream
    app = request.app
    async with caller.admit(chat.model, app[OPERATOR].state):  # a relay key's model, rpm, concurrency
        if not chat.stream:
            return await _complete(request, info, caller, plan)
        # A stream's frames live as long as it does: no frame between this one and _stream's.
        options = resolve_cached(app, caller, chat) or await resolve_request(request, caller, chat)
        async with app[GATE].slot(app[CONFIG].timeouts.queue_s):
            return await with_token(app, caller, until_committed(app, partial(_stream, request, info, plan,
                                                                                 options)))


async def _complete(request: web.Request, info: RequestInfo, caller: Caller, plan: ToolPlan) -> web.Response:
    """The non-stream answer, all of it within --nonstream-deadline."""
    chat = plan.request
    app = request.app
    async with nonstream_deadline(app):
        options = resolve_cached(app, caller, chat) or await resolve_request(request, caller, chat)
        exchange = until_committed(app, partial(_exchange_completion, request, info, chat, options))
        completion = await gated(request, caller, exchange)
        text, calls = _split_calls(completion.content, plan)
        if plan.forced and not calls:
            # tool_choice demanded a call and the model answered in prose: one more try.
            completion = await gated(request, caller, exchange)
            text, calls = _split_calls(completion.content, plan)
            if not calls:
                raise UpstreamProtocolError(_MISSING_CALL, code="tool_call_missing")
    return await _completion_response(request, info, chat, options, completion, text, calls)


async def complete_once(request: web.Request, caller: Caller, chat: ChatRequest,
                        options: ChatOptions) -> Completion:
    """One whole (non-stream) answer to ``chat``, admitted as every chat completion is.

    The same path as ``_complete``: a concurrency slot for the call (queued up to
    --queue-timeout, else 429), the caller's token or a pool credential
    (``with_token``), the retries while nothing reached the client
    (``until_committed``). For callers that make their own requests of the
    model, the translation endpoints; the caller's ``admit`` and the
    ``nonstream_deadline`` around it are theirs to hold.
    """
    exchange = until_committed(request.app, partial(_exchange_completion, request, request[INFO], chat, options))
    return await gated(request, caller, exchange)


def _split_calls(text: str, plan: ToolPlan) -> tuple[str, list[ToolCall]]:
    """Tool-call blocks out of a whole answer (the non-stream path)."""
    if not plan.specs:
        return text, []
    parser = ToolCallParser(plan.specs)
    pieces = parser.feed(text) + parser.flush()
    calls = [piece for piece in pieces if isinstance(piece, ToolCall)]
    return "".join(piece for piece in pieces if isinstance(piece, str)), calls


async def _exchange_completion(request: web.Request, info: RequestInfo, chat: ChatRequest,
                               options: ChatOptions, credential: Credential) -> Completion:
    app = request.app
    calls = app[CALLS]
    call = await calls.dialect.prepare(chat, options, calls.sender(credential))
    challenged = False
    try:
        async with calls.open(call, credential) as upstream:
            info.upstream_attempts = upstream.attempts
            return await _read_completion(request, upstream, calls.dialect)
    except UpstreamChallenge:
        challenged = True
        raise
    finally:
        if not challenged:  # a challenged credential rests: not even a delete goes out on it
            clean_up(app, calls, call, credential)


async def _completion_response(request: web.Request, info: RequestInfo, chat: ChatRequest,
                               options: ChatOptions, completion: Completion, text: str,
                               calls: list[ToolCall]) -> web.Response:
    if not text and not calls and completion.finish_reason != "length":
        raise UpstreamProtocolError(_EMPTY_ANSWER, code="upstream_empty_answer")
    content, reasoning = text, completion.reasoning
    if not options.shows_reasoning:
        reasoning = ""  # the client turned thinking off (or hid it): none of it, in any field
    if reasoning and request.app[CONFIG].reasoning_in_content:
        content, reasoning = f"{THINK_OPEN}{reasoning}{THINK_CLOSE}\n\n{content}", ""
    usage = completion.usage or estimate_usage(chat.messages, len(completion.content))
    finish = completion.finish_reason
    if calls and finish == "stop":
        finish = "tool_calls"
    body = completion_object(
        completion_id=new_completion_id(), created=now(), model=chat.model,
        content=content if content or not calls else None, reasoning=reasoning, finish_reason=finish,
        usage=usage, message_extra=completion.message_extra,
        tool_calls=tool_calls_json(calls) if calls else None,
    )
    response = await json_response(request, dumps(body))
    info.bytes_out = response.content_length or 0
    return response


async def _read_completion(request: web.Request, upstream: UpstreamResponse, dialect: Dialect) -> Completion:
    max_bytes = request.app[CONFIG].limits.max_line_bytes
    if upstream.content_type != "text/event-stream":
        return dialect.completion(await upstream.read_json(max_bytes))
    # The upstream streams (qwen-v2 always does): aggregate the stream.
    stats = StreamStats()
    frames = dialect.stream_frames(upstream_payloads(upstream.iter_bytes(), max_bytes, stats), stats)
    try:
        answer = await aggregate(frames)
    finally:
        count_stream_stats(request.app[METRICS], stats)
    return Completion(answer.content, answer.reasoning, answer.finish_reason or "stop", answer.usage)


async def _stream(request: web.Request, info: RequestInfo, plan: ToolPlan, options: ChatOptions,
                  credential: Credential) -> web.StreamResponse:
    """Send the request and relay the stream; on the way out, record metrics and stop an abandoned upstream.

    Pool mode may run this again on another token after a 401/403/429: safe,
    because an error leaves here only while the response is unprepared (later
    errors become SSE error events). One coroutine from the upstream call to the
    last write: each frame more would live, and weigh, as long as the stream.
    """
    app = request.app
    calls, config = app[CALLS], app[CONFIG]
    dialect = calls.dialect
    chat = plan.request
    call = await dialect.prepare(chat, options, calls.sender(credential))
    stats = StreamStats()
    challenged = False
    try:
        async with calls.open(call, credential) as upstream:
            call = replace(call, body={})  # sent: the prompt need not live as long as the stream
            info.upstream_attempts = upstream.attempts
            started = time.perf_counter()
            try:
                if upstream.content_type == "application/json":
                    # An error body with a 2xx status, where a stream was expected.
                    dialect.completion(await upstream.read_json(config.limits.max_line_bytes))
                    raise UpstreamProtocolError("The upstream answered one JSON body where a stream was expected.")
                response = web.StreamResponse(headers=SSE_HEADERS)
                output = _Coalescer(request, response, stats)
                frames = _client_frames(upstream, dialect, plan, stats, output, config, not options.shows_reasoning)
                try:
                    rest: AsyncIterator[Frame] = frames
                    try:
                        first = await _first_substantial(frames)  # errors so far still get a JSON status
                    except RelayError as exc:
                        if not response.prepared:
                            raise  # nothing sent yet: relay_route answers with the right status
                        first, rest = None, _raising(exc)  # a keep-alive already committed the 200
                    except ConnectionResetError:
                        info.client_gone = True
                        return response
                    if not response.prepared and (first is None or _ends_empty(first)):
                        raise UpstreamProtocolError(_EMPTY_ANSWER, code="upstream_empty_answer")
                    if not response.prepared:
                        try:
                            await response.prepare(request)
                        except ConnectionResetError:  # the client left just as the answer began
                            info.client_gone = True
                            return response
                    # Committed: no retry can resend the prompt now, so it need not live as long as the stream.
                    usage_estimate = partial(usage_for_chars, prompt_chars(chat.messages))
                    chat.release_prompt()
                    encoder = SseEncoder(completion_id=new_completion_id(), created=now(), model=chat.model,
                                         include_usage=chat.include_usage, stats=stats)
                    chunks = encode_sse(rest, encoder, usage_estimate, first)
                    first = None  # the encoder has it
                    try:
                        async for data in chunks:
                            await output.add(data)
                            del data  # not held while the next chunk is awaited
                        await output.flush()
                        await response.write_eof()
                    except (ConnectionResetError, asyncio.CancelledError) as exc:
                        info.client_gone = True
                        if isinstance(exc, asyncio.CancelledError):
                            raise
                        return response
                    finally:
                        await close_source(chunks)
                finally:
                    await close_source(frames)
                return response
            finally:
                info.bytes_out = stats.bytes_out
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


def _client_frames(upstream: UpstreamResponse, dialect: Dialect, plan: ToolPlan, stats: StreamStats,
                   output: _Coalescer, config: Config, no_reasoning: bool) -> AsyncIterator[Frame]:
    """The stage chain from upstream bytes to the frames the client gets."""
    body = upstream.iter_bytes(output.keep_alive, config.timeouts.keepalive_s, output.flush)
    payloads = upstream_payloads(body, config.limits.max_line_bytes, stats)
    frames = dialect.stream_frames(payloads, stats)
    if plan.specs:
        frames = extract_tool_calls(frames, plan.specs)
        if plan.forced:
            frames = _require_tool_call(frames)
    if no_reasoning:
        frames = drop_reasoning(frames)
    elif config.reasoning_in_content:
        frames = reasoning_as_content(frames)
    return frames


class _Coalescer:
    """Client output gathered until the pipeline is about to wait on the network
    (and the keep-alive comments written while it waits).

    A write is a syscall and a chunked-encoding frame; SSE events are small and
    arrive in bursts (one upstream read often holds many). ``flush`` runs before
    every upstream wait, so nothing is delayed, and at ``_COALESCE_MAX_BYTES`` so
    memory stays bounded and backpressure still reaches the upstream.
    """

    __slots__ = ("_pending", "_request", "_response", "_size", "_stats")

    def __init__(self, request: web.Request, response: web.StreamResponse, stats: StreamStats) -> None:
        self._request = request
        self._response = response
        self._stats = stats
        self._pending: list[bytes] = []
        self._size = 0

    async def add(self, data: bytes) -> None:
        self._pending.append(data)
        self._size += len(data)
        if self._size >= _COALESCE_MAX_BYTES:
            await self.flush()

    async def keep_alive(self) -> None:
        """The upstream was silent for --keepalive-interval: tell the client we are alive.

        Commits the 200 if not yet done (long thinking before the first frame).
        Nothing is pending here: the reader flushed before it began to wait.
        """
        if not self._response.prepared:
            await self._response.prepare(self._request)
        await self._response.write(KEEPALIVE_COMMENT)
        self._stats.bytes_out += len(KEEPALIVE_COMMENT)

    async def flush(self) -> None:
        if not self._pending:
            return
        data = b"".join(self._pending) if len(self._pending) > 1 else self._pending[0]
        self._pending.clear()
        self._size = 0
        await self._response.write(data)
        self._stats.bytes_out += len(data)


async def _first_substantial(frames: AsyncIterator[Frame]) -> Frame | None:
    """The first frame that carries more than usage; its usage is the latest seen.

    qwen-v2 puts running usage on frames with no text: they must not count as the
    start of the answer, or an empty answer would commit a 200 before failing.
    """
    usage = None
    async for frame in frames:
        if frame.content or frame.reasoning or frame.tool_calls or frame.finish_reason or frame.extra:
            if frame.usage is None:
                frame.usage = usage
            return frame
        usage = frame.usage or usage
    return None


def _ends_empty(frame: Frame) -> bool:
    """The first frame already ends the answer, and there is nothing in it."""
    return (frame.finish_reason not in (None, "length") and not frame.content and not frame.reasoning
            and not frame.tool_calls)


@stage
async def _require_tool_call(frames: AsyncIterator[Frame]) -> AsyncIterator[Frame]:
    """tool_choice required a call: a stream that ends without one ends with an error event.

    A stream cannot be retried once bytes went out, so the client is told plainly.
    """
    called = False
    try:
        async for frame in frames:
            called = called or bool(frame.tool_calls)
            if frame.finish_reason is not None and not called:
                raise UpstreamProtocolError(_MISSING_CALL, code="tool_call_missing")
            yield frame
    finally:
        await close_source(frames)
    if not called:
        raise UpstreamProtocolError(_MISSING_CALL, code="tool_call_missing")


@stage
async def _raising(error: RelayError) -> AsyncIterator[Frame]:
    """A frame source that fails at once, so ``encode_sse`` renders the error event."""
    raise error
    yield  # pragma: no cover  (makes this an async generator)
