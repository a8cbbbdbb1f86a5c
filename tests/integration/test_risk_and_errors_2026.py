"""How the relay answers the 2026 service's refusals, and which it retries (issue "Today's chat.qwen.ai").

docs/qwen-protocol.md §7.4, §7.5 and §9 against the strict emulator: risk control
is a 502 ``upstream_challenge`` that is never retried on the same token (it rests;
a pool moves on), the in-stream error forms map to their statuses, an
"Internal error!" before any byte is retried, and a body the service would punish
for its size is refused by the relay before any chat is made.
"""

from __future__ import annotations

import json
from typing import Any

import aiohttp
import pytest

from relay.emulator import RunningEmulator
from relay.operator import OperatorConfig, Secret, hash_key
from relay.operator.config import KeySpec
from relay.operator.pool import fingerprint as pool_fingerprint
from tests.conftest import RelayFactory, chat_body, directive
from tests.integration.web2026 import (
    CHATS_NEW,
    COMPLETIONS,
    calls,
    metric,
    metrics_text,
    post_json,
    stream_answer,
    token_cookie,
)

POOL_TOKENS = ("pool-2026-token-a-111", "pool-2026-token-b-222")
RELAY_KEY = "sk-relay-2026-0123456789"


def v2(**overrides: Any) -> dict[str, Any]:
    return {"dialect": "qwen-v2", **overrides}


def two_token_pool() -> OperatorConfig:
    spec = KeySpec(name="alice", digest=bytes.fromhex(hash_key(RELAY_KEY)[7:]))
    return OperatorConfig(mode="pool", keys=(spec,), tokens=tuple(Secret(t) for t in POOL_TOKENS))


def error_of(answer: Any) -> dict[str, Any]:
    assert isinstance(answer.body, dict) and set(answer.body) == {"error"}, answer.body
    error: dict[str, Any] = answer.body["error"]
    return error


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "non-stream"])
async def test_risk_control_answer_is_502_upstream_challenge_saying_what_to_do(
        relay_factory: RelayFactory, emulator: RunningEmulator, stream: bool) -> None:
    """§7.5/§9: the ``ret: FAIL_SYS_USER_VALIDATE`` answer → 502 upstream_challenge whose message tells the
    operator what helps; it is sent once, never retried on the same token."""
    relay = await relay_factory(**v2(retries=3))
    ask = stream_answer if stream else post_json
    async with aiohttp.ClientSession() as session:
        answer = await ask(session, relay, chat_body(text=directive(reply="x", fault="risk_control")))
    assert answer.status == 502
    error = error_of(answer)
    assert error["code"] == "upstream_challenge"
    for advice in ("cookie", "bx-ua", "proxy", "rests"):
        assert advice in error["message"], error["message"]
    assert len(calls(emulator, "POST", COMPLETIONS)) == 1, "risk control must not be retried on the same token"


async def test_challenged_token_rests_and_its_next_request_never_reaches_the_upstream(
        relay_factory: RelayFactory, emulator: RunningEmulator) -> None:
    """§7.5: after risk control the same token's next request is 502 upstream_challenge with Retry-After,
    answered by the relay alone (an immediate retry would deepen the mark)."""
    relay = await relay_factory(**v2(challenge_cooldown_s=900.0))
    async with aiohttp.ClientSession() as session:
        first = await post_json(session, relay, chat_body(text=directive(reply="x", fault="risk_control")))
        assert first.status == 502 and error_of(first)["code"] == "upstream_challenge"
        # Nothing more goes out on the challenged token, not even the DELETE of its chat.
        seen = len(emulator.state.log)
        for ask in (post_json, stream_answer):
            again = await ask(session, relay, chat_body(text=directive(reply="fine now")))
            assert again.status == 502, again.body
            assert error_of(again)["code"] == "upstream_challenge"
            assert "rests" in error_of(again)["message"]
            retry_after = int(again.headers["Retry-After"])
            assert 0 < retry_after <= 900
    assert len(emulator.state.log) == seen, [(r.method, r.path) for r in emulator.state.log[seen:]]
    assert not calls(emulator, "DELETE", "/api/v2/chats/", prefix=True)


