"""Run the relay: logging, the app, the listening socket, signals and the drain.

Shutdown (SIGTERM or SIGINT), after uvicorn's ``should_exit`` / ``force_exit``:
  1. mark the relay draining: /healthz answers 503, new /v1 requests get 503,
     systemd hears ``STOPPING=1``; stop accepting connections;
  2. wait until every request holding a concurrency slot has finished, up to
     ``--drain-timeout`` (a second signal cuts the wait short);
  3. abort the upstream of whatever is still open: each of those streams ends
     with an error event and ``data: [DONE]`` instead of a cut connection;
  4. close keep-alive connections and the upstream session; exit 0.

SIGHUP re-reads the ``--config`` file's ``[operator]`` section (keys, tokens,
mode). The whole file is parsed first; a bad one is logged and ignored, so the
old settings stay. Open streams keep the key and token they hold.

Bytes on the listening port that are not HTTP (a TLS client on the plain port,
a port scanner, a bad HTTP version, an over-long request line) are answered 400
by aiohttp, which logs each with a traceback at error level; ``MalformedRequests``
turns that into one rate-limited warning line (issue 21).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import re
import signal
import socket
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from .app import make_app
from .config import Config
from .errors import Draining
from .keys import GATE, LIFECYCLE, OPERATOR, UPSTREAM
from .logs import setup_logging
from .operator import Reload
from .pipeline import untrack_stages
from .systemd import notify

#: objects allocated (net) before the youngest generation is collected (CPython's default: 700).
GC_YOUNG_THRESHOLD = 7000

__all__ = ["MALFORMED_LOG_INTERVAL_S", "RUNNER_OPTIONS", "MalformedRequests", "drain", "quiet_malformed_requests",
           "reload_operator", "run", "serve"]

_log = logging.getLogger("relay.error")
#: listening, draining, stopping: what the relay is doing, not what went wrong.
_lifecycle = logging.getLogger("relay.lifecycle")

#: after the drain, how long aborted streams get to write their error event.
_ABORT_GRACE_S = 3.0
#: idle keep-alive connections close after this; longer than nginx's upstream 60 s
#: so nginx, not the relay, closes a pooled connection (no race on reuse).
_KEEPALIVE_S = 75.0
#: aiohttp server settings the relay depends on (tests start their servers with them too):
#: a client disconnect cancels its handler (and so the upstream request); idle
#: keep-alive ends after 75 s; header fields up to 16 KiB reach the relay's own checks
#: (a too-long token gets the OpenAI 401, not aiohttp's plain 400 that quotes it).
RUNNER_OPTIONS: dict[str, Any] = {
    "handler_cancellation": True,
    "keepalive_timeout": _KEEPALIVE_S,
    "max_field_size": 16 * 1024,
}
#: the socket nginx connects to must be writable by nginx's user.
_UNIX_SOCKET_MODE = 0o666


async def serve(config: Config, stop: asyncio.Event, force: asyncio.Event | None = None,
                reload: Reload | None = None, sock: socket.socket | None = None,
                on_ready: Callable[[str], None] | None = None) -> None:
    """Listen until ``stop`` is set, then drain and close everything in order.

    A worker of ``--workers`` serves the supervisor's ``sock`` and reports to
    ``on_ready`` instead of systemd (the supervisor sends READY=1 for all of them).
    """
    untrack_stages()  # the loop runs now: its async-generator hooks are in place
    quiet_malformed_requests()
    app = make_app(config)
    if reload is not None and hasattr(signal, "SIGHUP"):
        asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, reload_operator, app, reload)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=_ABORT_GRACE_S, **RUNNER_OPTIONS)
    await runner.setup()
    site: web.BaseSite
    if sock is not None:
        site = web.SockSite(runner, sock)
    elif config.unix:
        site = web.UnixSite(runner, config.unix)
    else:
        site = web.TCPSite(runner, config.host, config.port, backlog=1024)
    try:
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    fields: dict[str, Any]
    if sock is not None:
        where = _describe(sock)
        fields = {"pid": os.getpid()}
    elif config.unix:
        os.chmod(config.unix, _UNIX_SOCKET_MODE)
        where = f"unix:{config.unix}"
        fields = {"unix": config.unix}
    else:
        host, port = runner.addresses[0][:2]
        where = f"http://{host}:{port}"
        fields = {"host": host, "port": port}
    loop = type(asyncio.get_running_loop()).__module__.partition(".")[0]  # "uvloop" or "asyncio"
    _lifecycle.info("listening", extra={"fields": {"url": where, **fields, "loop": loop}})
    if on_ready is not None:
        on_ready(where)
    else:
        notify(f"READY=1\nSTATUS=serving on {where}")
    await stop.wait()
    await drain(app, runner, config.drain_timeout_s, force or asyncio.Event())


#: at most one ``malformed_request`` line per this many seconds (per process): a scanner
#: sending garbage as fast as it can costs the log one line a minute, not one per connection.
MALFORMED_LOG_INTERVAL_S = 60.0
#: where aiohttp's parser error quotes the bytes it got (a request line may carry a secret in its query).
_QUOTED_BYTES = re.compile(r"""\s*["']?(?:bytearray\()?b['"].*""", re.DOTALL)
_DETAIL_MAX_CHARS = 120


class MalformedRequests(logging.Filter):
    """aiohttp's "Error handling request" for bytes that are not HTTP: one warning line, rate-limited.

    Why: aiohttp (logger ``aiohttp.server``) logs every request its parser refuses at
    error level with a full traceback, so a port scanner or a TLS client on the plain
    port floods the log with tracebacks that say nothing new. What an operator needs is
    that it happens, from where, what kind, and how often: one ``malformed_request``
    line (``peer``, ``error``: the parser's exception, ``detail``: its message without
    the quoted bytes, ``suppressed``: how many were not logged since the last line), at
    warning level at most (aiohttp's debug stays debug), at most every ``interval_s``.
    Every other record passes unchanged: a traceback from a handler is still a fault.
    """

    def __init__(self, interval_s: float = MALFORMED_LOG_INTERVAL_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self._interval_s = interval_s
        self._clock = clock
        self._quiet_until: float | None = None
        self._suppressed = 0

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if not isinstance(exc, HttpProcessingError):
            return True
        now = self._clock()
        if self._quiet_until is not None and now < self._quiet_until:
            self._suppressed += 1
            return False
        self._quiet_until = now + self._interval_s
        peer = record.args[0] if isinstance(record.args, tuple) and record.args else None
        record.msg, record.args = "malformed_request", ()
        record.exc_info, record.exc_text, record.stack_info = None, None, None
        if record.levelno > logging.WARNING:
            record.levelno, record.levelname = logging.WARNING, logging.getLevelName(logging.WARNING)
        record.fields = {"peer": peer, "error": type(exc).__name__, "detail": _detail(exc),
                         "suppressed": self._suppressed, "interval_s": self._interval_s}
        self._suppressed = 0
        return True


def _detail(exc: HttpProcessingError) -> str:
    """The parser's complaint on one line, cut before the bytes it quotes."""
    text = " ".join(_QUOTED_BYTES.sub("", exc.message).split()).rstrip(" :")
    return text[:_DETAIL_MAX_CHARS]


def quiet_malformed_requests() -> None:
    """Put ``MalformedRequests`` on aiohttp's server logger, once per process."""
    server_log = logging.getLogger("aiohttp.server")
    if not any(isinstance(existing, MalformedRequests) for existing in server_log.filters):
        server_log.addFilter(MalformedRequests())


def _tune_gc() -> None:
    """Fewer, cheaper garbage collections while serving.

    Everything built at startup (modules, config, app) lives until exit:
    ``gc.freeze`` takes it out of every later collection. Requests allocate
    many short-lived objects, and most cycles they make are broken explicitly,
    so the youngest generation may grow 10x before a collection (measured:
    ~4 % less CPU per request, lower p99; RSS unchanged).
    """
    gc.freeze()
    _, middle, oldest = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, middle, oldest)


