"""The installed program runs as users run it: a real process, flags and env vars."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator

import aiohttp
import pytest

from tests.conftest import MODEL, auth, directive, parse_sse
from tests.integration.test_fault_matrix import relay_process


class RelayProcess:
    def __init__(self, process: asyncio.subprocess.Process, url: str) -> None:
        self.process = process
        self.url = url


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def _start(*args: str, env: dict[str, str] | None = None) -> RelayProcess:
    """Start ``python -m relay`` and wait until /healthz answers (bounded)."""
    port = _free_port()
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "relay", "--host", "127.0.0.1", "--port", str(port), *args,
        stderr=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.DEVNULL,
        env={**os.environ, **(env or {})},
    )
    url = f"http://127.0.0.1:{port}"
    async with aiohttp.ClientSession() as session, asyncio.timeout(20):
        while process.returncode is None:
            try:
                async with session.get(url + "/healthz") as response:
                    if response.status == 200:
                        return RelayProcess(process, url)
            except aiohttp.ClientConnectionError:
                await asyncio.sleep(0.05)  # polling a port that is not open yet: no event to await
    raise AssertionError(f"relay exited with {process.returncode} before listening")


@pytest.fixture
async def demo() -> AsyncIterator[RelayProcess]:
    relay = await _start("--upstream", "emulator")
    try:
        yield relay
    finally:
        if relay.process.returncode is None:
            relay.process.kill()
            await relay.process.wait()


async def test_demo_command_serves_models_and_streams_offline(demo: RelayProcess) -> None:
    """`qwen-relay --upstream emulator` is a working demo with any non-empty token."""
    async with aiohttp.ClientSession() as session:
        async with session.get(demo.url + "/healthz") as response:
            assert response.status == 200
            assert await response.json() == {"status": "ok"}
        async with session.get(demo.url + "/v1/models", headers=auth("any-demo-key")) as response:
            assert response.status == 200
            ids = [m["id"] for m in (await response.json())["data"]]
            assert MODEL in ids
        body = {"model": MODEL, "stream": True,
                "messages": [{"role": "user", "content": directive(reply="demo works", chunks=3)}]}
        async with session.post(demo.url + "/v1/chat/completions", json=body,
                                headers=auth("any-demo-key")) as response:
            assert response.status == 200
            text = await response.text()
    events = parse_sse(text)
    assert events[-1] == "[DONE]"
    deltas = [json.loads(e)["choices"][0]["delta"].get("content", "") for e in events[:-1]]
    assert "".join(deltas) == "demo works"
    assert sum(1 for d in deltas if d) == 3


async def test_sigterm_exits_zero(demo: RelayProcess) -> None:
    demo.process.send_signal(signal.SIGTERM)
    async with asyncio.timeout(15):
        assert await demo.process.wait() == 0


async def test_env_var_sets_a_flag_and_the_flag_wins() -> None:
    """QWEN_RELAY_<NAME> configures the relay; an explicit flag overrides it."""
    relay = await _start("--upstream", "emulator", "--max-body-bytes", "2048",
                         env={"QWEN_RELAY_MAX_BODY_BYTES": "999999", "QWEN_RELAY_LOG_LEVEL": "warning"})
    try:
        async with aiohttp.ClientSession() as session:
            big = {"model": MODEL, "messages": [{"role": "user", "content": "x" * 4096}]}
            async with session.post(relay.url + "/v1/chat/completions", json=big, headers=auth()) as response:
                assert response.status == 413
                assert (await response.json())["error"]["code"] == "request_too_large"
    finally:
        relay.process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(15):
            assert await relay.process.wait() == 0
    assert relay.process.stderr is not None
    rest = (await relay.process.stderr.read()).decode()
    # log level warning from the env: no access-log lines were written.
    assert '"relay.access"' not in rest


async def test_bad_flag_value_exits_2_with_a_message() -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "relay", "--max-concurrency", "lots",
        stderr=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.DEVNULL)
    _, err = await process.communicate()
    assert process.returncode == 2
    assert b"--max-concurrency" in err


@pytest.mark.parametrize(("flag", "expected"), [((), "uvloop"), (("--loop", "asyncio"), "asyncio")],
                         ids=["default", "asyncio"])
async def test_uvloop_is_the_default_loop_and_asyncio_is_a_flag_away(flag: tuple[str, ...], expected: str) -> None:
    """uvloop comes with the install and ``--loop auto`` picks it; the log line says which loop runs."""
    async with relay_process("--upstream", "emulator", *flag) as relay:
        listening = await relay.wait_for_log("listening")
        assert listening["loop"] == expected
        async with aiohttp.ClientSession() as session, session.get(relay.url + "/healthz") as response:
            assert response.status == 200


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (``/proc/<pid>/stat``)."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def test_busy_poll_answers_and_then_lets_an_idle_relay_sleep() -> None:
    """``--busy-poll-us`` keeps the loop polling only just after requests: idle, it burns no CPU."""
    body = {"model": MODEL, "messages": [{"role": "user", "content": directive(reply="polled")}]}
    async with relay_process("--upstream", "emulator", "--busy-poll-us", "5000") as relay:
        async with aiohttp.ClientSession() as session:
            for _ in range(5):
                async with session.post(relay.url + "/v1/chat/completions", json=body, headers=auth()) as response:
                    assert response.status == 200, await response.text()
                    assert (await response.json())["choices"][0]["message"]["content"] == "polled"
        before = cpu_seconds(relay.process.pid)
        await asyncio.sleep(1.0)  # a bounded window to prove a non-event: no spinning while idle
        assert cpu_seconds(relay.process.pid) - before < 0.2
