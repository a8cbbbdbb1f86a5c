"""A real aiohttp server speaking Qwen Chat's ``qwen-v1`` dialect, with faults.

Request flow: log the request → check the token → validate the body → read the
directive → decide whether its fault applies (``fail_times``) → answer: an error
response, a JSON completion, or a planned SSE stream played back step by step.

Disconnects: an app started by :func:`start_emulator` (and pytest-aiohttp's test
server) runs with ``handler_cancellation=True``, so a client that goes away cancels
the handler at once. Stalls also poll the transport, so they end promptly under a
runner without that flag. Either way the record is updated before
``CancelledError`` propagates; cancellation is never swallowed.
"""

from __future__ import annotations

import asyncio
import functools
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Self

from aiohttp import web

from relay.emulator.catalogue import models_payload
from relay.emulator.config import EmulatorConfig
from relay.emulator.faults import (
    HTTP_FAULTS,
    SLOW_DRIBBLE_DELAY_MS,
    UNAUTHORIZED_DETAIL,
    http_fault,
)
from relay.emulator.playback import abort, is_peer_gone, play_stream, stall
from relay.emulator.request import BadRequest, ChatRequest, parse_chat_request
from relay.emulator.script import (
    IN_STREAM_ERROR,
    build_answer,
    completion_body,
    event_texts,
    plan_stream,
    usage_counts,
)
from relay.emulator.state import EmulatorState, RequestRecord

__all__ = ["EMULATOR_STATE", "RunningEmulator", "make_emulator_app", "start_emulator"]

EMULATOR_STATE: web.AppKey[EmulatorState] = web.AppKey("emulator_state", EmulatorState)
_CONFIG: web.AppKey[EmulatorConfig] = web.AppKey("emulator_config", EmulatorConfig)
_HANDLERS: web.AppKey[set[asyncio.Task[Any]]] = web.AppKey("emulator_handlers", set)

# Chat histories with inline images get large; aiohttp's 1 MiB default would 413 them.
MAX_BODY_BYTES = 32 * 1024 * 1024
# Backstop only: open chat handlers are cancelled on shutdown (_cancel_handlers), so
# streams stalled "forever" never hold close() for aiohttp's default 60 s.
SHUTDOWN_TIMEOUT_S = 1.0
# Real UTF-8 rather than \u escapes, as the service sends.
_dumps = functools.partial(json.dumps, ensure_ascii=False)


def make_emulator_app(config: EmulatorConfig | None = None) -> web.Application:
    """Build the emulator app; its state is ``app[EMULATOR_STATE]``."""
    app = web.Application(client_max_size=MAX_BODY_BYTES)
    app[_CONFIG] = config if config is not None else EmulatorConfig()
    app[EMULATOR_STATE] = EmulatorState()
    app[_HANDLERS] = set()
    app.on_shutdown.append(_cancel_handlers)
    app.router.add_get("/api/models", _models)
    app.router.add_post("/api/chat/completions", _chat)
    app.router.add_get("/_emulator/log", _log)
    app.router.add_post("/_emulator/reset", _reset)
    return app


@dataclass(slots=True)
class RunningEmulator:
    """An emulator listening on a real socket; close it when done."""

    url: str
    state: EmulatorState
    _runner: web.AppRunner = field(repr=False)

    async def close(self) -> None:
        """Stop listening; streams still open are cancelled after a short grace."""
        await self._runner.cleanup()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


async def start_emulator(
    config: EmulatorConfig | None = None, host: str = "127.0.0.1", port: int = 0
) -> RunningEmulator:
    """Serve the emulator on ``host:port`` (0 = any free port) in this event loop."""
    app = make_emulator_app(config)
    runner = web.AppRunner(
        app,
        handler_cancellation=True,
        shutdown_timeout=SHUTDOWN_TIMEOUT_S,
        access_log=None,  # the relay's own logs are the ones worth reading
    )
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except BaseException:
        await runner.cleanup()
        raise
    bound_port = runner.addresses[0][1]
    shown_host = f"[{host}]" if ":" in host else host
    url = f"http://{shown_host}:{bound_port}"
    return RunningEmulator(url, app[EMULATOR_STATE], runner)


async def _cancel_handlers(app: web.Application) -> None:
    """End chat handlers still running when the server shuts down.

    A stalled stream would otherwise hold the shutdown for the whole grace
    period; an emulator has nothing worth finishing gracefully.
    """
    for task in app[_HANDLERS]:
        task.cancel()


def _token(request: web.Request) -> str | None:
    """Read the Bearer token, or the web app's ``token`` cookie as a fallback (§1)."""
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return request.cookies.get("token") or None


def _is_authorized(token: str | None, config: EmulatorConfig) -> bool:
    if not token or token in config.expired_tokens:
        return False
    return config.valid_tokens is None or token in config.valid_tokens


def _respond(record: RequestRecord, status: int, payload: Any) -> web.Response:
    record.status = status
    return web.json_response(payload, status=status, dumps=_dumps)


def _detail(record: RequestRecord, status: int, message: str) -> web.Response:
    """Answer in the Open-WebUI error shape the v1 service uses (§2.5)."""
    return _respond(record, status, {"detail": message})


