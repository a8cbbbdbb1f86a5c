"""The concurrency gate: a slot is held until a stream's last byte, and refused, not queued.

The original Worker released its count when headers went out, so a relay full of
long streams kept accepting more. Here (``limits.ConcurrencyGate``) a full relay
answers 429 ``relay_overloaded`` with ``Retry-After`` at once, a client that leaves
gives its slot back, and after every stream has ended the gate is empty again
(STYLE.md §6: "the gate count returns to zero"). The gate is checked from outside:
by which requests succeed while which streams are open, and by the
``qwen_relay_in_flight`` gauge of ``GET /metrics``.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import aiohttp
import pytest

from relay.emulator import RunningEmulator
from tests.conftest import RelayFactory, auth, chat_body, directive, parse_sse

CHAT = "/v1/chat/completions"
#: a stream that sends one event and then stays silent until the relay hangs up.
HELD = directive(fault="stall_mid", after=1, pieces=["held ", "open"])


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


async def open_held_stream(session: aiohttp.ClientSession, relay: str) -> aiohttp.ClientResponse:
    """Start a stream and read its first event, so the relay surely holds a slot for it."""
    async with asyncio.timeout(5):
        resp = await session.post(relay + CHAT, json=chat_body(stream=True, text=HELD), headers=auth())
        assert resp.status == 200, await resp.text()
        async for raw in resp.content:
            if raw.startswith(b"data:"):
                assert b'"role":"assistant"' in raw
                return resp
    raise AssertionError("the held stream ended before its first event")


async def wait_gate_empty(session: aiohttp.ClientSession, relay: str) -> None:
    """Poll ``GET /metrics`` until no slot is held; the handler frees it while unwinding."""
    async with asyncio.timeout(2):
        while True:
            async with session.get(relay + "/metrics") as resp:
                assert resp.status == 200
                text = await resp.text()
            gauge = [line for line in text.splitlines() if line.startswith("qwen_relay_in_flight ")]
            assert len(gauge) == 1, text
            if float(gauge[0].split()[1]) == 0:
                return


async def complete(session: aiohttp.ClientSession, relay: str, reply: str) -> tuple[int, dict[str, str], str]:
    async with asyncio.timeout(5):
        async with session.post(relay + CHAT, json=chat_body(text=directive(reply=reply)),
                                headers=auth()) as resp:
            return resp.status, dict(resp.headers), await resp.text()


async def complete_when_a_slot_frees(session: aiohttp.ClientSession, relay: str, reply: str) -> str:
    """Retry while the relay still answers 429: the slot is freed while the handler unwinds."""
    async with asyncio.timeout(5):
        for _ in range(100):
            status, _, body = await complete(session, relay, reply)
            if status != 429:
                assert status == 200, body
                return str(json.loads(body)["choices"][0]["message"]["content"])
            assert json.loads(body)["error"]["code"] == "relay_overloaded"
    raise AssertionError("no slot became free")


async def test_full_relay_refuses_with_429_and_frees_slot_when_client_leaves(
        relay_factory: RelayFactory, session: aiohttp.ClientSession, emulator: RunningEmulator) -> None:
    relay = await relay_factory(max_concurrency=2)
    first, second = await asyncio.gather(open_held_stream(session, relay), open_held_stream(session, relay))

    status, headers, body = await complete(session, relay, "refused")
    assert status == 429, body
    assert headers["Content-Type"].startswith("application/json")
    error = json.loads(body)["error"]
    assert error["code"] == "relay_overloaded"
    assert error["type"] == "rate_limit_error"
    assert int(headers["Retry-After"]) >= 1
    assert emulator.state.open_streams == 2  # the refused request never reached the upstream

    first.close()
    async with asyncio.timeout(2):
        await emulator.state.peer_closed.wait()
        await emulator.state.wait_until(lambda: emulator.state.open_streams == 1)
    assert await complete_when_a_slot_frees(session, relay, "a slot again") == "a slot again"

    second.close()
    async with asyncio.timeout(2):
        await emulator.state.wait_for_idle()
    await wait_gate_empty(session, relay)

    # The gate is empty: two new streams can be open at the same time, and a third is refused.
    third, fourth = await asyncio.gather(open_held_stream(session, relay), open_held_stream(session, relay))
    status, _, body = await complete(session, relay, "full again")
    assert status == 429, body
    third.close()
    fourth.close()
    async with asyncio.timeout(2):
        await emulator.state.wait_for_idle()
    await wait_gate_empty(session, relay)


async def test_slots_are_returned_after_completed_and_failed_streams(
        relay_factory: RelayFactory, session: aiohttp.ClientSession, emulator: RunningEmulator) -> None:
    """Normal ends, in-stream errors and upstream failures all give the slot back."""
    relay = await relay_factory(max_concurrency=2, timeout_s=0.5)
    endings = [
        directive(reply="done normally", chunks=3),
        directive(fault="in_stream_error", after=1, reply="then an error"),
        directive(fault="reset_mid", after=1, reply="then a reset"),
        directive(fault="stall_mid", after=1, reply="then a timeout"),
        directive(fault="http_503"),
    ]
    for text in endings:
        async with asyncio.timeout(5):
            async with session.post(relay + CHAT, json=chat_body(stream=True, text=text), headers=auth()) as resp:
                body = await resp.text()
        if resp.status == 200:
            assert parse_sse(body)[-1] == "[DONE]"
    async with asyncio.timeout(2):
        await emulator.state.wait_for_idle()
    await wait_gate_empty(session, relay)
    held = await asyncio.gather(open_held_stream(session, relay), open_held_stream(session, relay))
    for resp in held:
        resp.close()
    async with asyncio.timeout(2):
        await emulator.state.wait_for_idle()
    await wait_gate_empty(session, relay)


async def test_hundred_concurrent_completions_all_succeed(relay: str, session: aiohttp.ClientSession) -> None:
    """Each answer reaches its own caller: no mixing between concurrent requests."""

    async def one(index: int) -> str:
        body = chat_body(text=directive(reply=f"answer number {index}"))
        async with session.post(relay + CHAT, json=body, headers=auth()) as resp:
            assert resp.status == 200, await resp.text()
            payload = await resp.json()
        return str(payload["choices"][0]["message"]["content"])

    async with asyncio.timeout(30):
        answers = await asyncio.gather(*(one(index) for index in range(100)))
    assert answers == [f"answer number {index}" for index in range(100)]
    await wait_gate_empty(session, relay)
