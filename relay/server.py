"""Run the relay: logging, the app, the listening socket, signals."""

from __future__ import annotations

import asyncio
import logging
import signal

from aiohttp import web

from .app import make_app
from .config import Config
from .logs import setup_logging

__all__ = ["run", "serve"]

_log = logging.getLogger("relay.error")

#: how long shutdown waits for open requests before closing them.
SHUTDOWN_GRACE_S = 10.0


async def serve(config: Config, stop: asyncio.Event) -> None:
    """Listen until ``stop`` is set, then close everything in order."""
    app = make_app(config)
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None,
                           shutdown_timeout=SHUTDOWN_GRACE_S)
    await runner.setup()
    site = web.TCPSite(runner, config.host, config.port, backlog=1024)
    await site.start()
    for address in runner.addresses:
        host, port = address[0], address[1]
        _log.info("listening", extra={"fields": {"url": f"http://{host}:{port}", "host": host, "port": port}})
    try:
        await stop.wait()
    finally:
        _log.info("shutting_down")
        await runner.cleanup()


def run(config: Config) -> int:
    """Blocking entry point: serve until SIGINT or SIGTERM; return the exit code."""
    setup_logging(config.log_level)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await serve(config, stop)

    try:
        asyncio.run(main())
    except OSError as exc:
        _log.error("cannot_listen", extra={"fields": {"error": str(exc)}})
        return 1
    return 0
