"""Non-streaming JSON bodies are compressed as the client's Accept-Encoding asks.

Negotiation follows RFC 9110 §12.5.3 (q-values; ``q=0`` excludes a coding); br wins
over gzip at equal weight; small bodies are sent as is (``compress_min_bytes``);
every negotiated JSON body says ``Vary: Accept-Encoding`` so a cache never serves
brotli to a client that cannot read it. The client here never decompresses for us
(``auto_decompress=False``): the test reads the raw bytes and decodes them itself.
"""

from __future__ import annotations

import asyncio
import gzip
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import brotli
import pytest

from tests.conftest import MODEL, RelayFactory, auth, chat_body, directive

CHAT = "/v1/chat/completions"
LONG_REPLY = "A long answer that is well worth compressing. " * 40  # ~1.9 kB


@pytest.fixture
async def raw_session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(auto_decompress=False) as client:
        yield client


async def fetch(session: aiohttp.ClientSession, method: str, url: str, accept_encoding: str,
                body: Any = None) -> tuple[aiohttp.ClientResponse, bytes]:
    headers = {**auth(), "Accept-Encoding": accept_encoding}
    async with asyncio.timeout(5):
        async with session.request(method, url, json=body, headers=headers) as resp:
            return resp, await resp.read()


def decode(resp: aiohttp.ClientResponse, raw: bytes) -> Any:
    coding = resp.headers.get("Content-Encoding")
    if coding == "br":
        raw = brotli.decompress(raw)
    elif coding == "gzip":
        raw = gzip.decompress(raw)
    else:
        assert coding is None, coding
    return json.loads(raw)


def vary(resp: aiohttp.ClientResponse) -> set[str]:
    return {item.strip().lower() for item in resp.headers.get("Vary", "").split(",")}


async def completion(session: aiohttp.ClientSession, relay: str, accept_encoding: str,
                     reply: str = LONG_REPLY) -> tuple[aiohttp.ClientResponse, bytes]:
    return await fetch(session, "POST", relay + CHAT, accept_encoding, chat_body(text=directive(reply=reply)))


@pytest.mark.parametrize(
    ("accept_encoding", "expected"),
    [
        ("br", "br"),
        ("gzip", "gzip"),
        ("gzip, deflate, br", "br"),
        ("br;q=0, gzip", "gzip"),
        ("gzip;q=1.0, br;q=0.5", "gzip"),
        ("*", "br"),
        ("identity", None),
        ("br;q=0, gzip;q=0", None),
    ],
)
async def test_long_completion_is_compressed_as_negotiated(
        relay: str, raw_session: aiohttp.ClientSession, accept_encoding: str, expected: str | None) -> None:
    resp, raw = await completion(raw_session, relay, accept_encoding)
    assert resp.status == 200
    assert resp.headers.get("Content-Encoding") == expected
    assert resp.content_type == "application/json"
    assert "accept-encoding" in vary(resp)
    if expected is not None:
        assert len(raw) < len(LONG_REPLY)  # really compressed, not just labelled
    payload = decode(resp, raw)
    assert payload["choices"][0]["message"]["content"] == LONG_REPLY
    assert payload["model"] == MODEL


async def test_body_below_compress_min_bytes_is_sent_as_is(
        relay: str, raw_session: aiohttp.ClientSession) -> None:
    resp, raw = await completion(raw_session, relay, "br, gzip", reply="short")
    assert resp.status == 200
    assert len(raw) < 512
    assert "Content-Encoding" not in resp.headers
    assert "accept-encoding" in vary(resp)
    assert json.loads(raw)["choices"][0]["message"]["content"] == "short"


async def test_compress_min_bytes_is_configurable(
        relay_factory: RelayFactory, raw_session: aiohttp.ClientSession) -> None:
    relay = await relay_factory(compress_min_bytes=100_000)
    resp, raw = await completion(raw_session, relay, "br, gzip")
    assert "Content-Encoding" not in resp.headers
    assert json.loads(raw)["choices"][0]["message"]["content"] == LONG_REPLY


@pytest.mark.parametrize("accept_encoding", ["br", "gzip", "identity"])
async def test_model_list_is_compressed_too(
        relay: str, raw_session: aiohttp.ClientSession, accept_encoding: str) -> None:
    """The list is served from a per-token cache; each coding must still decode to the same list."""
    for _ in range(2):  # the second answer comes from the compressed-variant cache
        resp, raw = await fetch(raw_session, "GET", relay + "/v1/models", accept_encoding)
        assert resp.status == 200
        assert resp.headers.get("Content-Encoding") == (None if accept_encoding == "identity" else accept_encoding)
        assert "accept-encoding" in vary(resp)
        payload = decode(resp, raw)
        assert payload["object"] == "list"
        assert MODEL in {model["id"] for model in payload["data"]}


async def test_model_list_cache_serves_each_coding_its_own_bytes(
        relay: str, raw_session: aiohttp.ClientSession) -> None:
    """br then gzip then identity for one token: no variant leaks into another's response."""
    listings = []
    for coding in ("br", "gzip", "identity", "br"):
        resp, raw = await fetch(raw_session, "GET", relay + "/v1/models", coding)
        listings.append(decode(resp, raw))
    assert all(listing == listings[0] for listing in listings)
