"""``--record DIR`` and ``python -m relay.emulator --replay DIR``, on real sockets.

The canary test drives every kind of upstream exchange (models, chats/new,
completions streamed and not, a stream left early and its stop, delete, an
account's refresh, a sign-in) with known secrets, then reads every byte the
recording wrote, raw and with its base64 bodies decoded: none of the secrets
may be there. The replay test records a session, serves it from a separate
emulator process, and checks a fresh relay in front of it answers the openai
SDK exactly as the first one did, and with an error envelope once nothing is left.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import stat
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import openai
from aiohttp import web

from relay.app import make_app
from relay.config import Config, Timeouts
from relay.dialects.v2_errors import refusal as v2_refusal
from relay.emulator import EmulatorConfig, RunningEmulator, start_emulator
from relay.emulator.logins import password_digest
from relay.operator.config import AccountSpec, KeySpec, OperatorConfig, Secret, hash_key
from relay.server import RUNNER_OPTIONS
from relay.upstream import UpstreamClient
from relay.upstream.recording import Recorder
from tests.conftest import chat_body, directive, parse_sse

PASSTHROUGH_TOKEN = "canary-passthrough-token-7d41c9"
RELAY_KEY = "canary-relay-key-11aa22bb33cc"
BX_UA = "231!canary-bx-ua-value-9f8e7d6c5b4a"
BX_UMIDTOKEN = "canary-umid-token-0a0b0c0d"
EMAIL = "canary.person@example.org"
PASSWORD = "canary-password-Zq93!"
MODEL = "qwen-max-latest"


def _config(upstream: str, tmp_path: Path, **overrides: Any) -> Config:
    timeouts = Timeouts(upstream_s=5.0, backoff_base_s=0.01, backoff_max_s=0.05, queue_s=0.0)
    return Config(upstream=upstream, dialect="qwen-v2", timeouts=timeouts, retries=1,
                  state_dir=str(tmp_path / "state"), **overrides)


@contextlib.asynccontextmanager
async def running_relay(config: Config) -> AsyncIterator[str]:
    """The relay app on 127.0.0.1; its cleanup (the recorder's last writes included) runs on exit."""
    runner = web.AppRunner(make_app(config), **RUNNER_OPTIONS)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


async def poll(predicate: Any, what: str) -> None:
    """Check ``predicate`` every 20 ms for at most 5 s."""
    for _ in range(250):
        if predicate():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"not within 5 s: {what}")


def recorded(directory: Path) -> list[dict[str, Any]]:
    return [json.loads(path.read_text(encoding="utf-8")) for path in sorted(directory.glob("*.json"))]


async def ask(session: aiohttp.ClientSession, relay: str, token: str, *, stream: bool, text: str) -> str:
    """One chat completion; its whole answer text."""
    async with session.post(relay + "/v1/chat/completions", json=chat_body(stream=stream, text=text, model=MODEL),
                            headers={"Authorization": f"Bearer {token}"}) as response:
        body = await response.text()
        assert response.status == 200, body
    if not stream:
        content: str = json.loads(body)["choices"][0]["message"]["content"]
        return content
    return "".join(json.loads(event)["choices"][0]["delta"].get("content") or ""
                   for event in parse_sse(body) if event != "[DONE]" and json.loads(event)["choices"])