async def test_risk_control_in_a_pool_moves_the_request_to_the_other_token_which_cools_the_first(
        relay_factory: RelayFactory, emulator: RunningEmulator) -> None:
    """§9: a pooled request answered with risk control is served by another token (the client gets 200);
    /metrics counts the challenge and shows the challenged token cooling."""
    relay = await relay_factory(**v2(operator=two_token_pool(), challenge_cooldown_s=900.0))
    text = directive(reply="served elsewhere", fault="risk_control", fail_times=1, key="pool-risk")
    async with aiohttp.ClientSession() as session:
        answer = await post_json(session, relay, chat_body(text=text), token=RELAY_KEY)
        text_metrics = await metrics_text(session, relay)
    assert answer.status == 200, answer.body
    assert answer.content == "served elsewhere"
    challenged, served = calls(emulator, "POST", COMPLETIONS)
    assert challenged.fault == "risk_control" and served.status == 200 and served.fault is None
    assert challenged.token_fingerprint != served.token_fingerprint
    assert metric(text_metrics, "qwen_relay_upstream_challenges_total") >= 1
    cooling = next(t for t in POOL_TOKENS if token_cookie(t) == "sha256:" + challenged.token_fingerprint)
    other = next(t for t in POOL_TOKENS if t != cooling)
    assert metric(text_metrics, f'qwen_relay_token_state{{state="cooling",token="{pool_fingerprint(cooling)}"}}') == 1
    assert metric(text_metrics, f'qwen_relay_token_state{{state="active",token="{pool_fingerprint(other)}"}}') == 1


async def test_risk_control_on_chats_new_is_502_upstream_challenge_and_no_completion_is_sent(
        relay_factory: RelayFactory, emulator: RunningEmulator) -> None:
    """§7.5: risk control "can hit any write": on chats/new it is the same 502 upstream_challenge."""
    relay = await relay_factory(**v2())
    emulator.state.arm({"fault": "risk_control"}, path=CHATS_NEW, times=1)
    async with aiohttp.ClientSession() as session:
        answer = await post_json(session, relay, chat_body(text=directive(reply="never")))
    assert answer.status == 502 and error_of(answer)["code"] == "upstream_challenge"
    assert [r.fault for r in calls(emulator, "POST", CHATS_NEW)] == ["risk_control"]
    assert calls(emulator, "POST", COMPLETIONS) == []


async def test_in_stream_success_false_unauthorized_is_401_invalid_api_key(
        relay_factory: RelayFactory, emulator: RunningEmulator) -> None:
    """§7.4 ``data: {"success": false, "data": {"code": "Unauthorized"}}`` before content → 401."""
    relay = await relay_factory(**v2())
    async with aiohttp.ClientSession() as session:
        answer = await stream_answer(session, relay, chat_body(text=directive(
            reply="x", stream_error="Unauthorized", stream_error_form="success_false", after=0)))
    assert answer.status == 401, answer.body
    assert error_of(answer)["code"] == "invalid_api_key"


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "non-stream"])
async def test_bare_json_rate_limit_under_event_stream_is_429_with_retry_after_of_num_hours(
        relay_factory: RelayFactory, emulator: RunningEmulator, stream: bool) -> None:
    """§7.4: a plain JSON body under text/event-stream, ``RateLimited`` with ``num`` 3 → 429, Retry-After 10800."""
    relay = await relay_factory(**v2())
    ask = stream_answer if stream else post_json
    async with aiohttp.ClientSession() as session:
        answer = await ask(session, relay, chat_body(text=directive(
            reply="x", stream_error="RateLimited", stream_error_form="bare_json", num=3)))
    assert answer.status == 429, answer.body
    assert error_of(answer)["code"] == "rate_limit_exceeded"
    assert answer.headers["Retry-After"] == str(3 * 3600)


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "non-stream"])
async def test_internal_error_string_before_content_is_retried_and_the_client_gets_the_answer(
        relay_factory: RelayFactory, emulator: RunningEmulator, stream: bool) -> None:
    """§9: ``data: {"error": "Internal error!"}`` before any byte reached the client is retried (a new chat);
    the second attempt answers and the client sees only that answer."""
    relay = await relay_factory(**v2(retries=3))
    text = directive(reply="second time lucky", stream_error="internal_error", stream_error_form="string",
                     after=0, fail_times=1, key=f"internal-{stream}")
    ask = stream_answer if stream else post_json
    async with aiohttp.ClientSession() as session:
        answer = await ask(session, relay, chat_body(text=text))
        text_metrics = await metrics_text(session, relay)
    assert answer.status == 200, answer.body
    assert answer.content == "second time lucky"
    attempts = calls(emulator, "POST", COMPLETIONS)
    assert [r.attempt for r in attempts] == [1, 2]
    assert attempts[0].fault == "in_stream_error" and attempts[1].fault is None
    assert len(calls(emulator, "POST", CHATS_NEW)) == 2
    assert metric(text_metrics, 'qwen_relay_upstream_retries_total{reason="upstream_internal_error"}') == 1
    if stream:
        assert answer.events.count("[DONE]") == 1 and answer.events[-1] == "[DONE]"


