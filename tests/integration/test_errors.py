"""Every failure reaches the client as one OpenAI error envelope with the right status.

The contract (STYLE.md §3): errors raised before the response headers are rendered
by the middleware as ``{"error": {"message", "type", "param", "code"}}`` with a JSON
content type; retries happen only for faults another attempt can fix (5xx, HTML
challenge, refused connection), never for a 4xx; and no Python traceback ever
reaches a client. Each test talks to the real relay over a socket, in front of the
real emulator, and reads the emulator's request log to count upstream attempts.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from relay.emulator import RequestRecord, RunningEmulator
from tests.conftest import MODEL, TOKEN, RelayFactory, auth, chat_body, directive, parse_sse

CHAT = "/v1/chat/completions"
MODELS = "/v1/models"
UPSTREAM_CHAT = "/api/chat/completions"


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


async def post_json(session: aiohttp.ClientSession, url: str, body: Any,
                    headers: dict[str, str] | None = None) -> tuple[aiohttp.ClientResponse, str]:
    async with asyncio.timeout(10):
        async with session.post(url, json=body, headers=auth() if headers is None else headers) as resp:
            return resp, await resp.text()


async def post_raw(session: aiohttp.ClientSession, url: str, data: Any,
                   headers: dict[str, str] | None = None) -> tuple[aiohttp.ClientResponse, str]:
    sent = {**auth(), "Content-Type": "application/json", **(headers or {})}
    async with asyncio.timeout(10):
        async with session.post(url, data=data, headers=sent) as resp:
            return resp, await resp.text()


async def get(session: aiohttp.ClientSession, url: str,
              headers: dict[str, str] | None = None) -> tuple[aiohttp.ClientResponse, str]:
    async with asyncio.timeout(10):
        async with session.get(url, headers=auth() if headers is None else headers) as resp:
            return resp, await resp.text()


def envelope(resp: aiohttp.ClientResponse, body: str, status: int) -> dict[str, Any]:
    """Check the OpenAI error envelope and return its ``error`` object."""
    assert resp.status == status, body
    assert resp.content_type == "application/json"
    assert "Traceback" not in body
    payload = json.loads(body)
    assert list(payload) == ["error"]
    error = payload["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str) and error["message"]
    assert isinstance(error["type"], str) and error["type"]
    return error  # type: ignore[no-any-return]


def answer_text(body: str, stream: bool) -> str:
    """The assistant text of a completion, streamed or not."""
    if not stream:
        return str(json.loads(body)["choices"][0]["message"]["content"])
    chunks = [json.loads(data) for data in parse_sse(body) if data != "[DONE]"]
    return "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c.get("choices"))


def chat_requests(emulator: RunningEmulator) -> list[RequestRecord]:
    """The chat completions the emulator received (model-list fetches left out)."""
    return [record for record in emulator.state.log if record.path == UPSTREAM_CHAT]


def closed_port() -> int:
    """A local port nothing listens on: bound, then released."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --- authentication ---------------------------------------------------------------


async def test_missing_authorization_is_401_without_calling_upstream(
        relay: str, session: aiohttp.ClientSession, emulator: RunningEmulator) -> None:
    resp, body = await post_json(session, relay + CHAT, chat_body(), headers={})
    error = envelope(resp, body, 401)
    assert error["type"] == "authentication_error"
    assert error["code"] == "invalid_api_key"
    assert emulator.state.log == []


async def test_non_bearer_authorization_scheme_is_401(
        relay: str, session: aiohttp.ClientSession, emulator: RunningEmulator) -> None:
    resp, body = await post_json(session, relay + CHAT, chat_body(), headers={"Authorization": "Basic x"})
    assert envelope(resp, body, 401)["code"] == "invalid_api_key"
    assert emulator.state.log == []


async def test_api_key_header_alone_authenticates(relay: str, session: aiohttp.ClientSession) -> None:
    """Azure-style clients and Immersive Translate send only ``api-key``."""
    resp, body = await post_json(session, relay + CHAT, chat_body(text=directive(reply="via api-key")),
                                 headers={"api-key": TOKEN})
    assert resp.status == 200, body
    assert json.loads(body)["choices"][0]["message"]["content"] == "via api-key"


async def test_expired_token_is_401_invalid_api_key_for_chat(
        relay: str, session: aiohttp.ClientSession) -> None:
    resp, body = await post_json(session, relay + CHAT, chat_body(), headers=auth("expired-token"))
    error = envelope(resp, body, 401)
    assert error["code"] == "invalid_api_key"
    assert error["type"] == "authentication_error"


async def test_expired_token_is_401_invalid_api_key_for_models(
        relay: str, session: aiohttp.ClientSession) -> None:
    resp, body = await get(session, relay + MODELS, headers=auth("expired-token"))
    assert envelope(resp, body, 401)["code"] == "invalid_api_key"


