"""A real aiohttp server speaking Qwen Chat's three dialects, with faults.

Routes: ``GET /api/models`` and ``POST /api/chat/completions`` (qwen-v1 and
qwen-phase, ``routes_v1.py``); ``GET /api/v2/models/``, ``POST /api/v2/chats/new``,
``POST /api/v2/chat/completions``, ``…/stop`` and ``DELETE /api/v2/chats/<id>``
(qwen-v2, ``routes_v2.py``, ``routes_chats.py``); the auth host's
``/api/v2/auths/signin``, ``/api/v2/auths/refresh`` and the retired
``/api/v1/auths/signin`` (``auth.py``: same listener, routed by path); and
``/_emulator/*`` for tests in another process (log, reset, arm, chats; logins,
refreshes, signin_wall, challenge, require_bx in ``auth_control.py``; files,
files/expire, oss/arm in ``files_control.py``).

Uploads and images (QWEN_IMAGES.md §6): ``POST /api/v2/files/getstsToken`` (and
``/api/v1/…``), ``files/parse`` and ``files/parse/status`` (``files.py``); the OSS
stand-in on its own loopback port, started with this app (``oss.py``; its URL is
``RunningEmulator.oss_url``); ``files[]`` checks and t2i / image_edit streams in
the v2 completion (``images.py``); ``GET /output/…``, ``GET /cdn/…`` and
``GET /api/v2/chats/<id>`` (``routes_images.py``).

A gateway middleware wraps every emulated route: it logs the request (headers,
cookies and body included, tokens redacted: ``capture.py``) before anything can
fail, applies a fault armed for the path (``EmulatorState.arm``: the only way to
fault a request that carries no message, such as ``GET /api/models``), then, when
strict, answers a v2 write that breaks rules 1-5 of ``strict.py`` with the
risk-control JSON, then applies the per-login gates to any v2 write of an
emulator-JWT login (``auth.account_gate``: a challenge owed, a jar paired with
another login, a missing ``bx-*`` bundle; risk control too), and does the
disconnect bookkeeping. [I] An armed fault wins over
the strict checks: it stands for a gateway in front of the service.

Disconnects: an app started by :func:`start_emulator` (and pytest-aiohttp's test
server) runs with ``handler_cancellation=True``, so a client that goes away cancels
the handler at once. Stalls also poll the transport, so they end promptly under a
runner without that flag. Either way the record is updated before
``CancelledError`` propagates; cancellation is never swallowed.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Self

from aiohttp import web

from relay.emulator.auth import account_gate, add_auth_routes
from relay.emulator.auth_control import add_auth_control_routes
from relay.emulator.capture import capture_cookies, capture_headers, decode_body, redact_body
from relay.emulator.catalogue import models_payload, v2_models_payload
from relay.emulator.config import EmulatorConfig
from relay.emulator.directive import DirectiveError
from relay.emulator.faults import build_gateway_directive
from relay.emulator.files import add_file_routes
from relay.emulator.files_control import add_files_control_routes
from relay.emulator.handling import (
    EMULATOR_CONFIG,
    EMULATOR_RECORD,
    EMULATOR_STATE,
    HANDLERS,
    dumps,
    judge_access,
    pre_stream,
    reject,
    respond,
    token,
    unauthorized_v1,
)
from relay.emulator.logins import LoginBook
from relay.emulator.oss import oss_site
from relay.emulator.playback import is_peer_gone
from relay.emulator.routes_chats import chats_new, delete_chat, stop_v2, v2_unauthorized
from relay.emulator.routes_images import add_image_routes
from relay.emulator.routes_v1 import chat_v1
from relay.emulator.routes_v2 import chat_completions_v2
from relay.emulator.state import EmulatorState, RequestRecord
from relay.emulator.strict import WriteKind, risk_rule, target_chat_id, write_kind

__all__ = ["EMULATOR_STATE", "RunningEmulator", "make_emulator_app", "start_emulator"]

# Chat histories with inline images get large; aiohttp's 1 MiB default would 413 them.
MAX_BODY_BYTES = 32 * 1024 * 1024
# Backstop only: open handlers are cancelled on shutdown (_cancel_handlers), so
# streams stalled "forever" never hold close() for aiohttp's default 60 s.
SHUTDOWN_TIMEOUT_S = 1.0

_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _configured(config: EmulatorConfig | None, strict: bool | None) -> EmulatorConfig:
    config = config if config is not None else EmulatorConfig()
    return config if strict is None else dataclasses.replace(config, strict=strict)


def make_emulator_app(config: EmulatorConfig | None = None, *, strict: bool | None = None) -> web.Application:
    """Build the emulator app; its state is ``app[EMULATOR_STATE]``.

    ``strict`` (None: the config's, strict by default) overrides ``config.strict``.
    """
    app = web.Application(client_max_size=MAX_BODY_BYTES, middlewares=[_gateway])
    app[EMULATOR_CONFIG] = _configured(config, strict)
    app[EMULATOR_STATE] = EmulatorState.keeping(app[EMULATOR_CONFIG].log_size,
                                                logins=LoginBook.from_config(app[EMULATOR_CONFIG]))
    app[HANDLERS] = set()
    app.on_shutdown.append(_cancel_handlers)
    app.router.add_get("/api/models", _models)
    app.router.add_post("/api/chat/completions", chat_v1)
    app.router.add_get("/api/v2/models/", _models_v2)
    app.router.add_get("/api/v2/models", _models_v2)
    app.router.add_post("/api/v2/chats/new", chats_new)
    app.router.add_post("/api/v2/chat/completions", chat_completions_v2)
    app.router.add_post("/api/v2/chat/completions/stop", stop_v2)
    app.router.add_delete("/api/v2/chats/{chat_id}", delete_chat)
    add_file_routes(app)
    add_image_routes(app)
    app.cleanup_ctx.append(oss_site)
    add_auth_routes(app)
    app.router.add_get("/_emulator/log", _log)
    app.router.add_get("/_emulator/chats", _chats)
    app.router.add_post("/_emulator/reset", _reset)
    app.router.add_post("/_emulator/arm", _arm)
    add_auth_control_routes(app)
    add_files_control_routes(app)
    return app


@dataclass(slots=True)
class RunningEmulator:
    """An emulator listening on a real socket; close it when done."""

    url: str
    state: EmulatorState
    _runner: web.AppRunner = field(repr=False)

    @property
    def oss_url(self) -> str | None:
        """Where the OSS stand-in listens (``http://127.0.0.1:PORT``; None once closed)."""
        return self.state.files.oss_url

    async def close(self) -> None:
        """Stop listening; streams still open are cancelled after a short grace."""
        await self._runner.cleanup()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


async def start_emulator(
    config: EmulatorConfig | None = None, host: str = "127.0.0.1", port: int = 0, *, strict: bool | None = None
) -> RunningEmulator:
    """Serve the emulator on ``host:port`` (0 = any free port) in this event loop."""
    app = make_emulator_app(config, strict=strict)
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
    state, config = request.app[EMULATOR_STATE], request.app[EMULATOR_CONFIG]
    kind = write_kind(request.method, request.path)
    seen_token = request.cookies.get("token") if kind is not None and config.strict else token(request)
    record = state.begin(request.method, request.path, seen_token)
    record.headers = capture_headers(request.headers.items())
    record.cookies = capture_cookies(request.cookies)
    is_fresh_request_id = state.note_request_id(request.headers.get("x-request-id"))
    request[EMULATOR_RECORD] = record
    handlers, task = request.app[HANDLERS], asyncio.current_task()
    assert task is not None  # aiohttp runs every handler in a task
    handlers.add(task)
    try:
        raw = await request.read()  # aiohttp keeps it: the handler reads it again for free
        record.body = redact_body(decode_body(raw))
        armed = state.take_armed(request.path)
        if armed is not None:
            directive = build_gateway_directive(armed)  # validated when armed
            record.directive, record.fault = dict(armed), directive.fault
            early = await pre_stream(request, state, record, directive, directive.fault, stream=False)
            if early is not None:
                return early
        if kind is not None and config.strict:
            refused = _risk_check(request, record, kind, len(raw), is_fresh_request_id)
            if refused is not None:
                return refused
        if kind is not None:
            refused = account_gate(request, record)
            if refused is not None:
                return refused
        return await handler(request)
    except asyncio.CancelledError:
        if is_peer_gone(request) and not record.client_disconnected:
            state.client_gone(record)
        raise
    finally:
        record.finished = True
        handlers.discard(task)


def _risk_check(
    request: web.Request, record: RequestRecord, kind: WriteKind, body_bytes: int, is_fresh_request_id: bool
) -> web.Response | None:
    """Apply rules 1-5 of ``strict.py``; the risk-control answer, or None to go on."""
    chat_id = target_chat_id(request.query.get("chat_id"), record.body)
    rule = risk_rule(
        kind,
        record.headers,  # lower-cased; only the auth headers are redacted, and unused here
        request.cookies,
        chat_id=chat_id,
        body_bytes=body_bytes,
        is_fresh_request_id=is_fresh_request_id,
    )
    if rule is None:
        return None
    record.dialect = "v2"
    return reject(record, rule)


async def _models(request: web.Request) -> web.Response:
    config, record = request.app[EMULATOR_CONFIG], request[EMULATOR_RECORD]
    if not judge_access(request, token(request)).ok:
        return unauthorized_v1(record)
    return respond(record, 200, models_payload(config.models))


async def _models_v2(request: web.Request) -> web.Response:
    config, record = request.app[EMULATOR_CONFIG], request[EMULATOR_RECORD]
    record.dialect = "v2"
    access = judge_access(request, token(request))
    if not access.ok:
        return v2_unauthorized(record, access)
    return respond(record, 200, v2_models_payload(config.models))


async def _log(request: web.Request) -> web.Response:
    log = request.app[EMULATOR_STATE].log
    return web.json_response([record.to_json() for record in log], dumps=dumps)


async def _chats(request: web.Request) -> web.Response:
    """List live chats, stop calls and deleted chats, for tests running the emulator out of process."""
    state = request.app[EMULATOR_STATE]
    payload: dict[str, Any] = {
        "chats": [chat.to_json() for chat in state.chats.values()],
        "stop_calls": [list(call) for call in state.stop_calls],
        "deleted_chats": list(state.deleted_chats),
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
