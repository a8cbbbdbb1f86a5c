"""Shared helpers of the 2026 web-client integration tests (issue "Today's chat.qwen.ai, for real").

Everything here works on real sockets: the strict emulator's request log
(``RequestRecord``), the relay's ``/metrics``, and SSE bodies read by real
clients. Background work of the relay (deleting a chat, stopping a response)
is waited for by polling the emulator's log with a deadline, never by sleeping
a fixed time.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

from relay.emulator import EmulatorConfig, RunningEmulator, make_emulator_app
from relay.emulator.capture import redacted
from relay.emulator.state import RequestRecord
from tests.conftest import TOKEN, auth, parse_sse

__all__ = [
    "CHATS_NEW",
    "COMPLETIONS",
    "STOP",
    "UUID4",
    "Answer",
    "PathTap",
    "calls",
    "metric",
    "metrics_text",
    "post_json",
    "start_tapped_emulator",
    "stream_answer",
    "token_cookie",
    "wait_until",
]

CHATS_NEW = "/api/v2/chats/new"
COMPLETIONS = "/api/v2/chat/completions"
STOP = "/api/v2/chat/completions/stop"
UUID4 = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")

#: polls of ``wait_until``: 250 × 20 ms = a 5 s deadline.
_POLLS = 250
_POLL_S = 0.02


def token_cookie(token: str = TOKEN) -> str:
    """How the emulator's log shows the ``token`` cookie (and the Bearer) of ``token``."""
    return redacted(token)


async def wait_until(predicate: Callable[[], bool], what: str) -> None:
    """Poll ``predicate`` every 20 ms for at most 5 s; fail naming ``what`` if it never holds."""
    for _ in range(_POLLS):
        if predicate():
            return
        await asyncio.sleep(_POLL_S)
    raise AssertionError(f"not within 5 s: {what}")


def calls(emulator: RunningEmulator, method: str, path: str, *, prefix: bool = False) -> list[RequestRecord]:
    """The logged requests of one method on one path (or under it, with ``prefix``)."""
    return [r for r in emulator.state.log
            if r.method == method and (r.path.startswith(path) if prefix else r.path == path)]


async def metrics_text(session: aiohttp.ClientSession, relay: str) -> str:
    async with session.get(relay + "/metrics") as response:
        assert response.status == 200
        return await response.text()


def metric(text: str, series: str) -> float:
    """The value of one exposition line, named exactly (labels included); 0 when absent."""
    for line in text.splitlines():
        name, _, value = line.rpartition(" ")
        if name == series:
            return float(value)
    return 0.0


@dataclass
class Answer:
    """What a client got: status, headers, and for a stream its events and joined deltas."""

    status: int
    headers: dict[str, str]
    content: str = ""
    reasoning: str = ""
    events: list[str] = field(default_factory=list)
    body: Any = None


async def stream_answer(session: aiohttp.ClientSession, relay: str, body: dict[str, Any],
                        token: str = TOKEN) -> Answer:
    """POST a stream and read it to the end."""
    async with session.post(relay + "/v1/chat/completions", json={**body, "stream": True},
                            headers=auth(token)) as response:
        text = await response.text()
        answer = Answer(response.status, dict(response.headers))
    if answer.status != 200:
        answer.body = json.loads(text)
        return answer
    answer.events = parse_sse(text)
    for event in answer.events:
        if event == "[DONE]":
            continue
        chunk = json.loads(event)
        for choice in chunk.get("choices") or []:
            delta = choice.get("delta") or {}
            answer.content += delta.get("content") or ""
            answer.reasoning += delta.get("reasoning_content") or ""
    return answer


async def post_json(session: aiohttp.ClientSession, relay: str, body: dict[str, Any],
                    token: str = TOKEN) -> Answer:
    """POST a non-stream request; the decoded JSON body and the headers."""
    async with session.post(relay + "/v1/chat/completions", json={**body, "stream": False},
                            headers=auth(token)) as response:
        answer = Answer(response.status, dict(response.headers), body=await response.json())
    if answer.status == 200:
        message = answer.body["choices"][0]["message"]
        answer.content = message.get("content") or ""
        answer.reasoning = message.get("reasoning_content") or ""
    return answer


@dataclass
class PathTap:
    """The raw request target (path and query) of each emulator request, by its ``x-request-id``.

    The emulator logs ``request.path`` only; the stop call's ``?chat_id=`` lives in
    the query, so this tap, a middleware on the emulator's own socket, keeps it.
    """

    targets: dict[str, str] = field(default_factory=dict)

    def of(self, record: RequestRecord) -> str:
        return self.targets[record.headers["x-request-id"]]


async def start_tapped_emulator(config: EmulatorConfig | None = None) -> tuple[RunningEmulator, PathTap]:
    """A strict emulator on 127.0.0.1 whose raw request targets are kept (see ``PathTap``)."""
    from relay.emulator.handling import EMULATOR_STATE
    from relay.emulator.server import SHUTDOWN_TIMEOUT_S

    tap = PathTap()

    @web.middleware
    async def keep_target(request: web.Request, handler: Callable[[web.Request], Any]) -> web.StreamResponse:
        request_id = request.headers.get("x-request-id")
        if request_id:
            tap.targets[request_id] = request.raw_path
        response: web.StreamResponse = await handler(request)
        return response

    app = make_emulator_app(config)
    app.middlewares.insert(0, keep_target)
    runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=SHUTDOWN_TIMEOUT_S, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    port = runner.addresses[0][1]
    return RunningEmulator(f"http://127.0.0.1:{port}", app[EMULATOR_STATE], runner), tap