async def test_upstream_403_becomes_401(
        relay: str, session: aiohttp.ClientSession, emulator: RunningEmulator) -> None:
    """A 403 from Qwen Chat means the token is refused: the client must re-authenticate."""
    resp, body = await post_json(session, relay + CHAT, chat_body(text=directive(fault="http_403")))
    error = envelope(resp, body, 401)
    assert error["code"] == "invalid_api_key"
    assert "<html" not in error["message"].lower()
    assert len(chat_requests(emulator)) == 1


# --- request validation -----------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "what"),
    [
        (b'{"model": "qwen-max-latest", "messages": [', "truncated JSON"),
        (b"not json at all", "not JSON"),
        (b"", "empty body"),
    ],
)
async def test_invalid_json_body_is_400(relay: str, session: aiohttp.ClientSession,
                                        emulator: RunningEmulator, data: bytes, what: str) -> None:
    resp, body = await post_raw(session, relay + CHAT, data)
    assert envelope(resp, body, 400)["type"] == "invalid_request_error", what
    assert chat_requests(emulator) == []


async def test_non_utf8_body_is_400(relay: str, session: aiohttp.ClientSession,
                                    emulator: RunningEmulator) -> None:
    data = b'{"model": "qwen-max-latest", "messages": [{"role": "user", "content": "\xff\xfe caf\xe9"}]}'
    resp, body = await post_raw(session, relay + CHAT, data)
    envelope(resp, body, 400)
    assert chat_requests(emulator) == []


async def test_deeply_nested_json_is_400_and_server_keeps_answering(
        relay: str, session: aiohttp.ClientSession) -> None:
    """100 000 open brackets must not crash the parser (RecursionError) or the worker."""
    resp, body = await post_raw(session, relay + CHAT, b"[" * 100_000)
    envelope(resp, body, 400)
    resp, body = await post_json(session, relay + CHAT, chat_body(text=directive(reply="still here")))
    assert resp.status == 200, body
    assert json.loads(body)["choices"][0]["message"]["content"] == "still here"


async def test_messages_not_a_list_is_400_naming_messages(relay: str, session: aiohttp.ClientSession) -> None:
    resp, body = await post_json(session, relay + CHAT, {"model": MODEL, "messages": "hello"})
    error = envelope(resp, body, 400)
    assert error["param"] == "messages"
    assert error["type"] == "invalid_request_error"


async def test_temperature_as_string_is_400(relay: str, session: aiohttp.ClientSession) -> None:
    resp, body = await post_json(session, relay + CHAT, chat_body(temperature="0.5"))
    assert envelope(resp, body, 400)["param"] == "temperature"


async def test_missing_model_is_400(relay: str, session: aiohttp.ClientSession,
                                    emulator: RunningEmulator) -> None:
    resp, body = await post_json(session, relay + CHAT, {"messages": [{"role": "user", "content": "hi"}]})
    assert envelope(resp, body, 400)["param"] == "model"
    assert chat_requests(emulator) == []


async def test_unknown_request_fields_are_accepted(relay: str, session: aiohttp.ClientSession) -> None:
    """Newer SDKs add fields; the OpenAI API tolerates them, so must the relay."""
    body_in = chat_body(text=directive(reply="fine"), metadata={"a": "b"}, some_future_field=[1, 2],
                        parallel_tool_calls=False, user="u-1")
    resp, body = await post_json(session, relay + CHAT, body_in)
    assert resp.status == 200, body
    assert json.loads(body)["choices"][0]["message"]["content"] == "fine"


async def test_body_over_max_body_bytes_with_content_length_is_413(
        relay_factory: RelayFactory, session: aiohttp.ClientSession, emulator: RunningEmulator) -> None:
    relay = await relay_factory(max_body_bytes=4096)
    data = json.dumps(chat_body(text="x" * 10_000)).encode()
    resp, body = await post_raw(session, relay + CHAT, data)
    assert envelope(resp, body, 413)["code"] == "request_too_large"
    assert chat_requests(emulator) == []


async def test_chunked_body_over_max_body_bytes_is_413(
        relay_factory: RelayFactory, session: aiohttp.ClientSession, emulator: RunningEmulator) -> None:
    """Without Content-Length the limit is enforced while reading, with the same envelope."""
    relay = await relay_factory(max_body_bytes=4096)
    data = json.dumps(chat_body(text="x" * 10_000)).encode()

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(data), 1024):
            yield data[start:start + 1024]

    resp, body = await post_raw(session, relay + CHAT, chunks())
    assert resp.request_info.headers.get("Transfer-Encoding") == "chunked"
    assert envelope(resp, body, 413)["code"] == "request_too_large"
    assert chat_requests(emulator) == []


