"""Operator mode end to end: relay keys, the Qwen token pool, per-key limits (issue 9).

The emulator accepts three tokens and answers a fourth with 401 (an expired
Qwen session); its request log names each request's token by fingerprint, which
is how these tests count what reached the upstream, and on which token.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import signal
import sys
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from relay.emulator import EmulatorConfig, RunningEmulator, start_emulator
from relay.logs import JsonFormatter
from relay.operator import OperatorConfig, Secret, hash_key
from relay.operator.config import KeySpec
from relay.operator.pool import fingerprint as pool_fingerprint
from tests.conftest import MODEL, RelayFactory, auth, chat_body, directive, parse_sse
from tests.integration.test_cli_process import RelayProcess
from tests.integration.test_lifecycle import _start

GOOD = ("pool-token-a-000111", "pool-token-b-222333", "pool-token-c-444555")
EXPIRED = "pool-token-expired-666777"
KEY = "sk-relay-alice-0123456789"
OTHER_KEY = "sk-relay-bob-9876543210"
COMPLETIONS = "/api/chat/completions"


def upstream_print(token: str) -> str:
    """The emulator's fingerprint of a token (sha256, 12 hex digits)."""
    return hashlib.sha256(token.encode()).hexdigest()[:12]


def key_spec(key: str = KEY, name: str = "alice", **limits: Any) -> KeySpec:
    return KeySpec(name=name, digest=bytes.fromhex(hash_key(key)[7:]), **limits)


def pool(*keys: KeySpec, tokens: tuple[str, ...] = GOOD, mode: str = "pool") -> OperatorConfig:
    return OperatorConfig(mode=mode, keys=keys or (key_spec(),), tokens=tuple(Secret(t) for t in tokens))


def chat_counts(emulator: RunningEmulator) -> Counter[str | None]:
    return Counter(r.token_fingerprint for r in emulator.state.log if r.path == COMPLETIONS)


@pytest.fixture
async def emulator() -> AsyncIterator[RunningEmulator]:
    """Overrides conftest's: only the pool's tokens are valid, one more is expired."""
    running = await start_emulator(EmulatorConfig(valid_tokens=frozenset(GOOD), expired_tokens=frozenset({EXPIRED})))
    try:
        yield running
    finally:
        await running.close()


async def post_chat(session: aiohttp.ClientSession, relay: str, key: str = KEY, **body: Any
                    ) -> tuple[int, dict[str, Any], dict[str, str]]:
    async with session.post(relay + "/v1/chat/completions", json=chat_body(**body), headers=auth(key)) as response:
        payload = await response.json() if response.content_type == "application/json" else {}
        return response.status, payload, dict(response.headers)


async def test_relay_key_is_served_from_the_pool(relay_factory: RelayFactory, emulator: RunningEmulator) -> None:
    relay = await relay_factory(operator=pool())
    async with aiohttp.ClientSession() as session:
        status, payload, _ = await post_chat(session, relay, text=directive(reply="pooled answer"))
        assert status == 200 and payload["choices"][0]["message"]["content"] == "pooled answer"
        async with session.post(relay + "/v1/chat/completions", headers=auth(KEY),
                                json=chat_body(stream=True, text=directive(reply="a b c", chunks=3))) as response:
            assert response.status == 200
            events = parse_sse(await response.text())
    assert events[-1] == "[DONE]"
    assert set(chat_counts(emulator)) <= {upstream_print(t) for t in GOOD}
    assert sum(chat_counts(emulator).values()) == 2


async def test_wrong_key_gets_401_and_never_reaches_the_upstream(
        relay_factory: RelayFactory, emulator: RunningEmulator) -> None:
    relay = await relay_factory(operator=pool())
    async with aiohttp.ClientSession() as session:
        for bearer in (OTHER_KEY, GOOD[0]):  # a Qwen token is not a relay key either
            status, payload, _ = await post_chat(session, relay, key=bearer)
            assert status == 401 and payload["error"]["code"] == "invalid_api_key"
            async with session.get(relay + "/v1/models", headers=auth(bearer)) as response:
                assert response.status == 401
    assert emulator.state.log == []


async def test_pool_rotation_spreads_100_requests_across_tokens(
        relay_factory: RelayFactory, emulator: RunningEmulator) -> None:
    relay = await relay_factory(operator=pool())
    gate = asyncio.Semaphore(10)

    async def one(session: aiohttp.ClientSession) -> int:
        async with gate:
            return (await post_chat(session, relay))[0]

    async with aiohttp.ClientSession() as session:
        statuses = await asyncio.gather(*(one(session) for _ in range(100)))
    assert statuses == [200] * 100
    counts = chat_counts(emulator)
    assert set(counts) == {upstream_print(t) for t in GOOD}
    assert sum(counts.values()) == 100
    assert max(counts.values()) - min(counts.values()) <= 10, counts


