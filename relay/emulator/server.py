"""A real aiohttp server speaking Qwen Chat's three dialects, with faults.

Routes: ``GET /api/models`` and ``POST /api/chat/completions`` (qwen-v1 and
qwen-phase, ``routes_v1.py``); ``GET /api/v2/models/``, ``POST /api/v2/chats/new``,
``POST /api/v2/chat/completions`` and ``…/stop`` (qwen-v2, ``routes_v2.py``); and
``/_emulator/*`` for tests in another process (log, reset, arm, chats).

A gateway middleware wraps every emulated route: it logs the request before anything
can fail, applies a fault armed for the path (``EmulatorState.arm``: the only way to
fault a request that carries no message, such as ``GET /api/models``), and does the
disconnect bookkeeping.

Disconnects: an app started by :func:`start_emulator` (and pytest-aiohttp's test
server) runs with ``handler_cancellation=True``, so a client that goes away cancels
the handler at once. Stalls also poll the transport, so they end promptly under a
runner without that flag. Either way the record is updated before
``CancelledError`` propagates; cancellation is never swallowed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Self

from aiohttp import web

from relay.emulator.catalogue import models_payload, v2_models_payload
from relay.emulator.config import EmulatorConfig
from relay.emulator.directive import DirectiveError
from relay.emulator.faults import build_gateway_directive
from relay.emulator.handling import (
    EMULATOR_CONFIG,
    EMULATOR_RECORD,
    EMULATOR_STATE,
    HANDLERS,
    dumps,
    is_authorized,
    pre_stream,
    respond,
    token,
    unauthorized_v1,
    v2_error,
)
from relay.emulator.playback import is_peer_gone
from relay.emulator.routes_v1 import chat_v1
from relay.emulator.routes_v2 import UNAUTHORIZED_V2, chat_completions_v2, chats_new, stop_v2
from relay.emulator.state import EmulatorState

__all__ = ["EMULATOR_STATE", "RunningEmulator", "make_emulator_app", "start_emulator"]

# Chat histories with inline images get large; aiohttp's 1 MiB default would 413 them.
MAX_BODY_BYTES = 32 * 1024 * 1024
# Backstop only: open handlers are cancelled on shutdown (_cancel_handlers), so
# streams stalled "forever" never hold close() for aiohttp's default 60 s.
SHUTDOWN_TIMEOUT_S = 1.0

_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def make_emulator_app(config: EmulatorConfig | None = None) -> web.Application:
    """Build the emulator app; its state is ``app[EMULATOR_STATE]``."""
    app = web.Application(client_max_size=MAX_BODY_BYTES, middlewares=[_gateway])
    app[EMULATOR_CONFIG] = config if config is not None else EmulatorConfig()
    app[EMULATOR_STATE] = EmulatorState()
    app[HANDLERS] = set()
    app.on_shutdown.append(_cancel_handlers)
    app.router.add_get("/api/models", _models)
    app.router.add_post("/api/chat/completions", chat_v1)
    app.router.add_get("/api/v2/models/", _models_v2)
    app.router.add_get("/api/v2/models", _models_v2)
    app.router.add_post("/api/v2/chats/new", chats_new)
    app.router.add_post("/api/v2/chat/completions", chat_completions_v2)
    app.router.add_post("/api/v2/chat/completions/stop", stop_v2)
    app.router.add_get("/_emulator/log", _log)
    app.router.add_get("/_emulator/chats", _chats)
    app.router.add_post("/_emulator/reset", _reset)
    app.router.add_post("/_emulator/arm", _arm)
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
    """End handlers still running when the server shuts down.

    A stalled stream would otherwise hold the shutdown for the whole grace
    period; an emulator has nothing worth finishing gracefully.
    """
    for task in app[HANDLERS]:
        task.cancel()


@web.middleware
async def _gateway(request: web.Request, handler: _Handler) -> web.StreamResponse:
    """Log, apply an armed gateway fault, and account for disconnects.

    ``/_emulator/*`` and unmatched paths pass through unlogged: they are not Qwen.
    """
    if request.path.startswith("/_emulator/") or request.match_info.http_exception is not None:
        return await handler(request)
    state = request.app[EMULATOR_STATE]
    record = state.begin(request.method, request.path, token(request))
    request[EMULATOR_RECORD] = record
    handlers, task = request.app[HANDLERS], asyncio.current_task()
    assert task is not None  # aiohttp runs every handler in a task
    handlers.add(task)
    try:
        armed = state.take_armed(request.path)
        if armed is not None:
            directive = build_gateway_directive(armed)  # validated when armed
            record.directive, record.fault = dict(armed), directive.fault
            early = await pre_stream(request, state, record, directive, directive.fault, stream=False)
            if early is not None:
                return early
        return await handler(request)
    except asyncio.CancelledError:
        if is_peer_gone(request) and not record.client_disconnected:
            state.client_gone(record)
        raise
    finally:
        record.finished = True
        handlers.discard(task)


async def _models(request: web.Request) -> web.Response:
    config, record = request.app[EMULATOR_CONFIG], request[EMULATOR_RECORD]
    if not is_authorized(token(request), config):
        return unauthorized_v1(record)
    return respond(record, 200, models_payload(config.models))


async def _models_v2(request: web.Request) -> web.Response:
    config, record = request.app[EMULATOR_CONFIG], request[EMULATOR_RECORD]
    record.dialect = "v2"
    if not is_authorized(token(request), config):
        return v2_error(record, 401, "Unauthorized", UNAUTHORIZED_V2)
    return respond(record, 200, v2_models_payload(config.models))


async def _log(request: web.Request) -> web.Response:
    log = request.app[EMULATOR_STATE].log
    return web.json_response([record.to_json() for record in log], dumps=dumps)


async def _chats(request: web.Request) -> web.Response:
    """List created chats and stop calls, for tests running the emulator out of process."""
    state = request.app[EMULATOR_STATE]
    payload: dict[str, Any] = {
        "chats": [chat.to_json() for chat in state.chats.values()],
        "stop_calls": [list(call) for call in state.stop_calls],
    }
    return web.json_response(payload, dumps=dumps)


async def _reset(request: web.Request) -> web.Response:
    request.app[EMULATOR_STATE].reset()
    return web.json_response({"ok": True})


async def _arm(request: web.Request) -> web.Response:
    """``POST /_emulator/arm {"directive": {...}, "path": "/api/", "times": 1}``."""
    try:
        body = await request.json()
        if not isinstance(body, dict):
            raise DirectiveError("body must be an object with a directive")
        times = body.get("times", 1)
        if times is not None and (isinstance(times, bool) or not isinstance(times, int)):
            raise DirectiveError("times must be an integer or null")
        path = body.get("path", "/")
        if not isinstance(path, str):
            raise DirectiveError("path must be a string")
        request.app[EMULATOR_STATE].arm(body.get("directive"), path=path, times=times)
    except ValueError as exc:  # DirectiveError and bad JSON are both ValueErrors
        return web.json_response({"detail": str(exc)}, status=400)
    return web.json_response({"ok": True})
