"""``qwen-relay smoke``: an operator's end-to-end check of a running relay.

Lists the models and streams one short completion through the relay (behind
nginx or not), reading the stream with ``aiohttp-sse-client2``, an SSE consumer
independent of our own parser. Checks the chunks and the single ``[DONE]``,
prints one line, and exits 0 on success or 1 on failure, so it fits a deploy
script or a monitoring probe.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Sequence
from typing import Any

import aiohttp
from aiohttp_sse_client2 import client as sse_client

__all__ = ["main"]

_PROMPT = "Reply with one short sentence: is this relay working?"


class SmokeFailure(Exception):
    pass


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="qwen-relay smoke",
                                     description="Check a running relay end to end.")
    parser.add_argument("--url", required=True, help="the relay's base URL, e.g. http://127.0.0.1:8080")
    parser.add_argument("--token", required=True, help="a Qwen Chat token (or a relay key)")
    parser.add_argument("--model", help="model to use (default: the first one listed)")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds for the whole check")
    parser.add_argument("--insecure", action="store_true", help="do not verify the TLS certificate")
    return parser


async def _check(args: argparse.Namespace) -> str:
    base = args.url.rstrip("/")
    base = base.removesuffix("/v1")
    headers = {"Authorization": f"Bearer {args.token}"}
    # ssl=False skips verification (self-signed test certs); True uses the system store.
    connector = aiohttp.TCPConnector(ssl=not args.insecure)
    started = time.perf_counter()
    async with aiohttp.ClientSession(connector=connector) as session:
        async with session.get(base + "/v1/models", headers=headers) as response:
            if response.status != 200:
                raise SmokeFailure(f"GET /v1/models answered {response.status}: {(await response.text())[:200]}")
            listing = await response.json()
        ids = [m.get("id") for m in listing.get("data", []) if isinstance(m, dict)]
        if not ids:
            raise SmokeFailure("GET /v1/models returned no models")
        model = args.model or ids[0]
        body = {"model": model, "stream": True, "stream_options": {"include_usage": True},
                "messages": [{"role": "user", "content": _PROMPT}]}
        text, chunks = await _stream(session, base, headers, body)
    elapsed = time.perf_counter() - started
    return (f"ok: {len(ids)} models; streamed {chunks} chunks ({len(text)} chars) from {model} "
            f"in {elapsed:.2f} s via {base}")


async def _stream(session: aiohttp.ClientSession, base: str, headers: dict[str, str],
                  body: dict[str, Any]) -> tuple[str, int]:
    """Read the stream to ``[DONE]``, checking every chunk on the way."""
    text: list[str] = []
    chunks = 0
    finishes = 0
    try:
        async with sse_client.EventSource(base + "/v1/chat/completions", option={"method": "POST"},
                                          session=session, headers=headers, json=body,
                                          max_connect_retry=0) as source:
            async for event in source:
                if event.data == "[DONE]":
                    break
                payload = json.loads(event.data)
                if "error" in payload:
                    raise SmokeFailure(f"error event in the stream: {payload['error'].get('message')}")
                if payload.get("object") != "chat.completion.chunk":
                    raise SmokeFailure(f"unexpected event: {event.data[:200]}")
                chunks += 1
                for choice in payload.get("choices", []):
                    text.append(choice.get("delta", {}).get("content") or "")
                    finishes += choice.get("finish_reason") is not None
            else:
                raise SmokeFailure("the stream ended without data: [DONE]")
    except ConnectionError as exc:
        raise SmokeFailure(f"POST /v1/chat/completions failed: {exc.args[0] if exc.args else exc}") from exc
    if finishes != 1:
        raise SmokeFailure(f"expected exactly one finish_reason, got {finishes}")
    if not "".join(text):
        raise SmokeFailure("the stream carried no text")
    return "".join(text), chunks


def main(argv: Sequence[str]) -> int:
    args = _parser().parse_args(list(argv))

    async def run() -> str:
        async with asyncio.timeout(args.timeout):
            return await _check(args)

    try:
        verdict = asyncio.run(run())
    except SmokeFailure as exc:
        print(f"FAIL: {exc}")
        return 1
    except TimeoutError:
        print(f"FAIL: no complete answer within {args.timeout:g} s")
        return 1
    except (aiohttp.ClientError, OSError, ValueError) as exc:
        print(f"FAIL: {type(exc).__name__}: {exc}")
        return 1
    print(verdict)
    sys.stdout.flush()
    return 0
