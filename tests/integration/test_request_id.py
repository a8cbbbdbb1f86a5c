"""Every response names its request: X-Request-Id, the client's own when it is sane.

The id is set by the middleware and written by the response-headers hook, which
reads it back from the request's ContextVar; a plain answer is prepared after the
middleware returned and a stream inside the handler, so both paths are checked.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from tests.conftest import auth, chat_body, directive, parse_sse

CHAT = "/v1/chat/completions"
GENERATED = re.compile(r"[0-9a-f]{24}")


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


async def request_id(session: aiohttp.ClientSession, method: str, url: str, headers: dict[str, str],
                     body: Any = None) -> tuple[str, str]:
    async with session.request(method, url, json=body, headers=headers) as resp:
        return resp.headers.get("X-Request-Id", ""), await resp.text()


@pytest.mark.parametrize(("method", "path", "body"), [
    ("GET", "/v1/models", None),
    ("POST", CHAT, chat_body(text=directive(reply="plain"))),
    ("POST", CHAT, chat_body(stream=True, text=directive(reply="streamed", chunks=2))),
    ("GET", "/nope", None),
    ("GET", "/healthz", None),
])
async def test_client_request_id_is_echoed_on_every_kind_of_response(
        relay: str, session: aiohttp.ClientSession, method: str, path: str, body: Any) -> None:
    given, _ = await request_id(session, method, relay + path, {**auth(), "X-Request-Id": "client-chose_this-1"},
                                body)
    assert given == "client-chose_this-1"
    fresh, text = await request_id(session, method, relay + path, {**auth(), "X-Request-Id": "bad id!"}, body)
    assert GENERATED.fullmatch(fresh), fresh
    if body is not None and body.get("stream"):
        assert parse_sse(text)[-1] == "[DONE]"


async def test_each_request_gets_its_own_id(relay: str, session: aiohttp.ClientSession) -> None:
    """Ids do not leak from one request to the next on a kept-alive connection."""
    ids = [(await request_id(session, "GET", relay + "/v1/models", auth()))[0] for _ in range(5)]
    assert all(GENERATED.fullmatch(value) for value in ids)
    assert len(set(ids)) == len(ids)