async def test_recording_has_every_exchange_in_private_files_and_no_secret_in_any_byte(tmp_path: Path) -> None:
    """Every upstream exchange becomes one 0600 file in a 0700 directory, and no token, refresh
    token, cookie value, bx-* value, e-mail or password reaches the disk, not even base64-encoded."""
    record_dir = tmp_path / "recording"
    emulator = await start_emulator(EmulatorConfig(users={EMAIL: PASSWORD}))
    canaries = {PASSTHROUGH_TOKEN, BX_UA, BX_UMIDTOKEN, EMAIL, PASSWORD, password_digest(PASSWORD)}
    try:
        seed = emulator.state.create_login(EMAIL)
        login = emulator.state.logins.logins[seed.id]
        canaries |= {seed.access_token, seed.refresh_token, *login.jar.values()}
        # Without token= the account is refreshed at start: the refresh is recorded too.
        jar = "; ".join(part for part in seed.cookie.split("; ") if not part.startswith("token="))
        operator = OperatorConfig(
            mode="both", keys=(KeySpec("team", bytes.fromhex(hash_key(RELAY_KEY)[7:])),),
            accounts=(AccountSpec("main", Secret(jar), bx_ua=Secret(BX_UA), bx_umidtoken=Secret(BX_UMIDTOKEN),
                                  bx_v="2.5.31"),))
        config = _config(emulator.url, tmp_path, auth_origin=emulator.url, operator=operator,
                         record_dir=str(record_dir))
        async with running_relay(config) as relay, aiohttp.ClientSession() as session:
            await poll(lambda: any(r.result == "ok" for r in emulator.state.refreshes), "the account's refresh")
            async with session.get(relay + "/v1/models",
                                   headers={"Authorization": f"Bearer {PASSTHROUGH_TOKEN}"}) as response:
                assert response.status == 200
            for token in (PASSTHROUGH_TOKEN, RELAY_KEY):
                for stream in (True, False):
                    answer = await ask(session, relay, token, stream=stream,
                                       text=directive(reply=f"Write to {EMAIL}, please") + "\nhi")
                    assert EMAIL in answer  # the relay's own answer is untouched; only the recording is redacted
            # A stream the client leaves after its first event: recorded incomplete, and its stop too.
            slow = directive(reply="one two three four five six", chunks=6, delay_ms=300)
            async with session.post(relay + "/v1/chat/completions", json=chat_body(stream=True, text=slow),
                                    headers={"Authorization": f"Bearer {PASSTHROUGH_TOKEN}"}) as response:
                assert response.status == 200
                await response.content.readline()
            await poll(lambda: len(emulator.state.stop_calls) >= 1, "the stop of the abandoned stream")
            await poll(lambda: sum(r.method == "DELETE" for r in emulator.state.log) >= 5, "five chat deletes")
            canaries |= {login.refresh_token, *login.jar.values()}  # rotated by now
            # The secrets did travel upstream: their absence from the recording means something.
            assert any(r.headers.get("bx-ua") == BX_UA for r in emulator.state.log)
            assert any(r.login_id == seed.id for r in emulator.state.log if r.path == "/api/v2/chat/completions")
        # A sign-in through an UpstreamClient with a recorder of its own, numbering on after the relay's.
        cookies: dict[str, str] = {}
        recorder = Recorder(str(record_dir))
        signin = UpstreamClient(emulator.url, config, refusal=v2_refusal, recorder=recorder)
        try:
            answer = await signin.send_json(
                "POST", "/api/v2/auths/signin", [("Content-Type", "application/json")],
                {"email": EMAIL, "password": password_digest(PASSWORD)}, on_cookies=cookies.update)
        finally:
            await signin.close()
            await recorder.close()
        canaries |= {answer["data"]["access_token"], *cookies.values()}
    finally:
        await emulator.close()

    assert stat.S_IMODE(record_dir.stat().st_mode) == 0o700
    files = sorted(record_dir.glob("*.json"))
    names = [path.name for path in files]
    for path in files:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path.name
    records = recorded(record_dir)
    assert [r["seq"] for r in records] == sorted(r["seq"] for r in records) and len(set(names)) == len(names)
    kinds = {(r["request"]["method"], r["request"]["path"].partition("?")[0]) for r in records}
    for kind in [("GET", "/api/v2/auths/refresh"), ("GET", "/api/models"), ("POST", "/api/v2/chats/new"),
                 ("POST", "/api/v2/chat/completions"), ("POST", "/api/v2/chat/completions/stop"),
                 ("POST", "/api/v2/auths/signin")]:
        assert any(k[0] == kind[0] and k[1].rstrip("/") == kind[1] for k in kinds), (kind, names)
    assert any(m == "DELETE" and p.startswith("/api/v2/chats/h:") for m, p in kinds), names
    assert names[-1].endswith("-POST-api-v2-auths-signin.json"), names
    abandoned = [r for r in records if r["complete"] is False and r["request"]["path"].startswith(
        "/api/v2/chat/completions?")]
    assert len(abandoned) == 1 and abandoned[0]["response"]["status"] == 200
    assert all(r["complete"] for r in records if r is not abandoned[0])
    signed_in = records[-1]
    assert signed_in["request"]["body"] == {"email": "<redacted:email>", "password": "<redacted>"}
    assert json.loads(signed_in["response"]["text"])["data"]["access_token"].startswith("<redacted:")

    # Not one byte of a secret: raw files, and every base64 body decoded.
    bodies = [base64.b64decode(r["response"]["body_base64"]) for r in records if r["response"]]
    for canary in canaries:
        assert len(canary) >= 8
        for haystack in [path.read_bytes() for path in files] + bodies:
            assert canary.encode() not in haystack, f"a secret ({canary[:6]}…) was recorded"
    # No JWT at all (the relay's refreshed tokens included), in any decoded body or header.
    for haystack in bodies + [json.dumps([r["request"], r["response"]["headers"]]).encode() for r in records]:
        assert b"eyJ" not in haystack