def _describe(sock: socket.socket) -> str:
    address = sock.getsockname()
    if sock.family == socket.AF_UNIX:
        return f"unix:{address}"
    host, port = address[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def reload_operator(app: web.Application, reload: Reload) -> bool:
    """Apply a freshly parsed operator config, or log why not and keep the old one."""
    try:
        new = reload()
    except ValueError as exc:  # ConfigFileError too: the message names line and field
        _log.error("config_reload_failed", extra={"fields": {"error": str(exc)}})
        return False
    app[OPERATOR].apply(new)
    return True


async def drain(app: web.Application, runner: web.AppRunner, timeout_s: float, force: asyncio.Event) -> None:
    """Steps 1–4 of the module docstring."""
    gate = app[GATE]
    app[LIFECYCLE].draining = True
    notify("STOPPING=1\nSTATUS=draining")
    _lifecycle.info("drain_started", extra={"fields": {"in_flight": gate.in_flight, "timeout_s": timeout_s}})
    for site in list(runner.sites):
        await site.stop()
    waiters = [asyncio.ensure_future(gate.wait_idle()), asyncio.ensure_future(force.wait())]
    try:
        await asyncio.wait(waiters, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
    if gate.in_flight:
        aborted = app[UPSTREAM].abort_all(Draining("The relay is shutting down; this answer was cut short."))
        _lifecycle.warning("drain_deadline", extra={"fields": {"in_flight": gate.in_flight, "aborted": aborted}})
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(_ABORT_GRACE_S):
                await gate.wait_idle()
    await runner.cleanup()
    _lifecycle.info("drain_finished")


def _use_loop(choice: str) -> None:
    """uvloop roughly halves aiohttp's per-request CPU: installed by default, ``--loop asyncio`` opts out."""
    if choice == "asyncio":
        return
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            raise SystemExit("--loop uvloop: uvloop is not installed (pip install 'uvloop>=0.21,<1')") from None
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def run(config: Config, reload_operator: Reload | None = None, *, sock: socket.socket | None = None,
        on_ready: Callable[[str], None] | None = None) -> int:
    """Blocking entry point: serve until SIGINT or SIGTERM (SIGHUP reloads); return the exit code.

    ``sock`` and ``on_ready``: see ``serve``; a worker leaves SIGINT to its supervisor.
    """
    setup_logging(config.log_level)
    signals = (signal.SIGTERM,) if sock is not None else (signal.SIGINT, signal.SIGTERM)

    async def main() -> None:
        stop, force = asyncio.Event(), asyncio.Event()

        def on_signal() -> None:
            (force if stop.is_set() else stop).set()

        loop = asyncio.get_running_loop()
        for sig in signals:
            loop.add_signal_handler(sig, on_signal)
        await serve(config, stop, force, reload_operator, sock, on_ready)

    _use_loop(config.loop)
    _tune_gc()  # here, not in serve(): only for a process that is the relay
    try:
        asyncio.run(main())
    except OSError as exc:
        _log.error("cannot_listen", extra={"fields": {"error": str(exc)}})
        return 1
    return 0
