"""Run-for-real behaviour of the relay process: drain, sd_notify, metrics, smoke (issue 7)."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from collections.abc import AsyncIterator

import aiohttp
import pytest

from relay.emulator import RunningEmulator
from tests.conftest import MODEL, TOKEN, auth, chat_body, directive, notify_listener, parse_sse
from tests.integration.test_cli_process import RelayProcess, _start


@pytest.fixture
async def processes() -> AsyncIterator[list[RelayProcess]]:
    started: list[RelayProcess] = []
    yield started
    for relay in started:
        if relay.process.returncode is None:
            relay.process.kill()
            await relay.process.wait()


async def _open_stream(session: aiohttp.ClientSession, url: str, reply: str, delay_ms: int
                       ) -> tuple[aiohttp.ClientResponse, str]:
    """Start a stream and read up to its first content event."""
    body = chat_body(stream=True, text=directive(reply=reply, chunks=len(reply.split()), delay_ms=delay_ms))
    response = await session.post(url + "/v1/chat/completions", json=body, headers=auth())
    assert response.status == 200
    buffered = ""
    while '"content":"' not in buffered.split("\n\n", 1)[-1]:
        buffered += (await response.content.readany()).decode()
    return response, buffered


async def test_sigterm_lets_open_streams_finish_then_exits_zero(
        emulator: RunningEmulator, processes: list[RelayProcess]) -> None:
    """Drain: healthz turns 503, new requests are refused, open streams complete, exit 0."""
    relay = await _start("--upstream", emulator.url, "--dialect", "qwen-v1", "--drain-timeout", "20")
    processes.append(relay)
    reply = "one two three four five six"
    # One kept-alive connection, opened before the signal: the listener closes at
    # SIGTERM, so health is read the way nginx's upstream keepalive pool reads it.
    health_session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1))
    async with aiohttp.ClientSession() as session, health_session:
        async with health_session.get(relay.url + "/healthz") as health:
            assert health.status == 200
        streams = [await _open_stream(session, relay.url, reply, 150) for _ in range(3)]
        relay.process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(10):
            while True:  # the signal is handled asynchronously: poll until health flips
                async with health_session.get(relay.url + "/healthz") as health:
                    if health.status == 503:
                        assert await health.json() == {"status": "draining"}
                        break
                await asyncio.sleep(0.02)
        with pytest.raises(aiohttp.ClientConnectionError):
            async with session.get(relay.url + "/healthz", headers={"Connection": "close"}):
                pass  # a new connection is refused: the listener is closed
        for response, head in streams:
            text = head + (await response.read()).decode()
            events = parse_sse(text)
            assert events[-1] == "[DONE]" and events.count("[DONE]") == 1
            deltas = [json.loads(e)["choices"][0]["delta"].get("content", "")
                      for e in events[:-1] if json.loads(e)["choices"]]
            assert "".join(deltas) == reply
    async with asyncio.timeout(15):
        assert await relay.process.wait() == 0


async def test_drain_deadline_ends_streams_with_error_event_and_done(
        emulator: RunningEmulator, processes: list[RelayProcess]) -> None:
    """Streams still open at --drain-timeout end with an error event, then [DONE]."""
    relay = await _start("--upstream", emulator.url, "--dialect", "qwen-v1", "--drain-timeout", "0.5")
    processes.append(relay)
    async with aiohttp.ClientSession() as session:
        body = chat_body(stream=True, text=directive(reply="never finished", fault="stall_mid", after=1))
        response = await session.post(relay.url + "/v1/chat/completions", json=body, headers=auth())
        assert response.status == 200
        async with asyncio.timeout(5):
            await emulator.state.first_chunk_sent.wait()
        relay.process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(10):
            events = parse_sse((await response.read()).decode())
    assert events[-1] == "[DONE]" and events.count("[DONE]") == 1
    error = json.loads(events[-2])["error"]
    assert error["code"] == "relay_draining"
    async with asyncio.timeout(15):
        assert await relay.process.wait() == 0


async def test_ready_and_stopping_are_sent_to_notify_socket(processes: list[RelayProcess]) -> None:
    """Type=notify: READY=1 once listening, STOPPING=1 when the drain begins."""
    with notify_listener() as systemd:
        relay = await _start("--upstream", "emulator", env={"NOTIFY_SOCKET": systemd.path})
        processes.append(relay)
        assert "READY=1" in await systemd.receive()
        relay.process.send_signal(signal.SIGTERM)
        assert "STOPPING=1" in await systemd.receive()
        async with asyncio.timeout(15):
            assert await relay.process.wait() == 0


async def test_metrics_count_requests_without_tokens(relay: str) -> None:
    async with aiohttp.ClientSession() as session:
        for _ in range(2):
            async with session.post(relay + "/v1/chat/completions", headers=auth(),
                                    json=chat_body(text=directive(reply="counted"))) as response:
                assert response.status == 200
        async with session.get(relay + "/v1/nope") as response:
            assert response.status == 404
        async with session.get(relay + "/metrics") as response:
            assert response.status == 200
            assert response.headers["Content-Type"].startswith("text/plain")
            text = await response.text()
    assert 'qwen_relay_requests_total{method="POST",route="/v1/chat/completions",status="200"} 2' in text
    assert 'route="unmatched",status="404"' in text and "/v1/nope" not in text
    assert "qwen_relay_in_flight 0" in text
    assert "qwen_relay_upstream_first_byte_seconds_count" in text
    assert TOKEN not in text and MODEL not in text


async def test_smoke_command_passes_against_a_running_relay(relay: str) -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "relay", "smoke", "--url", relay, "--token", TOKEN,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    async with asyncio.timeout(30):
        out, err = await process.communicate()
    assert process.returncode == 0, (out, err)
    assert out.decode().startswith("ok:") and out.decode().count("\n") == 1


async def test_smoke_command_fails_with_one_line_for_a_rejected_token(relay: str) -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "relay", "smoke", "--url", relay, "--token", "expired-token",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    async with asyncio.timeout(30):
        out, _ = await process.communicate()
    assert process.returncode == 1
    assert out.decode().startswith("FAIL:") and "401" in out.decode()
