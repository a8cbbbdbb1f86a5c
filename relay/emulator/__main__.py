"""Run the emulator standalone: ``python -m relay.emulator --port 9000``.

Useful for pointing a relay in another process (or curl) at a fake Qwen. Strict
about qwen-v2 writes by default, as the 2026 service is (§7); ``--lenient`` accepts
pre-2026 requests (a Bearer token, no browser headers) for a quick curl. The same
listener is the auth host (``--auth-origin`` of the relay): ``--user`` accounts sign
in, and ``--access-ttl`` sets how long their access tokens live. ``--replay DIR``
serves the exchanges a relay recorded with ``--record DIR`` instead (``replay.py``).
The OSS stand-in for uploads listens on its own loopback port, printed on stderr
(``oss http://127.0.0.1:PORT``) and shown by ``GET /_emulator/files``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import Sequence

from relay.emulator.config import DEFAULT_LOG_SIZE, DEFAULT_USERS, EmulatorConfig
from relay.emulator.server import start_emulator


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m relay.emulator",
        description="Qwen Chat emulator (qwen-v1, qwen-phase, qwen-v2) with fault injection.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: %(default)s)")
    parser.add_argument(
        "--port",
        type=int,
        default=9000,
        help="port to bind, 0 = any (default: %(default)s)",
    )
    parser.add_argument(
        "--chunks",
        type=int,
        default=8,
        help="stream events per answer (default: %(default)s)",
    )
    parser.add_argument(
        "--delay-ms",
        type=float,
        default=0.0,
        help="gap between stream events (default: %(default)s)",
    )
    parser.add_argument(
        "--valid-token",
        action="append",
        default=None,
        metavar="TOKEN",
        help="accept only this Bearer token (repeatable; default: any non-empty token)",
    )
    parser.add_argument(
        "--expired-token",
        action="append",
        default=None,
        metavar="TOKEN",
        help="answer this Bearer token 401 (repeatable; default: expired-token)",
    )
    parser.add_argument(
        "--access-ttl",
        type=float,
        default=900.0,
        metavar="SECONDS",
        help="lifetime of the access tokens the auth host mints (default: %(default)s)",
    )
    parser.add_argument(
        "--user",
        action="append",
        default=None,
        metavar="EMAIL:PASSWORD",
        help="an account that may sign in (repeatable; default: demo@example.com:demo-password)",
    )
    parser.add_argument(
        "--signin-limit",
        type=int,
        default=12,
        help="sign-ins per client per 6 minutes before the WAF page (default: %(default)s)",
    )
    parser.add_argument(
        "--replay",
        default=None,
        metavar="DIR",
        help="answer with the exchanges a relay recorded with --record DIR, in order, instead of emulating",
    )
    parser.add_argument(
        "--lenient",
        action="store_true",
        help="skip the 2026 checks on qwen-v2 writes: Bearer or cookie, no header or body-shape checks",
    )
    parser.add_argument(
        "--log-size",
        type=int,
        default=DEFAULT_LOG_SIZE,
        metavar="N",
        help="requests GET /_emulator/log keeps, the oldest dropped first (default: %(default)s)",
    )
    return parser.parse_args(argv)


def build_config(argv: Sequence[str] | None = None) -> EmulatorConfig:
    """Turn command-line flags into the emulator's config."""
    return _config(_parse_args(argv))


def _config(args: argparse.Namespace) -> EmulatorConfig:
    return EmulatorConfig(
        expired_tokens=frozenset(args.expired_token or ["expired-token"]),
        valid_tokens=frozenset(args.valid_token) if args.valid_token else None,
        default_chunks=args.chunks,
        default_delay_ms=args.delay_ms,
        strict=not args.lenient,
        users=_users(args.user),
        access_ttl_s=args.access_ttl,
        signin_limit=args.signin_limit,
        log_size=args.log_size,
    )


def _users(pairs: list[str] | None) -> dict[str, str]:
    if not pairs:
        return dict(DEFAULT_USERS)
    users: dict[str, str] = {}
    for pair in pairs:
        email, sep, password = pair.partition(":")
        if not sep or not email or not password:
            raise SystemExit(f"--user wants EMAIL:PASSWORD, got {pair!r}")
        users[email] = password
    return users


async def _serve(args: argparse.Namespace) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):  # not on Windows
            loop.add_signal_handler(signum, stop.set)
    if args.replay is not None:
        await _serve_replay(args, stop)
        return
    async with await start_emulator(_config(args), host=args.host, port=args.port) as emulator:
        print(emulator.url, flush=True)
        # stdout's one line is the chat host (tests read it); the OSS stand-in goes to stderr.
        print(f"oss {emulator.oss_url}", file=sys.stderr, flush=True)
        await stop.wait()


async def _serve_replay(args: argparse.Namespace, stop: asyncio.Event) -> None:
    """Serve ``--replay DIR`` on ``--host``/``--port`` until ``stop``."""
    from aiohttp import web

    from relay.emulator.replay import make_replay_app

    if not os.path.isdir(args.replay):
        raise SystemExit(f"--replay: {args.replay} is not a directory")
    runner = web.AppRunner(make_replay_app(args.replay), access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    try:
        await web.TCPSite(runner, args.host, args.port).start()
        port = runner.addresses[0][1]
        print(f"http://{f'[{args.host}]' if ':' in args.host else args.host}:{port}", flush=True)
        await stop.wait()
    finally:
        await runner.cleanup()


def main(argv: Sequence[str] | None = None) -> None:
    """Serve until SIGINT or SIGTERM."""
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(_parse_args(argv)))


if __name__ == "__main__":
    main()
