"""Browser clients can call the relay: preflights pass without auth, responses carry CORS.

Browser extensions (Immersive Translate, origin ``chrome-extension://…``) send
``api-key``; browser apps on the openai JS SDK send ten ``x-stainless-*`` headers. A
preflight that leaves out any requested header makes the browser drop the real
request, so the relay must allow every header it is asked about. With
``--cors-origins`` set, only the listed origins get ``Access-Control-Allow-Origin``.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import aiohttp
import pytest

from tests.conftest import RelayFactory, auth, chat_body, directive, parse_sse

EXTENSION = "chrome-extension://bpoadfkcbjbfhfodiogcnhhhpibjhbnh"
BASIC_HEADERS = ("authorization", "content-type", "api-key")
STAINLESS_HEADERS = (
    "authorization",
    "content-type",
    "x-stainless-arch",
    "x-stainless-lang",
    "x-stainless-os",
    "x-stainless-package-version",
    "x-stainless-retry-count",
    "x-stainless-runtime",
    "x-stainless-runtime-version",
    "x-stainless-timeout",
    "x-stainless-helper-method",
    "x-stainless-async",
)


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


async def preflight(session: aiohttp.ClientSession, url: str, origin: str, method: str,
                    requested: tuple[str, ...]) -> aiohttp.ClientResponse:
    headers = {
        "Origin": origin,
        "Access-Control-Request-Method": method,
        "Access-Control-Request-Headers": ",".join(requested),
    }
    async with asyncio.timeout(5):
        async with session.options(url, headers=headers) as resp:
            await resp.read()
            return resp


def header_set(value: str | None) -> set[str]:
    return {item.strip().lower() for item in (value or "").split(",") if item.strip()}


@pytest.mark.parametrize("requested", [BASIC_HEADERS, STAINLESS_HEADERS], ids=["api-key", "x-stainless"])
@pytest.mark.parametrize(("path", "method"), [("/v1/chat/completions", "POST"), ("/v1/models", "GET")])
async def test_preflight_allows_every_requested_header_without_auth(
        relay: str, session: aiohttp.ClientSession, path: str, method: str, requested: tuple[str, ...]) -> None:
    resp = await preflight(session, relay + path, EXTENSION, method, requested)
    assert 200 <= resp.status < 300
    assert resp.headers.get("Access-Control-Allow-Origin") in ("*", EXTENSION)
    allowed = header_set(resp.headers.get("Access-Control-Allow-Headers"))
    assert "*" in allowed or set(requested) <= allowed, allowed
    assert {"GET", "POST", "OPTIONS"} <= {m.upper() for m in header_set(resp.headers.get("Access-Control-Allow-Methods"))}
    assert int(resp.headers["Access-Control-Max-Age"]) > 0


async def test_preflight_with_mixed_case_headers_is_allowed(relay: str, session: aiohttp.ClientSession) -> None:
    """Header names are case-insensitive; the openai SDK sends ``X-Stainless-OS``."""
    requested = ("Authorization", "Content-Type", "X-Stainless-OS", "X-Stainless-Retry-Count")
    resp = await preflight(session, relay + "/v1/chat/completions", EXTENSION, "POST", requested)
    assert 200 <= resp.status < 300
    allowed = header_set(resp.headers.get("Access-Control-Allow-Headers"))
    assert {h.lower() for h in requested} <= allowed


async def test_post_from_origin_gets_allow_origin(relay: str, session: aiohttp.ClientSession) -> None:
    body = chat_body(text=directive(reply="cors ok"))
    async with asyncio.timeout(5):
        async with session.post(relay + "/v1/chat/completions", json=body,
                                headers={**auth(), "Origin": EXTENSION}) as resp:
            payload = await resp.json()
    assert resp.status == 200
    assert resp.headers.get("Access-Control-Allow-Origin") in ("*", EXTENSION)
    assert payload["choices"][0]["message"]["content"] == "cors ok"


async def test_streamed_response_gets_allow_origin(relay: str, session: aiohttp.ClientSession) -> None:
    body = chat_body(stream=True, text=directive(reply="streamed cors", chunks=3))
    async with asyncio.timeout(5):
        async with session.post(relay + "/v1/chat/completions", json=body,
                                headers={**auth(), "Origin": EXTENSION}) as resp:
            text = await resp.text()
    assert resp.status == 200
    assert resp.headers.get("Access-Control-Allow-Origin") in ("*", EXTENSION)
    assert parse_sse(text)[-1] == "[DONE]"


async def test_error_response_gets_allow_origin(relay: str, session: aiohttp.ClientSession) -> None:
    """Without ACAO on a 401 the browser hides the error and the user sees 'network error'."""
    async with asyncio.timeout(5):
        async with session.post(relay + "/v1/chat/completions", json=chat_body(),
                                headers={"Origin": EXTENSION}) as resp:
            payload = await resp.json()
    assert resp.status == 401
    assert payload["error"]["code"] == "invalid_api_key"
    assert resp.headers.get("Access-Control-Allow-Origin") in ("*", EXTENSION)


async def test_models_from_origin_gets_allow_origin(relay: str, session: aiohttp.ClientSession) -> None:
    async with asyncio.timeout(5):
        async with session.get(relay + "/v1/models", headers={**auth(), "Origin": EXTENSION}) as resp:
            await resp.read()
    assert resp.status == 200
    assert resp.headers.get("Access-Control-Allow-Origin") in ("*", EXTENSION)


async def test_configured_origin_is_echoed_and_others_refused(
        relay_factory: RelayFactory, session: aiohttp.ClientSession) -> None:
    relay = await relay_factory(cors_origins=("https://a.example",))
    url = relay + "/v1/chat/completions"

    resp = await preflight(session, url, "https://a.example", "POST", BASIC_HEADERS)
    assert 200 <= resp.status < 300
    assert resp.headers.get("Access-Control-Allow-Origin") == "https://a.example"
    assert "origin" in header_set(resp.headers.get("Vary"))

    async with asyncio.timeout(5):
        async with session.post(url, json=chat_body(text=directive(reply="allowed")),
                                headers={**auth(), "Origin": "https://a.example"}) as resp:
            await resp.read()
    assert resp.status == 200
    assert resp.headers.get("Access-Control-Allow-Origin") == "https://a.example"
    assert "origin" in header_set(resp.headers.get("Vary"))

    resp = await preflight(session, url, "https://b.example", "POST", BASIC_HEADERS)
    assert resp.status == 403
    assert "Access-Control-Allow-Origin" not in resp.headers

    async with asyncio.timeout(5):
        async with session.post(url, json=chat_body(text=directive(reply="no cors")),
                                headers={**auth(), "Origin": "https://b.example"}) as resp:
            text = await resp.text()
    assert "Access-Control-Allow-Origin" not in resp.headers
    assert json.loads(text)["choices"][0]["message"]["content"] == "no cors"


async def test_refused_preflight_is_an_error_envelope(
        relay_factory: RelayFactory, session: aiohttp.ClientSession) -> None:
    relay = await relay_factory(cors_origins=("https://a.example",))
    headers = {"Origin": "https://b.example", "Access-Control-Request-Method": "POST"}
    async with asyncio.timeout(5):
        async with session.options(relay + "/v1/chat/completions", headers=headers) as resp:
            payload = await resp.json()
    assert resp.status == 403
    assert payload["error"]["code"] == "origin_not_allowed"
    assert set(payload["error"]) == {"message", "type", "param", "code"}


async def test_allow_origin_star_is_on_every_v1_response_even_without_origin(relay: str) -> None:
    """With the default "*", /v1 responses carry Access-Control-Allow-Origin whatever the request."""
    async with aiohttp.ClientSession() as session:
        async with session.get(relay + "/v1/models", headers={"Authorization": "Bearer t"}) as response:
            assert response.headers.get("Access-Control-Allow-Origin") == "*"
        async with session.get(relay + "/v1/models") as response:  # a 401 too
            assert response.status == 401
            assert response.headers.get("Access-Control-Allow-Origin") == "*"