async def test_body_just_under_max_body_bytes_is_accepted(
        relay_factory: RelayFactory, session: aiohttp.ClientSession) -> None:
    relay = await relay_factory(max_body_bytes=4096)
    resp, body = await post_json(session, relay + CHAT, chat_body(text=directive(reply="small") + " " * 3000))
    assert resp.status == 200, body


# --- routing ----------------------------------------------------------------------


async def test_get_chat_completions_is_405(relay: str, session: aiohttp.ClientSession) -> None:
    resp, body = await get(session, relay + CHAT)
    assert envelope(resp, body, 405)["code"] == "method_not_allowed"


async def test_post_models_is_405(relay: str, session: aiohttp.ClientSession) -> None:
    resp, body = await post_json(session, relay + MODELS, {})
    assert envelope(resp, body, 405)["code"] == "method_not_allowed"


async def test_method_not_allowed_names_the_allowed_methods(relay: str, session: aiohttp.ClientSession) -> None:
    """RFC 9110 §15.5.6: a 405 response MUST carry ``Allow`` with the supported methods."""
    resp, body = await get(session, relay + CHAT)
    assert resp.status == 405, body
    assert "POST" in {m.strip() for m in resp.headers.get("Allow", "").split(",")}
    resp, body = await post_json(session, relay + MODELS, {})
    assert resp.status == 405, body
    assert "GET" in {m.strip() for m in resp.headers.get("Allow", "").split(",")}


async def test_unknown_path_is_404(relay: str, session: aiohttp.ClientSession) -> None:
    resp, body = await get(session, relay + "/nope")
    assert envelope(resp, body, 404)["code"] == "not_found"


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH"])
async def test_unknown_path_is_a_404_envelope_whatever_the_method(
        relay: str, session: aiohttp.ClientSession, method: str) -> None:
    async with session.request(method, relay + "/v1/nope", json={}) as resp:
        body = await resp.text()
    assert envelope(resp, body, 404)["code"] == "not_found"


async def test_every_known_path_answers_other_methods_with_a_405_envelope(
        relay: str, session: aiohttp.ClientSession) -> None:
    allowed = {"/healthz": {"GET", "HEAD"}, "/metrics": {"GET"}, MODELS: {"GET", "OPTIONS"},
               CHAT: {"POST", "OPTIONS"}}
    for path, methods in allowed.items():
        async with session.request("DELETE", relay + path) as resp:
            body = await resp.text()
        assert envelope(resp, body, 405)["code"] == "method_not_allowed", path
        assert set(resp.headers["Allow"].split(",")) == methods, path


async def test_unknown_model_is_404_model_not_found(
        relay: str, session: aiohttp.ClientSession, emulator: RunningEmulator) -> None:
    resp, body = await post_json(session, relay + CHAT, chat_body(model="no-such-model"))
    error = envelope(resp, body, 404)
    assert error["code"] == "model_not_found"
    assert error["param"] == "model"
    assert chat_requests(emulator) == []


# --- upstream status codes and retries --------------------------------------------


async def test_upstream_429_passes_retry_after_and_is_not_retried(
        relay: str, session: aiohttp.ClientSession, emulator: RunningEmulator) -> None:
    resp, body = await post_json(session, relay + CHAT,
                                 chat_body(text=directive(fault="http_429", retry_after=7)))
    error = envelope(resp, body, 429)
    assert error["type"] == "rate_limit_error"
    assert resp.headers.get("Retry-After") == "7"
    assert len(chat_requests(emulator)) == 1


async def test_upstream_500_twice_then_success_is_200_after_three_attempts(
        relay: str, session: aiohttp.ClientSession, emulator: RunningEmulator) -> None:
    text = directive(fault="http_500", fail_times=2, key="flaky-500", reply="third time lucky")
    resp, body = await post_json(session, relay + CHAT, chat_body(text=text))
    assert resp.status == 200, body
    assert json.loads(body)["choices"][0]["message"]["content"] == "third time lucky"
    attempts = chat_requests(emulator)
    assert [r.status for r in attempts] == [500, 500, 200]
    assert [r.attempt for r in attempts] == [1, 2, 3]


async def test_upstream_503_every_time_is_502_after_exactly_retries_attempts(
        relay_factory: RelayFactory, session: aiohttp.ClientSession, emulator: RunningEmulator) -> None:
    relay = await relay_factory(retries=3)
    resp, body = await post_json(session, relay + CHAT, chat_body(text=directive(fault="http_503")))
    error = envelope(resp, body, 502)
    assert error["type"] == "upstream_error"
    assert error["code"] == "upstream_unavailable"
    assert "<html" not in error["message"].lower()
    assert [r.status for r in chat_requests(emulator)] == [503, 503, 503]