async def test_internal_error_string_after_content_is_an_error_event_then_done(
        relay_factory: RelayFactory, emulator: RunningEmulator) -> None:
    """§9: once content went out the error cannot be retried: an SSE error event, then one ``[DONE]``."""
    relay = await relay_factory(**v2(retries=3))
    async with aiohttp.ClientSession() as session:
        answer = await stream_answer(session, relay, chat_body(text=directive(
            reply="partial answer here", chunks=3, stream_error="internal_error", stream_error_form="string",
            after=1)))
    assert answer.status == 200
    assert answer.events[-1] == "[DONE]" and answer.events.count("[DONE]") == 1
    error = json.loads(answer.events[-2])["error"]
    assert error["code"] == "upstream_internal_error", error
    assert answer.content and "partial answer here".startswith(answer.content)
    assert len(calls(emulator, "POST", COMPLETIONS)) == 1


async def test_bad_request_is_502_upstream_bad_request_pointing_at_web_version(
        relay_factory: RelayFactory, emulator: RunningEmulator) -> None:
    """§7.5/§9: ``Bad_Request`` (nearly always the version header) → 502 upstream_bad_request naming
    ``--web-version``."""
    relay = await relay_factory(**v2())
    async with aiohttp.ClientSession() as session:
        answer = await post_json(session, relay, chat_body(text=directive(
            reply="x", fault="v2_error", code="Bad_Request", actual_status=400)))
    assert answer.status == 502, answer.body
    error = error_of(answer)
    assert error["code"] == "upstream_bad_request"
    assert "--web-version" in error["message"] and "version" in error["message"]


def huge_prompt(size: int) -> str:
    return directive(reply="too big") + "\n" + "x" * size


async def test_body_over_the_upstream_limit_is_400_context_length_exceeded_before_any_chat(
        relay_factory: RelayFactory, emulator: RunningEmulator) -> None:
    """§7.3: a completion body over --max-upstream-body-bytes (120000) is never sent: 400
    context_length_exceeded, and no chat is created for it."""
    relay = await relay_factory(**v2())
    async with aiohttp.ClientSession() as session:
        for ask in (post_json, stream_answer):
            answer = await ask(session, relay, chat_body(text=huge_prompt(121_000)))
            assert answer.status == 400, answer.body
            assert error_of(answer)["code"] == "context_length_exceeded"
            assert "120000" in error_of(answer)["message"]
    assert calls(emulator, "POST", CHATS_NEW) == [] and calls(emulator, "POST", COMPLETIONS) == []


async def test_without_the_guard_the_services_size_rule_answers_risk_control(
        relay_factory: RelayFactory, emulator: RunningEmulator) -> None:
    """The guard is what protects: with the limit raised to 200000, a 130 KB body reaches the service, whose
    128,000-byte rule answers risk control (502 upstream_challenge)."""
    relay = await relay_factory(**v2(max_upstream_body_bytes=200_000))
    async with aiohttp.ClientSession() as session:
        answer = await post_json(session, relay, chat_body(text=huge_prompt(130_000)))
    assert answer.status == 502, answer.body
    assert error_of(answer)["code"] == "upstream_challenge"
    (completion,) = calls(emulator, "POST", COMPLETIONS)
    assert completion.rejected == "body_too_large"


async def test_body_just_under_the_limit_is_sent_and_answered(
        relay_factory: RelayFactory, emulator: RunningEmulator) -> None:
    """The guard's edge: a prompt that keeps the body under 120000 bytes is forwarded and answered."""
    relay = await relay_factory(**v2())
    async with aiohttp.ClientSession() as session:
        answer = await post_json(session, relay, chat_body(text=huge_prompt(110_000)))
    assert answer.status == 200, answer.body
    (completion,) = calls(emulator, "POST", COMPLETIONS)
    assert completion.rejected is None
    assert 110_000 < int(completion.headers["content-length"]) <= 120_000


async def test_a_transport_retry_sends_a_fresh_request_id(relay_factory: RelayFactory,
                                                          emulator: RunningEmulator) -> None:
    """A 5xx before the head is retried as a new request: Qwen Chat (and the strict emulator) take a
    request id seen before for a replay and answer risk control, which would rest the token."""
    relay = await relay_factory(**v2(retries=3))
    text = directive(reply="after a 500", fault="http_500", fail_times=1, key="fresh-request-id")
    async with aiohttp.ClientSession() as session:
        answer = await post_json(session, relay, chat_body(text=text))
    assert answer.status == 200, answer.body
    attempts = calls(emulator, "POST", COMPLETIONS)
    assert len(attempts) == 2
    ids = [record.headers.get("x-request-id") for record in attempts]
    assert None not in ids and ids[0] != ids[1]
