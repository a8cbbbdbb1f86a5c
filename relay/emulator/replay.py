"""``python -m relay.emulator --replay DIR``: answer with a ``--record`` directory's exchanges.

Each request gets the next unused recording (in file order, which is the order
the exchanges started) of the same method whose path matches; the query is not
compared. Matching rule, segment by segment: a recorded segment that is a
hashed id (``h:<12 hex>``, see ``relay.upstream.recording``) matches any one
segment, every other segment must be equal. So ``DELETE /api/v2/chats/h:0a1b…``
matches the delete of whichever chat the relay names, including the ``h:`` id
that the replayed ``chats/new`` answer gave it.

The answer is the recorded status, headers and body bytes (the body as the
relay read it, after ``Content-Encoding`` was decoded; a stream is sent as one
body). Hop-by-hop headers, ``Content-Length``, ``Transfer-Encoding`` and
``Content-Encoding`` are left out: aiohttp frames the body itself. A recording
without a response (the connection failed) is never served. Nothing left →
404 ``{"detail": "no recording left for METHOD PATH"}``.

``GET /_emulator/log`` lists what was asked, as the emulator's own log does.
"""

from __future__ import annotations

import base64
import json
import os
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from multidict import CIMultiDict

from relay.emulator.capture import capture_headers
from relay.emulator.state import EmulatorState

__all__ = ["REPLAY_STATE", "Recording", "load_recordings", "make_replay_app", "matches"]

#: headers a proxy never forwards (RFC 9110 §7.6.1), and the framing aiohttp redoes.
_DROPPED = frozenset({
    "connection", "keep-alive", "proxy-connection", "proxy-authenticate", "proxy-authorization", "te",
    "trailer", "transfer-encoding", "upgrade", "content-length", "content-encoding",
})
_HASHED_PREFIX = "h:"


@dataclass(slots=True)
class Recording:
    """One recorded exchange that can answer a request."""

    name: str
    method: str
    path: str
    status: int
    headers: list[tuple[str, str]]
    body: bytes
    used: bool = False


@dataclass(slots=True)
class ReplayState:
    recordings: list[Recording]
    log: EmulatorState


REPLAY_STATE = web.AppKey("replay_state", ReplayState)


def load_recordings(directory: str) -> list[Recording]:
    """Every file of ``directory`` with a response, in name (= start) order."""
    recordings = []
    for name in sorted(os.listdir(directory)):
        if not name.endswith(".json"):
            continue
        with open(os.path.join(directory, name), encoding="utf-8") as file:
            record: dict[str, Any] = json.load(file)
        response = record.get("response")
        if not isinstance(response, dict):
            continue
        request = record["request"]
        headers = [(str(k), str(v)) for k, v in response.get("headers", [])
                   if str(k).lower() not in _DROPPED]
        recordings.append(Recording(name, str(request["method"]).upper(), str(request["path"]).partition("?")[0],
                                    int(response["status"]), headers,
                                    base64.b64decode(response.get("body_base64", ""))))
    return recordings


def matches(recorded: str, path: str) -> bool:
    """The module docstring's rule: equal segments, a hashed id matching any one segment."""
    want, got = recorded.split("/"), path.split("/")
    return len(want) == len(got) and all(w == g or w.startswith(_HASHED_PREFIX) for w, g in zip(want, got, strict=True))


def make_replay_app(directory: str) -> web.Application:
    """The replay server of ``directory``'s recordings."""
    app = web.Application(client_max_size=32 * 1024 * 1024)
    app[REPLAY_STATE] = ReplayState(load_recordings(directory), EmulatorState())
    app.router.add_get("/_emulator/log", _log)
    app.router.add_route("*", "/{path:.*}", _answer)
    return app


async def _answer(request: web.Request) -> web.Response:
    state = request.app[REPLAY_STATE]
    record = state.log.begin(request.method, request.path, None)
    record.headers = capture_headers(request.headers.items())
    await request.read()  # the whole request, before answering (as the service does)
    found = next((r for r in state.recordings
                  if not r.used and r.method == request.method and matches(r.path, request.path)), None)
    record.finished = True
    if found is None:
        record.status = 404
        return web.json_response({"detail": f"no recording left for {request.method} {request.path}"}, status=404)
    found.used = True
    record.status = found.status
    # Given whole, so aiohttp adds no Content-Type of its own beside the recorded one.
    return web.Response(status=found.status, body=found.body, headers=CIMultiDict(found.headers))


async def _log(request: web.Request) -> web.Response:
    log = request.app[REPLAY_STATE].log.log
    return web.json_response([record.to_json() for record in log])
