"""Logs: one JSON access line per request, and a caller's token never written anywhere.

A Qwen Chat token is a full session credential. It travels in every request, so
every path that logs (access line, retries, stream errors, unhandled errors) must
leave it out (logs.py: ``redact`` is only the last line of defence). The canary is
checked both in the JSON lines as written (``JsonFormatter`` at emit time) and in the
raw records (message, arguments, ``fields``), which other handlers would print.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from relay.logs import JsonFormatter
from tests.conftest import auth, chat_body, directive, parse_sse

CANARY = "canary-SECRET-5f1e"
EXPIRED = "expired-token"
CHAT = "/v1/chat/completions"


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


@pytest.fixture
def json_caplog(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    """Capture every ``relay`` logger at DEBUG, formatted as the relay formats its lines."""
    caplog.set_level(logging.DEBUG, logger="relay")
    caplog.handler.setFormatter(JsonFormatter())
    return caplog


def access_lines(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    lines = [line for line in caplog.text.splitlines() if line.strip()]
    entries = [json.loads(line) for line in lines]  # every line is one JSON object
    return [entry for entry in entries if entry["logger"] == "relay.access"]


async def wait_for_access_lines(caplog: pytest.LogCaptureFixture, count: int) -> list[dict[str, Any]]:
    """A stream's access line is written after its last byte reached the client; wait for it."""
    async with asyncio.timeout(2):
        while len(access_lines(caplog)) < count:
            await asyncio.sleep(0)  # yield to the relay's handler task, no timed wait
    return access_lines(caplog)


def raw_text(record: logging.LogRecord) -> str:
    """Everything a record carries that a formatter of any kind might print."""
    parts = [str(record.msg), repr(record.args), repr(getattr(record, "fields", None)),
             record.exc_text or ""]
    if record.exc_info and record.exc_info[1] is not None:
        parts.append(repr(record.exc_info[1]))
    return "\n".join(parts)


async def request(session: aiohttp.ClientSession, method: str, url: str, headers: dict[str, str],
                  body: Any = None) -> tuple[int, str, str]:
    async with asyncio.timeout(5):
        async with session.request(method, url, json=body, headers=headers) as resp:
            return resp.status, await resp.text(), resp.headers.get("X-Request-Id", "")


async def test_token_never_reaches_any_log_line(
        relay: str, session: aiohttp.ClientSession, json_caplog: pytest.LogCaptureFixture) -> None:
    canary = auth(CANARY)
    calls: list[tuple[str, str, dict[str, str], Any, int]] = [
        ("POST", CHAT, canary, chat_body(text=directive(reply="plain")), 200),
        ("POST", CHAT, canary, chat_body(stream=True, text=directive(reply="streamed", chunks=3)), 200),
        ("GET", "/v1/models", canary, None, 200),
        ("GET", "/v1/models", {"api-key": CANARY}, None, 200),
        ("POST", CHAT, auth(EXPIRED), chat_body(), 401),
        ("GET", "/v1/models", auth(EXPIRED), None, 401),
        # paths that log on their own: a retry, an in-stream error, garbage skipped at DEBUG
        ("POST", CHAT, canary, chat_body(text=directive(fault="http_500", fail_times=1, key="k", reply="r")), 200),
        ("POST", CHAT, canary, chat_body(stream=True, text=directive(fault="in_stream_error", after=1)), 200),
        ("POST", CHAT, canary, chat_body(stream=True, text=directive(garbage=True, reply="g")), 200),
        ("POST", CHAT, canary, chat_body(text=directive(fault="http_429")), 429),
        ("POST", CHAT, {"Authorization": f"Basic {CANARY}"}, chat_body(), 401),
    ]
    for method, path, headers, body, expected in calls:
        status, text, _ = await request(session, method, relay + path, headers, body)
        assert status == expected, (path, text)
        assert CANARY not in text and EXPIRED not in text
    await wait_for_access_lines(json_caplog, len(calls))

    assert json_caplog.records, "nothing was logged: the test would prove nothing"
    assert {r.name for r in json_caplog.records} >= {"relay.access", "relay.upstream", "relay.error"}
    assert CANARY not in json_caplog.text and EXPIRED not in json_caplog.text
    formatter = JsonFormatter()
    for record in json_caplog.records:
        for written in (formatter.format(record), raw_text(record)):
            assert CANARY not in written, written
            assert EXPIRED not in written, written


async def test_access_log_has_one_json_line_per_request(
        relay: str, session: aiohttp.ClientSession, json_caplog: pytest.LogCaptureFixture) -> None:
    calls: list[tuple[str, str, dict[str, str], Any, int]] = [
        ("POST", CHAT, auth(), chat_body(text=directive(reply="one")), 200),
        ("POST", CHAT, auth(), chat_body(stream=True, text=directive(reply="two", chunks=2)), 200),
        ("GET", "/v1/models", auth(), None, 200),
        ("POST", CHAT, {}, chat_body(), 401),
        ("GET", "/nope", auth(), None, 404),
        ("POST", CHAT, auth(), chat_body(model="no-such-model"), 404),
        ("GET", "/healthz", {}, None, 200),
    ]
    request_ids = []
    for method, path, headers, body, expected in calls:
        status, text, request_id = await request(session, method, relay + path, headers, body)
        assert status == expected, (path, text)
        if body is not None and body.get("stream") and status == 200:
            assert parse_sse(text)[-1] == "[DONE]"
        request_ids.append(request_id)
    lines = await wait_for_access_lines(json_caplog, len(calls))

    assert len(lines) == len(calls)
    assert sorted((e["method"], e["path"], e["status"]) for e in lines) == sorted(
        (method, path, status) for method, path, _, _, status in calls)
    for entry in lines:
        assert entry["level"] == "info"
        assert entry["event"] == "request"
        assert isinstance(entry["duration_ms"], int | float) and entry["duration_ms"] >= 0
    assert sorted(e["request_id"] for e in lines) == sorted(request_ids)
    by_path = {(e["method"], e["path"], e["status"]): e for e in lines}
    assert by_path[("POST", CHAT, 401)]["error_code"] == "invalid_api_key"
    assert by_path[("POST", CHAT, 404)]["error_code"] == "model_not_found"


async def test_client_gone_mid_stream_is_logged_as_499(
        relay: str, json_caplog: pytest.LogCaptureFixture) -> None:
    """A stream the client abandoned still gets its one access line, status 499."""
    body = chat_body(stream=True, text=directive(fault="stall_mid", after=1, reply="abandoned"))
    async with aiohttp.ClientSession() as session:
        async with asyncio.timeout(5):
            resp = await session.post(relay + CHAT, json=body, headers=auth())
            assert resp.status == 200
            await resp.content.readline()
        resp.close()
    (line,) = await wait_for_access_lines(json_caplog, 1)
    assert (line["method"], line["path"], line["status"]) == ("POST", CHAT, 499)
    assert line["stream"] is True
