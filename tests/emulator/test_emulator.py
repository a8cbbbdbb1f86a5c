"""The Qwen Chat emulator speaks qwen-v1 and injects the faults the relay must survive.

Each test drives the real aiohttp app over a socket (pytest-aiohttp) and
synchronises on the emulator's events, never on sleeps.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import sys
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from pytest_aiohttp import AiohttpClient

from relay.emulator import (
    EMULATOR_STATE,
    DirectiveError,
    EmulatorConfig,
    EmulatorState,
    make_emulator_app,
    parse_directive,
    start_emulator,
)
from relay.emulator.faults import NO_DIRECTIVE
from relay.emulator.script import Abort, Stall, Write, build_answer, event_texts, plan_stream

TOKEN = "test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
CHAT = "/api/chat/completions"
# Generous bound for awaiting an event; only reached when the behaviour is broken.
WAIT_S = 5.0

Client = TestClient[web.Request, web.Application]


@pytest.fixture
async def client(aiohttp_client: AiohttpClient) -> Client:
    return await aiohttp_client(make_emulator_app())


def state_of(client: Client) -> EmulatorState:
    return client.app[EMULATOR_STATE]


def chat_body(
    text: str = "hi", *, directive: dict[str, Any] | None = None, stream: bool = True, **extra: Any
) -> dict[str, Any]:
    if directive is not None:
        text = f"{text}\n#emulator {json.dumps(directive)}"
    body: dict[str, Any] = {
        "model": "qwen-max-latest",
        "messages": [{"role": "user", "content": text}],
        "stream": stream,
    }
    body.update(extra)
    return body


def data_payloads(raw: str) -> list[str]:
    """Split an SSE body into its ``data:`` payloads, for any line ending."""
    text = raw.replace("\r\n", "\n").replace("\r", "\n")
    payloads = []
    for line in text.split("\n"):
        if line.startswith("data:"):
            payloads.append(line[5:].removeprefix(" "))
    return payloads


def contents(raw: str) -> list[str]:
    """Return ``delta.content`` of every well-formed chunk event."""
    found = []
    for payload in data_payloads(raw):
        try:
            event = json.loads(payload)
        except ValueError:
            continue
        if isinstance(event, dict) and event.get("choices"):
            found.append(event["choices"][0]["delta"]["content"])
    return found


async def stream_text(client: Client, body: dict[str, Any]) -> str:
    async with client.post(CHAT, json=body, headers=AUTH) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"] == "text/event-stream; charset=utf-8"
        return await resp.text()


async def test_models_lists_v1_shape(client: Client) -> None:
    async with client.get("/api/models", headers=AUTH) as resp:
        assert resp.status == 200
        body = await resp.json()
    ids = [model["id"] for model in body["data"]]
    assert ids == list(EmulatorConfig().models)
    first = body["data"][0]
    assert first["object"] == "model" and first["owned_by"] == "qwen"
    meta = first["info"]["meta"]
    assert isinstance(meta["capabilities"]["vision"], bool)
    assert meta["chat_type"] == ["t2t", "search"]
    assert "thinking" in meta["abilities"]


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer "}, {"Authorization": "Bearer expired-token"}],
    ids=["missing", "empty", "expired"],
)
async def test_bad_token_gets_401_detail(client: Client, headers: dict[str, str]) -> None:
    expected = {"detail": "Your session has expired or the token is invalid. Please sign in again."}
    async with client.get("/api/models", headers=headers) as resp:
        assert resp.status == 401
        assert await resp.json() == expected
    async with client.post(CHAT, json=chat_body(), headers=headers) as resp:
        assert resp.status == 401
        assert await resp.json() == expected


async def test_valid_tokens_restricts_access(aiohttp_client: AiohttpClient) -> None:
    app = make_emulator_app(EmulatorConfig(valid_tokens=frozenset({"only-me"})))
    client = await aiohttp_client(app)
    async with client.get("/api/models", headers=AUTH) as resp:
        assert resp.status == 401
    async with client.get("/api/models", headers={"Authorization": "Bearer only-me"}) as resp:
        assert resp.status == 200


async def test_stream_is_cumulative_and_ends_with_done(client: Client) -> None:
    reply = "The quick brown fox jumps over the lazy dog"
    raw = await stream_text(client, chat_body(directive={"reply": reply, "chunks": 5}))
    texts = contents(raw)
    assert len(texts) == 5
    for earlier, later in itertools.pairwise(texts):
        assert later.startswith(earlier) and len(later) > len(earlier)
    assert texts[-1] == reply
    assert data_payloads(raw)[-1] == "[DONE]"
    assert raw.endswith("data: [DONE]\n\n")


async def test_default_answer_echoes_last_user_message_without_directive(client: Client) -> None:
    body = chat_body("what is 2+2?", directive={"chunks": 2}, stream=False)
    body["messages"][0]["content"] = [
        {"type": "text", "text": "what is 2+2?"},
        {"type": "text", "text": '#emulator {"chunks": 2}'},
    ]
    async with client.post(CHAT, json=body, headers=AUTH) as resp:
        answer = (await resp.json())["choices"][0]["message"]["content"]
    assert answer == "Hello! You said: what is 2+2?"


async def test_incremental_output_sends_increments(client: Client) -> None:
    body = chat_body(directive={"reply": "abcdef", "chunks": 3}, incremental_output=True)
    assert contents(await stream_text(client, body)) == ["ab", "cd", "ef"]


async def test_pieces_give_repeated_tokens_cumulatively(client: Client) -> None:
    raw = await stream_text(client, chat_body(directive={"pieces": ["ha", "ha", "ha"]}))
    assert contents(raw) == ["ha", "haha", "hahaha"]


async def test_done_false_closes_after_last_event(client: Client) -> None:
    raw = await stream_text(client, chat_body(directive={"reply": "hey", "done": False}))
    assert "[DONE]" not in raw
    assert contents(raw)[-1] == "hey"


async def test_crlf_line_endings(client: Client) -> None:
    raw = await stream_text(client, chat_body(directive={"reply": "hey", "line_ending": "\r\n"}))
    assert raw.endswith("data: [DONE]\r\n\r\n")
    assert "\n" not in raw.replace("\r\n", "")
    assert contents(raw)[-1] == "hey"


async def test_byte_split_reassembles_multibyte_text(client: Client) -> None:
    """Writes of one byte each cut UTF-8 characters; the bytes must still add up."""
    reply = "héllo wörld 你好 🎉"
    whole = await stream_text(client, chat_body(directive={"reply": reply, "chunks": 3}))
    body = chat_body(directive={"reply": reply, "chunks": 3, "split": "byte"})
    async with client.post(CHAT, json=body, headers=AUTH) as resp:
        reads = [chunk async for chunk in resp.content.iter_any()]
    assert len(reads) > 1
    assert b"".join(reads).decode() == whole
    assert contents(whole)[-1] == reply


async def test_coalesce_sends_whole_body_in_one_write(client: Client) -> None:
    body = chat_body(directive={"reply": "abcdef", "chunks": 3, "split": "coalesce"})
    assert contents(await stream_text(client, body)) == ["ab", "abcd", "abcdef"]


async def test_framing_noise_keeps_the_real_events(client: Client) -> None:
    directive = {"reply": "abcd", "chunks": 2, "keepalive": True, "trailing_space": True, "garbage": True}
    raw = await stream_text(client, chat_body(directive=directive))
    assert ": keep-alive\n" in raw
    assert '"}}]} \n' in raw
    payloads = data_payloads(raw)
    assert {"this is not json", "[1,2,3]", "42", '{"choices":[]}'} <= {p.rstrip() for p in payloads}
    assert contents(raw) == ["ab", "abcd"]


async def test_html_challenge_is_a_200_html_page(client: Client) -> None:
    body = chat_body(directive={"fault": "html_challenge"})
    async with client.post(CHAT, json=body, headers=AUTH) as resp:
        assert resp.status == 200
        assert resp.content_type == "text/html"
        page = await resp.text()
    assert page.startswith("<!doctypehtml>") and "aliyun_waf_aa" in page


@pytest.mark.parametrize(
    ("fault", "status"),
    [("http_500", 500), ("http_502", 502), ("http_503", 503), ("http_500_empty", 500)],
)
async def test_http_fault_with_fail_times_then_success(client: Client, fault: str, status: int) -> None:
    directive = {"fault": fault, "key": f"k-{fault}", "fail_times": 2, "reply": "ok"}
    for _ in range(2):
        async with client.post(CHAT, json=chat_body(directive=directive), headers=AUTH) as resp:
            assert resp.status == status
            page = await resp.read()
            assert (page == b"") == (fault == "http_500_empty")
    assert contents(await stream_text(client, chat_body(directive=directive)))[-1] == "ok"
    log = state_of(client).log
    assert [r.attempt for r in log] == [1, 2, 3]
    assert [r.fault for r in log] == [fault, fault, None]
    assert [r.status for r in log] == [status, status, 200]


async def test_fail_times_without_key_counts_identical_directives(client: Client) -> None:
    body = chat_body(directive={"fault": "http_503", "fail_times": 1}, stream=False)
    statuses = []
    for _ in range(2):
        async with client.post(CHAT, json=body, headers=AUTH) as resp:
            statuses.append(resp.status)
    assert statuses == [503, 200]


async def test_429_sends_retry_after(client: Client) -> None:
    body = chat_body(directive={"fault": "http_429", "retry_after": 7})
    async with client.post(CHAT, json=body, headers=AUTH) as resp:
        assert resp.status == 429
        assert resp.headers["Retry-After"] == "7"


async def test_stall_mid_with_stall_ms_then_completes(client: Client) -> None:
    directive = {"reply": "abcdef", "chunks": 3, "fault": "stall_mid", "after": 1, "stall_ms": 50}
    loop = asyncio.get_running_loop()
    started = loop.time()
    raw = await stream_text(client, chat_body(directive=directive))
    assert loop.time() - started >= 0.05
    assert contents(raw) == ["ab", "abcd", "abcdef"]
    assert raw.endswith("data: [DONE]\n\n")
    assert state_of(client).streams_completed == 1


async def test_reset_mid_raises_client_payload_error(client: Client) -> None:
    directive = {"reply": "abcdef", "chunks": 3, "fault": "reset_mid", "after": 2}
    lines: list[bytes] = []
    async with client.post(CHAT, json=chat_body(directive=directive), headers=AUTH) as resp:
        assert resp.status == 200
        with pytest.raises(aiohttp.ClientPayloadError):
            async for line in resp.content:
                lines.append(line)
    assert contents(b"".join(lines).decode()) == ["ab", "abcd"]
    state = state_of(client)
    assert state.log[0].events_sent == 2
    assert state.streams_reset == 1 and state.open_streams == 0
    assert not state.log[0].client_disconnected


async def test_oversized_line_has_requested_size(client: Client) -> None:
    size = 100_000
    directive = {"reply": "abcdef", "chunks": 3, "fault": "oversized_line", "after": 1, "size": size}
    raw = await stream_text(client, chat_body(directive=directive))
    lines = raw.split("\n")
    big = [line for line in lines if len(line) > 1000]
    assert [len(line.encode()) for line in big] == [size]
    assert json.loads(big[0].removeprefix("data: "))["choices"][0]["delta"]["content"] == "ab"
    assert contents(raw)[-1] == "abcdef" and raw.endswith("data: [DONE]\n\n")


async def test_in_stream_error_ends_without_done(client: Client) -> None:
    directive = {"reply": "abcd", "chunks": 2, "fault": "in_stream_error", "after": 1}
    raw = await stream_text(client, chat_body(directive=directive))
    payloads = data_payloads(raw)
    assert json.loads(payloads[-1]) == {"error": {"code": "Bad_Request", "details": "internal error"}}
    assert contents(raw) == ["ab"] and "[DONE]" not in raw


async def test_think_is_inline_in_stream_and_non_stream(client: Client) -> None:
    directive = {"think": "let me see", "reply": "42", "chunks": 4}
    expected = "<think>let me see</think>42"
    assert contents(await stream_text(client, chat_body(directive=directive)))[-1] == expected
    async with client.post(CHAT, json=chat_body(directive=directive, stream=False), headers=AUTH) as resp:
        assert (await resp.json())["choices"][0]["message"]["content"] == expected


async def test_non_stream_shape_and_usage_switch(client: Client) -> None:
    async with client.post(
        CHAT, json=chat_body(directive={"reply": "hey"}, stream=False), headers=AUTH
    ) as resp:
        assert resp.status == 200
        body = await resp.json()
    assert body["choices"][0]["message"] == {"role": "assistant", "content": "hey"}
    assert body["choices"][0]["finish_reason"] == "stop"
    assert (
        body["usage"]["total_tokens"] == body["usage"]["prompt_tokens"] + body["usage"]["completion_tokens"]
    )
    directive = {"reply": "hey", "usage": False}
    async with client.post(CHAT, json=chat_body(directive=directive, stream=False), headers=AUTH) as resp:
        assert "usage" not in await resp.json()


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"model": "no-such-model", "messages": [{"role": "user", "content": "hi"}]}, 404),
        ({"model": "qwen-max-latest", "messages": []}, 400),
        ({"model": "qwen-max-latest", "messages": "hi"}, 400),
        (chat_body(directive={"fault": "no_such_fault"}), 400),
        (chat_body(directive={"chunkz": 3}), 400),
    ],
    ids=["unknown-model", "empty-messages", "messages-not-list", "unknown-fault", "unknown-field"],
)
async def test_bad_requests_get_detail(client: Client, body: dict[str, Any], status: int) -> None:
    async with client.post(CHAT, json=body, headers=AUTH) as resp:
        assert resp.status == status
        assert isinstance((await resp.json())["detail"], str)


async def test_invalid_json_is_400(client: Client) -> None:
    async with client.post(CHAT, data=b"{not json", headers=AUTH) as resp:
        assert resp.status == 400
        assert "detail" in await resp.json()
    async with client.post(
        CHAT, json={"model": "no-such-model", "messages": [{"role": "user"}]}, headers=AUTH
    ) as resp:
        assert resp.status == 404
        assert await resp.json() == {"detail": "Model not found"}


async def test_log_records_fingerprint_never_the_token(client: Client) -> None:
    canary = "canary-token-5f1d9c"
    headers = {"Authorization": f"Bearer {canary}"}
    async with client.post(CHAT, json=chat_body(directive={"reply": "x"}), headers=headers) as resp:
        await resp.read()
    async with client.get("/_emulator/log") as resp:
        text = await resp.text()
    assert canary not in text
    (record,) = json.loads(text)
    assert record["token_fingerprint"] == hashlib.sha256(canary.encode()).hexdigest()[:12]
    assert record["model"] == "qwen-max-latest" and record["stream"] is True
    assert record["directive"] == {"reply": "x"} and record["status"] == 200
    assert record["events_sent"] == 1 and record["client_disconnected"] is False
    async with client.post("/_emulator/reset") as resp:
        assert resp.status == 200
    assert state_of(client).log == [] and state_of(client).requests == 0


async def test_client_closing_mid_stream_sets_peer_closed(client: Client) -> None:
    """A client that leaves during a stall is noticed at once (relay disconnect tests rely on it)."""
    state = state_of(client)
    directive = {"reply": "abcdef", "chunks": 3, "fault": "stall_mid", "after": 1}
    resp = await client.post(CHAT, json=chat_body(directive=directive), headers=AUTH)
    assert (
        await resp.content.readline()
        == b'data: {"choices":[{"delta":{"role":"assistant","content":"ab"}}]}\n'
    )
    assert state.first_chunk_sent.is_set() and state.open_streams == 1
    resp.close()
    async with asyncio.timeout(WAIT_S):
        await state.peer_closed.wait()
        await state.wait_for_idle()
    record = state.log[0]
    assert record.client_disconnected and record.events_sent == 1
    assert state.streams_aborted == 1 and state.streams_completed == 0


async def test_stall_notices_disconnect_without_handler_cancellation() -> None:
    """Under a runner that does not cancel handlers, a stall still ends when the peer leaves."""
    app = make_emulator_app()
    state = app[EMULATOR_STATE]
    runner = web.AppRunner(app, handler_cancellation=False, shutdown_timeout=WAIT_S)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        url = f"http://127.0.0.1:{runner.addresses[0][1]}{CHAT}"
        body = chat_body(directive={"fault": "stall_mid", "after": 1})
        async with aiohttp.ClientSession() as session:
            resp = await session.post(url, json=body, headers=AUTH)
            await resp.content.readline()
            resp.close()
        async with asyncio.timeout(WAIT_S):
            await state.peer_closed.wait()
            await state.wait_for_idle()
        assert state.log[0].client_disconnected and state.streams_aborted == 1
    finally:
        await runner.cleanup()


async def test_stream_usage_only_on_request(client: Client) -> None:
    plain = await stream_text(client, chat_body(directive={"reply": "abcd", "chunks": 2}))
    assert all("usage" not in payload for payload in data_payloads(plain))
    raw = await stream_text(client, chat_body(directive={"reply": "abcd", "chunks": 2, "usage": True}))
    events = [json.loads(payload) for payload in data_payloads(raw)[:-1]]
    assert "usage" not in events[0] and events[-1]["usage"]["completion_tokens"] == 1


async def test_client_leaving_before_headers_is_recorded(client: Client) -> None:
    state = state_of(client)
    body = chat_body(directive={"fault": "stall_before"})
    request = asyncio.ensure_future(client.post(CHAT, json=body, headers=AUTH))
    async with asyncio.timeout(WAIT_S):
        await state.wait_for_request(1)
    request.cancel()
    with pytest.raises(asyncio.CancelledError):
        await request
    async with asyncio.timeout(WAIT_S):
        await state.peer_closed.wait()
    assert state.log[0].client_disconnected and state.log[0].status is None
    assert state.streams_started == 0


async def test_stall_headers_sends_headers_then_waits(client: Client) -> None:
    state = state_of(client)
    resp = await client.post(CHAT, json=chat_body(directive={"fault": "stall_headers"}), headers=AUTH)
    assert resp.status == 200 and state.log[0].status == 200
    assert not state.first_chunk_sent.is_set()
    resp.close()
    async with asyncio.timeout(WAIT_S):
        await state.peer_closed.wait()
    assert state.log[0].events_sent == 0 and state.streams_aborted == 1


async def test_start_emulator_serves_on_a_real_port() -> None:
    async with await start_emulator() as emulator:
        assert emulator.url.startswith("http://127.0.0.1:")
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"{emulator.url}/api/models", headers=AUTH) as resp,
        ):
            assert resp.status == 200
        assert emulator.state.requests == 1


async def test_close_does_not_wait_for_streams_stalled_forever() -> None:
    emulator = await start_emulator()
    async with aiohttp.ClientSession() as session:
        body = chat_body(directive={"fault": "stall_mid", "after": 1})
        async with session.post(f"{emulator.url}{CHAT}", json=body, headers=AUTH) as resp:
            await resp.content.readline()
            async with asyncio.timeout(WAIT_S):
                await emulator.close()
    assert emulator.state.open_streams == 0


async def test_module_runs_standalone() -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "relay.emulator", "--port", "0", stdout=asyncio.subprocess.PIPE
    )
    try:
        assert process.stdout is not None
        async with asyncio.timeout(WAIT_S):
            url = (await process.stdout.readline()).decode().strip()
        async with aiohttp.ClientSession() as session, session.get(f"{url}/api/models", headers=AUTH) as resp:
            assert resp.status == 200
    finally:
        process.terminate()
        assert await process.wait() == 0


def test_directive_last_line_wins_and_strict_fields() -> None:
    directive = parse_directive(['a\n#emulator {"reply": "one"}', '#emulator {"reply": "two"}  '])
    assert directive is not None and directive.reply == "two"
    assert parse_directive(["no directive here", "#emulator not json"]) is None
    with pytest.raises(DirectiveError, match="chunks"):
        parse_directive(['#emulator {"chunks": 0}'])
    with pytest.raises(DirectiveError, match="not both"):
        parse_directive(['#emulator {"reply": "a", "pieces": ["a"]}'])


def test_rewrite_and_repeat_break_and_keep_the_prefix_rule() -> None:
    answer = build_answer(
        parse_directive(['#emulator {"reply": "abcdefgh", "chunks": 4}']) or NO_DIRECTIVE, "", 8
    )
    change = event_texts(answer, incremental=False, repeat_identical=False, rewrite="change")
    assert change == ["ab", "abcd", "Xbcd", "abcdef", "abcdefgh"]
    shrink = event_texts(answer, incremental=False, repeat_identical=False, rewrite="shrink")
    assert shrink == ["ab", "abcd", "ab", "abcdef", "abcdefgh"]
    repeated = event_texts(answer, incremental=False, repeat_identical=True, rewrite=None)
    assert repeated == ["ab", "ab", "abcd", "abcd", "abcdef", "abcdef", "abcdefgh", "abcdefgh"]


def test_plan_puts_faults_after_the_requested_event() -> None:
    texts = ["a", "ab", "abc"]
    steps = plan_stream(texts, NO_DIRECTIVE, fault="reset_mid", delay_s=0, incremental=False, usage=None)
    assert [type(step) for step in steps] == [Write, Abort]  # after defaults to 1
    directive = parse_directive(['#emulator {"after": 0, "stall_ms": 5}'])
    assert directive is not None
    steps = plan_stream(texts, directive, fault="stall_mid", delay_s=0, incremental=False, usage=None)
    assert steps[0] == Stall(0.005)
    assert sum(isinstance(step, Write) and step.is_event for step in steps) == 3