async def test_replay_of_a_recording_answers_a_fresh_relay_as_the_upstream_did(tmp_path: Path) -> None:
    """A session recorded with --record, served by ``python -m relay.emulator --replay``, gives the
    openai SDK the same models and answers through a fresh relay; past the recording, an error envelope."""
    record_dir = tmp_path / "recording"
    stream_text = directive(reply="streamed from the recording", chunks=4) + "\nfirst"
    plain_text = directive(reply="a whole answer, recorded") + "\nsecond"

    async def session_answers(relay: str) -> tuple[list[str], str, str]:
        client = openai.AsyncOpenAI(base_url=relay + "/v1", api_key=PASSTHROUGH_TOKEN, max_retries=0)
        async with client:
            models = sorted(model.id for model in (await client.models.list()).data)
            pieces = []
            async for chunk in await client.chat.completions.create(
                    model=MODEL, stream=True, messages=[{"role": "user", "content": stream_text}]):
                if chunk.choices and chunk.choices[0].delta.content:
                    pieces.append(chunk.choices[0].delta.content)
            plain = await client.chat.completions.create(model=MODEL,
                                                         messages=[{"role": "user", "content": plain_text}])
            return models, "".join(pieces), plain.choices[0].message.content or ""

    emulator: RunningEmulator = await start_emulator(EmulatorConfig())
    try:
        async with running_relay(_config(emulator.url, tmp_path, record_dir=str(record_dir))) as relay:
            original = await session_answers(relay)
            await poll(lambda: sum(r.method == "DELETE" for r in emulator.state.log) >= 2, "both chat deletes")
    finally:
        await emulator.close()
    assert original[1] == "streamed from the recording" and original[2] == "a whole answer, recorded"
    assert MODEL in original[0]

    replay = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "relay.emulator", "--replay", str(record_dir), "--port", "0",
        stdout=asyncio.subprocess.PIPE, cwd=os.getcwd())
    try:
        assert replay.stdout is not None
        async with asyncio.timeout(20):
            replay_url = (await replay.stdout.readline()).decode().strip()
        assert replay_url.startswith("http://127.0.0.1:"), replay_url
        async with running_relay(_config(replay_url, tmp_path / "fresh")) as relay:
            assert await session_answers(relay) == original
            async with aiohttp.ClientSession() as session:
                async with session.post(relay + "/v1/chat/completions", json=chat_body(text="third", model=MODEL),
                                        headers={"Authorization": f"Bearer {PASSTHROUGH_TOKEN}"}) as response:
                    envelope = await response.json()
                    assert response.status >= 400, envelope
                assert set(envelope) == {"error"} and envelope["error"]["message"], envelope
                async with session.get(replay_url + "/_emulator/log") as response:
                    asked = await response.json()
        assert ("POST", "/api/v2/chats/new", 404) in {(r["method"], r["path"], r["status"]) for r in asked}
        assert [r["status"] for r in asked if r["path"] == "/api/v2/chat/completions"] == [200, 200]
    finally:
        replay.terminate()
        await replay.wait()