async def test_retries_one_means_a_single_attempt(
        relay_factory: RelayFactory, session: aiohttp.ClientSession, emulator: RunningEmulator) -> None:
    relay = await relay_factory(retries=1)
    resp, body = await post_json(session, relay + CHAT, chat_body(text=directive(fault="http_503")))
    envelope(resp, body, 502)
    assert len(chat_requests(emulator)) == 1


async def test_html_challenge_every_time_is_502_upstream_challenge(
        relay: str, session: aiohttp.ClientSession, emulator: RunningEmulator) -> None:
    resp, body = await post_json(session, relay + CHAT, chat_body(text=directive(fault="html_challenge")))
    error = envelope(resp, body, 502)
    assert error["code"] == "upstream_challenge"
    assert "aliyun_waf" not in body and "<script" not in body
    assert len(chat_requests(emulator)) == 3


@pytest.mark.parametrize("stream", [False, True])
async def test_html_challenge_once_is_retried_to_200(
        relay: str, session: aiohttp.ClientSession, emulator: RunningEmulator, stream: bool) -> None:
    text = directive(fault="html_challenge", fail_times=1, key=f"waf-{stream}", reply="past the WAF")
    resp, body = await post_json(session, relay + CHAT, chat_body(stream=stream, text=text))
    assert resp.status == 200, body
    assert answer_text(body, stream) == "past the WAF"
    assert [r.fault for r in chat_requests(emulator)] == ["html_challenge", None]


async def test_connection_refused_is_502_quickly(relay_factory: RelayFactory,
                                                 session: aiohttp.ClientSession) -> None:
    relay = await relay_factory(upstream=f"http://127.0.0.1:{closed_port()}")
    async with asyncio.timeout(5):
        resp, body = await post_json(session, relay + CHAT, chat_body())
        assert envelope(resp, body, 502)["code"] == "upstream_unavailable"
        resp, body = await get(session, relay + MODELS)
        assert envelope(resp, body, 502)["code"] == "upstream_unavailable"


# --- timeouts ---------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
async def test_upstream_silent_before_headers_is_504_upstream_timeout(
        relay_factory: RelayFactory, session: aiohttp.ClientSession, emulator: RunningEmulator,
        stream: bool) -> None:
    relay = await relay_factory(timeout_s=0.5)
    resp, body = await post_json(session, relay + CHAT,
                                 chat_body(stream=stream, text=directive(fault="stall_before")))
    error = envelope(resp, body, 504)
    assert error["code"] == "upstream_timeout"
    assert len(chat_requests(emulator)) == 1  # a timeout is not retried


async def test_upstream_silent_after_stream_headers_is_504_json(
        relay_factory: RelayFactory, session: aiohttp.ClientSession, emulator: RunningEmulator) -> None:
    """Nothing was sent to the client yet, so the status can still say what happened."""
    relay = await relay_factory(timeout_s=0.5)
    resp, body = await post_json(session, relay + CHAT,
                                 chat_body(stream=True, text=directive(fault="stall_headers")))
    assert envelope(resp, body, 504)["code"] == "upstream_timeout"
    (record,) = chat_requests(emulator)
    assert record.status == 200  # the upstream did send its 200 headers before going silent


async def test_non_stream_stall_mid_is_504(relay_factory: RelayFactory, session: aiohttp.ClientSession) -> None:
    relay = await relay_factory(timeout_s=0.5)
    resp, body = await post_json(session, relay + CHAT, chat_body(text=directive(fault="stall_mid")))
    assert envelope(resp, body, 504)["code"] == "upstream_timeout"


# --- error bodies stay well-formed ------------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
async def test_upstream_detail_with_quotes_and_newlines_gives_valid_json(
        relay: str, session: aiohttp.ClientSession, stream: bool) -> None:
    """The emulator echoes an unknown directive field name in its 400 detail."""
    odd = 'odd "field" \\ back\nline two'
    resp, body = await post_json(session, relay + CHAT, chat_body(stream=stream, text=directive(**{odd: 1})))
    error = envelope(resp, body, 400)
    assert error["code"] == "upstream_rejected"
    assert odd in error["message"]


async def test_non_stream_in_body_upstream_error_is_502_envelope(
        relay: str, session: aiohttp.ClientSession) -> None:
    resp, body = await post_json(session, relay + CHAT, chat_body(text=directive(fault="in_stream_error")))
    error = envelope(resp, body, 502)
    assert error["code"] == "upstream_error"
    assert "Bad_Request" in error["message"]


async def test_non_stream_reset_is_502_after_retries(
        relay: str, session: aiohttp.ClientSession, emulator: RunningEmulator) -> None:
    """A connection dropped before any byte is retried, then reported as 502."""
    resp, body = await post_json(session, relay + CHAT, chat_body(text=directive(fault="reset_mid")))
    assert envelope(resp, body, 502)["code"] == "upstream_unavailable"
    assert len(chat_requests(emulator)) == 3