async def test_expired_token_is_disabled_after_its_first_401_and_the_request_succeeds(
        relay_factory: RelayFactory, emulator: RunningEmulator) -> None:
    relay = await relay_factory(operator=pool(tokens=(EXPIRED, *GOOD)))
    async with aiohttp.ClientSession() as session:
        for _ in range(8):
            status, _payload, _ = await post_chat(session, relay)
            assert status == 200
        async with session.get(relay + "/metrics") as response:
            metrics = await response.text()
    expired = [r for r in emulator.state.log if r.token_fingerprint == upstream_print(EXPIRED)]
    assert len(expired) == 1 and expired[0].status == 401
    assert f'qwen_relay_token_state{{state="disabled",token="{pool_fingerprint(EXPIRED)}"}} 1' in metrics


async def test_429_token_cools_down_and_the_request_moves_to_another(
        relay_factory: RelayFactory, emulator: RunningEmulator) -> None:
    relay = await relay_factory(operator=pool())
    async with aiohttp.ClientSession() as session:
        assert (await post_chat(session, relay))[0] == 200  # warms the model list
        emulator.state.reset()
        emulator.state.arm({"fault": "http_429", "retry_after": 60}, path=COMPLETIONS, times=1)
        status, _payload, _ = await post_chat(session, relay)
        assert status == 200
        limited, retried = emulator.state.log
        assert limited.status == 429 and retried.status == 200
        assert limited.token_fingerprint != retried.token_fingerprint
        for _ in range(6):
            assert (await post_chat(session, relay))[0] == 200
        async with session.get(relay + "/metrics") as response:
            metrics = await response.text()
    assert [r.token_fingerprint for r in emulator.state.log[2:]].count(limited.token_fingerprint) == 0
    cooling = next(pool_fingerprint(t) for t in GOOD if upstream_print(t) == limited.token_fingerprint)
    assert f'qwen_relay_token_state{{state="cooling",token="{cooling}"}} 1' in metrics


async def test_every_token_out_gives_503_no_upstream_token(
        relay_factory: RelayFactory, emulator: RunningEmulator) -> None:
    relay = await relay_factory(operator=pool(tokens=(EXPIRED,)))
    async with aiohttp.ClientSession() as session:
        for _ in range(2):
            status, payload, _ = await post_chat(session, relay)
            assert status == 503 and payload["error"]["code"] == "no_upstream_token"
    assert len(emulator.state.log) == 1  # the expired token was tried once, then left out


async def test_rpm_limit_holds_under_concurrent_load(relay_factory: RelayFactory, emulator: RunningEmulator) -> None:
    relay = await relay_factory(operator=pool(key_spec(rpm=5), key_spec(OTHER_KEY, "bob")))
    async with aiohttp.ClientSession() as session:
        results = await asyncio.gather(*(post_chat(session, relay) for _ in range(12)))
        statuses = Counter(status for status, _, _ in results)
        assert statuses == {200: 5, 429: 7}
        refused = [(payload, headers) for status, payload, headers in results if status == 429]
        assert all(p["error"]["code"] == "rate_limit_exceeded" and int(h["Retry-After"]) >= 1 for p, h in refused)
        assert (await post_chat(session, relay, key=OTHER_KEY))[0] == 200  # another key is not starved
        async with session.get(relay + "/metrics") as response:
            metrics = await response.text()
    assert sum(chat_counts(emulator).values()) == 6
    assert 'qwen_relay_key_rejections_total{key="alice",reason="rpm"} 7' in metrics
    assert 'qwen_relay_key_requests_total{key="alice"} 5' in metrics


async def test_max_concurrent_holds_while_streams_are_open(
        relay_factory: RelayFactory, emulator: RunningEmulator) -> None:
    relay = await relay_factory(operator=pool(key_spec(max_concurrent=2)))
    slow = directive(reply="one two three four five six", chunks=6, delay_ms=80)

    async def stream(session: aiohttp.ClientSession) -> tuple[int, str]:
        async with session.post(relay + "/v1/chat/completions", headers=auth(KEY),
                                json=chat_body(stream=True, text=slow)) as response:
            return response.status, await response.text()

    async with aiohttp.ClientSession() as session:
        results = await asyncio.gather(*(stream(session) for _ in range(6)))
        assert Counter(status for status, _ in results) == {200: 2, 429: 4}
        assert all(parse_sse(text)[-1] == "[DONE]" for status, text in results if status == 200)
        assert (await post_chat(session, relay))[0] == 200  # slots came back
    assert emulator.state.open_streams == 0