async def _models(request: web.Request) -> web.Response:
    state, config = request.app[EMULATOR_STATE], request.app[_CONFIG]
    token = _token(request)
    record = state.begin(request.method, request.path, token)
    record.finished = True
    if not _is_authorized(token, config):
        return _detail(record, 401, UNAUTHORIZED_DETAIL)
    return _respond(record, 200, models_payload(config.models))


async def _log(request: web.Request) -> web.Response:
    log = request.app[EMULATOR_STATE].log
    return web.json_response([record.to_json() for record in log], dumps=_dumps)


async def _reset(request: web.Request) -> web.Response:
    request.app[EMULATOR_STATE].reset()
    return web.json_response({"ok": True})


async def _chat(request: web.Request) -> web.StreamResponse:
    state = request.app[EMULATOR_STATE]
    token = _token(request)
    record = state.begin(request.method, request.path, token)
    handlers, task = request.app[_HANDLERS], asyncio.current_task()
    assert task is not None  # aiohttp runs every handler in a task
    handlers.add(task)
    try:
        return await _answer(request, state, record, token)
    except asyncio.CancelledError:
        if is_peer_gone(request) and not record.client_disconnected:
            state.client_gone(record)
        raise
    finally:
        record.finished = True
        handlers.discard(task)


async def _answer(
    request: web.Request, state: EmulatorState, record: RequestRecord, token: str | None
) -> web.StreamResponse:
    config = request.app[_CONFIG]
    if not _is_authorized(token, config):
        return _detail(record, 401, UNAUTHORIZED_DETAIL)
    try:
        body = json.loads(await request.read())
    except ValueError:
        return _detail(record, 400, "Request body is not valid JSON")
    try:
        chat = parse_chat_request(body)
    except BadRequest as exc:
        return _detail(record, exc.status, exc.detail)
    record.model, record.stream = chat.model, chat.stream
    if chat.model not in config.models:
        return _detail(record, 404, "Model not found")
    fault = _applied_fault(state, record, chat)
    directive = chat.directive
    try:
        if directive.ttfb_ms > 0:
            await stall(request, directive.ttfb_ms / 1000)
        # Without a stream there are no headers to send first: every stall waits here.
        is_late_stall = fault in ("stall_headers", "stall_mid")
        if fault == "stall_before" or (is_late_stall and not chat.stream):
            await stall(request, directive.stall_s)
    except ConnectionResetError:
        state.client_gone(record)
        return web.Response(status=204)  # never delivered: nobody is listening
    if fault in HTTP_FAULTS:
        return _fault_response(record, fault, chat)
    if not chat.stream:
        return await _complete(request, record, fault, chat)
    answer = build_answer(directive, chat.user_text, config.default_chunks)
    delay_ms = directive.delay_ms
    if delay_ms is None:
        is_slow = fault == "slow_dribble"
        delay_ms = SLOW_DRIBBLE_DELAY_MS if is_slow else config.default_delay_ms
    events = event_texts(
        answer,
        incremental=chat.incremental,
        repeat_identical=directive.repeat_identical,
        rewrite=directive.rewrite,
    )
    # Usage in stream chunks is unconfirmed for v1 (§2.3): sent only on request.
    usage = usage_counts("\n".join(chat.texts), answer.text) if directive.usage is True else None
    steps = plan_stream(
        events, directive, fault=fault, delay_s=delay_ms / 1000, incremental=chat.incremental, usage=usage
    )
    return await play_stream(request, state, record, steps, directive.split)


def _applied_fault(state: EmulatorState, record: RequestRecord, chat: ChatRequest) -> str | None:
    """Count the attempt and return the fault if ``fail_times`` still allows it."""
    if not chat.has_directive:
        return None
    directive = chat.directive
    record.directive = dict(directive.source)
    record.attempt = state.count_attempt(directive.counter_key())
    limit = directive.fail_times
    if directive.fault is None or (limit is not None and record.attempt > limit):
        return None
    record.fault = directive.fault
    return directive.fault


def _fault_response(record: RequestRecord, fault: str, chat: ChatRequest) -> web.Response:
    spec = http_fault(fault, chat.directive.retry_after)
    headers = dict(spec.headers)
    if spec.content_type is not None:
        headers["Content-Type"] = spec.content_type
    record.status = spec.status
    return web.Response(status=spec.status, body=spec.body, headers=headers)


async def _complete(
    request: web.Request, record: RequestRecord, fault: str | None, chat: ChatRequest
) -> web.StreamResponse:
    """Answer ``stream:false``; stream faults map to their nearest non-stream form."""
    if fault == "reset_mid":
        await abort(request)
        return web.Response(status=204)  # never delivered: the connection is gone
    if fault == "in_stream_error":
        return _respond(record, 200, IN_STREAM_ERROR)
    config = request.app[_CONFIG]
    text = build_answer(chat.directive, chat.user_text, config.default_chunks).text
    usage: Mapping[str, int] | None = None
    if chat.directive.usage is not False:
        usage = usage_counts("\n".join(chat.texts), text)
    body = completion_body(text, chat.model, record.number, int(time.time()), usage)
    return _respond(record, 200, body)
