"""Helpers shared by the phase and v2 emulator tests: raw clients, SSE splitting."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient

from relay.emulator import EMULATOR_STATE, EmulatorState

TOKEN = "test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
CHAT = "/api/chat/completions"
V2_NEW = "/api/v2/chats/new"
V2_CHAT = "/api/v2/chat/completions"
V2_STOP = "/api/v2/chat/completions/stop"
SSE_TYPE = "text/event-stream; charset=utf-8"
# Generous bound for awaiting an event; only reached when the behaviour is broken.
WAIT_S = 5.0

Client = TestClient[web.Request, web.Application]


def state_of(client: Client) -> EmulatorState:
    return client.app[EMULATOR_STATE]


def with_directive(text: str, **fields: Any) -> str:
    return f"{text}\n#emulator {json.dumps(fields)}" if fields else text


def data_payloads(raw: str) -> list[str]:
    """Split an SSE body into its ``data:`` payloads (trailing spaces kept)."""
    text = raw.replace("\r\n", "\n").replace("\r", "\n")
    return [line[5:].removeprefix(" ") for line in text.split("\n") if line.startswith("data:")]


def events(raw: str) -> list[Any]:
    """Decode every ``data:`` payload; ``[DONE]`` stays the string ``"[DONE]"``."""
    return [payload if payload == "[DONE]" else json.loads(payload) for payload in data_payloads(raw)]


def deltas(raw: str) -> list[dict[str, Any]]:
    """The ``choices[0].delta`` of every chunk event, in order."""
    return [
        event["choices"][0]["delta"]
        for event in events(raw)
        if isinstance(event, dict) and event.get("choices")
    ]


def phases(raw: str) -> list[tuple[str | None, str | None, str]]:
    """(phase, status, content) of every delta: the shape tests compare."""
    return [(d.get("phase"), d.get("status"), d.get("content", "")) for d in deltas(raw)]