async def test_model_not_allowed_is_403_and_the_list_shows_allowed_models(
        relay_factory: RelayFactory, emulator: RunningEmulator) -> None:
    relay = await relay_factory(operator=pool(key_spec(models=frozenset({MODEL}))))
    async with aiohttp.ClientSession() as session:
        status, payload, _ = await post_chat(session, relay, model="qwen-plus-latest")
        assert status == 403 and payload["error"]["code"] == "model_not_allowed"
        async with session.get(relay + "/v1/models", headers=auth(KEY)) as response:
            assert [m["id"] for m in (await response.json())["data"]] == [MODEL]
    assert chat_counts(emulator) == Counter()


async def test_both_mode_uses_the_pool_for_keys_and_passes_other_bearers_through(
        relay_factory: RelayFactory, emulator: RunningEmulator) -> None:
    relay = await relay_factory(operator=pool(tokens=(GOOD[0],), mode="both"))
    async with aiohttp.ClientSession() as session:
        assert (await post_chat(session, relay))[0] == 200
        assert (await post_chat(session, relay, key=GOOD[2]))[0] == 200  # the caller's own token
        status, _payload, _ = await post_chat(session, relay, key="not-a-valid-qwen-token")
        assert status == 401  # passed through: the upstream refused it
    assert chat_counts(emulator)[upstream_print(GOOD[0])] == 1
    assert chat_counts(emulator)[upstream_print(GOOD[2])] == 1


async def test_model_list_is_fetched_once_for_the_whole_pool(
        relay_factory: RelayFactory, emulator: RunningEmulator) -> None:
    relay = await relay_factory(operator=pool(key_spec(), key_spec(OTHER_KEY, "bob")))
    async with aiohttp.ClientSession() as session:
        for key in (KEY, OTHER_KEY, KEY, OTHER_KEY):
            async with session.get(relay + "/v1/models", headers=auth(key)) as response:
                assert response.status == 200
            assert (await post_chat(session, relay, key=key))[0] == 200
    assert [r.path for r in emulator.state.log].count("/api/models") == 1


async def test_no_token_or_key_appears_in_any_log_line(
        relay_factory: RelayFactory, emulator: RunningEmulator, caplog: pytest.LogCaptureFixture) -> None:
    """Disabled, cooled, refused and served requests log fingerprints and names only."""
    caplog.set_level(logging.DEBUG)
    relay = await relay_factory(operator=pool(key_spec(rpm=3), tokens=(EXPIRED, *GOOD), mode="both"))
    async with aiohttp.ClientSession() as session:
        emulator.state.arm({"fault": "http_429", "retry_after": 5}, path=COMPLETIONS, times=1)
        for _ in range(4):
            await post_chat(session, relay)
        await post_chat(session, relay, key=GOOD[1])  # passthrough
        await post_chat(session, relay, key=OTHER_KEY)
        async with session.get(relay + "/metrics") as response:
            metrics = await response.text()
    formatter = JsonFormatter()
    lines = [formatter.format(record) for record in caplog.records]
    raw = [record.getMessage() + json.dumps(getattr(record, "fields", {}), default=str)
           for record in caplog.records]  # before redaction: no reliance on the last line of defence
    secrets = [*GOOD, EXPIRED, KEY, OTHER_KEY, hash_key(KEY)[7:]]
    for text in lines + raw + [metrics]:
        assert not any(secret in text for secret in secrets), text
    events = [json.loads(line)["event"] for line in lines]
    assert "token_disabled" in events and "token_cooling" in events
    assert any(pool_fingerprint(EXPIRED) in line for line in lines)


async def test_hash_key_command_prints_the_hash_of_stdin() -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "relay", "hash-key", stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
    out, _ = await process.communicate(KEY.encode() + b"\n")
    assert process.returncode == 0 and out.decode().strip() == hash_key(KEY)


def _config_text(tmp_path: Path, *keys: tuple[str, str]) -> str:
    tokens = tmp_path / "tokens"
    tokens.write_text("\n".join(GOOD) + "\n")
    os.chmod(tokens, 0o600)
    entries = "".join(f'[[operator.keys]]\nname = "{name}"\nhash = "{hash_key(key)}"\n\n' for key, name in keys)
    return f'[operator]\nmode = "pool"\n\n{entries}[operator.tokens]\nfile = "{tokens}"\n'


async def _wait_for_log(relay: RelayProcess, event: str) -> dict[str, Any]:
    assert relay.process.stderr is not None
    async with asyncio.timeout(10):
        while True:
            line = await relay.process.stderr.readline()
            assert line, f"relay closed stderr before logging {event!r}"
            entry = json.loads(line)
            if entry.get("event") == event:
                return dict(entry)


async def test_sighup_reload_adds_a_key_while_a_stream_stays_open(
        emulator: RunningEmulator, tmp_path: Path) -> None:
    """A reload swaps keys atomically; a bad file is refused whole and the old keys stay."""
    path = tmp_path / "relay.toml"
    path.write_text(_config_text(tmp_path, (KEY, "alice")))
    relay = await _start("--config", str(path), "--upstream", emulator.url, "--dialect", "qwen-v1")
    try:
        reply = "one two three four five six seven eight"
        body = chat_body(stream=True, text=directive(reply=reply, chunks=8, delay_ms=150))
        async with aiohttp.ClientSession() as session:
            stream = await session.post(relay.url + "/v1/chat/completions", json=body, headers=auth(KEY))
            assert stream.status == 200
            assert (await post_chat(session, relay.url, key=OTHER_KEY))[0] == 401
            path.write_text(_config_text(tmp_path, (KEY, "alice"), (OTHER_KEY, "bob")))
            relay.process.send_signal(signal.SIGHUP)
            reloaded = await _wait_for_log(relay, "operator_reloaded")
            assert reloaded["keys"] == 2
            assert emulator.state.open_streams == 1  # the stream is still running
            assert (await post_chat(session, relay.url, key=OTHER_KEY))[0] == 200
            path.write_text(_config_text(tmp_path, (KEY, "alice")) + "\n[operator.bogus]\n")
            relay.process.send_signal(signal.SIGHUP)
            failed = await _wait_for_log(relay, "config_reload_failed")
            assert "operator.bogus: unknown setting" in failed["error"]
            assert (await post_chat(session, relay.url, key=OTHER_KEY))[0] == 200  # old config kept
            assert emulator.state.open_streams == 1
            events = parse_sse((await stream.read()).decode())
        assert events[-1] == "[DONE]"
        deltas = [json.loads(e)["choices"][0]["delta"].get("content", "")
                  for e in events[:-1] if json.loads(e)["choices"]]
        assert "".join(deltas) == reply
    finally:
        relay.process.kill()
        await relay.process.wait()


async def test_qwen_v2_creates_the_chat_and_streams_on_the_same_pool_token(
        relay_factory: RelayFactory, emulator: RunningEmulator) -> None:
    """qwen-v2 makes two calls per answer (chats/new, then completions): one lease serves both."""
    relay = await relay_factory(dialect="qwen-v2", operator=pool(tokens=(EXPIRED, *GOOD)))
    async with aiohttp.ClientSession() as session:
        for stream in (True, False, True):
            async with session.post(relay + "/v1/chat/completions", headers=auth(KEY),
                                    json=chat_body(stream=stream, text=directive(reply="v2 pooled"))) as response:
                assert response.status == 200
                await response.read()
    calls = [(r.path, r.token_fingerprint) for r in emulator.state.log
             if r.path.startswith("/api/v2/chat") and r.method == "POST"]
    assert len(calls) == 6
    for new, completion in zip(calls[::2], calls[1::2], strict=True):
        assert new[0] == "/api/v2/chats/new" and completion[0] == "/api/v2/chat/completions"
        assert new[1] == completion[1] != upstream_print(EXPIRED)


@pytest.mark.parametrize("fault", ["http_401", "http_403"])
async def test_stream_rejected_token_is_disabled_and_the_stream_moves_on(
        relay_factory: RelayFactory, emulator: RunningEmulator, fault: str) -> None:
    """No byte had reached the client, so the stream is retried on another token, whole."""
    relay = await relay_factory(operator=pool())
    async with aiohttp.ClientSession() as session:
        assert (await post_chat(session, relay))[0] == 200  # warms the model list
        emulator.state.reset()
        emulator.state.arm({"fault": fault}, path=COMPLETIONS, times=1)
        async with session.post(relay + "/v1/chat/completions", headers=auth(KEY),
                                json=chat_body(stream=True, text=directive(reply="moved on"))) as response:
            assert response.status == 200
            events = parse_sse(await response.text())
        for _ in range(4):
            assert (await post_chat(session, relay))[0] == 200
    assert events[-1] == "[DONE]" and events.count("[DONE]") == 1
    rejected, *rest = emulator.state.log
    assert rejected.status in (401, 403) and rest[0].status == 200
    assert rejected.token_fingerprint not in {record.token_fingerprint for record in rest}
