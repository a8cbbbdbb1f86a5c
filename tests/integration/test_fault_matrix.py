"""The fault matrix of issue 6: one test per row, named after the row, in the issue's order.

Every row is driven through real sockets: the emulator's fault injection (or, where
the emulator cannot produce the bytes, a scripted upstream at the network edge), the
real relay, and a real client. Each docstring quotes the row it guards. Where an
existing test already covers a row exactly, a comment at the row's place names it
instead of duplicating it; where it covered a row only in part, the full row is here.

Rows 12 (slow client) and 13 (1,000 abandoned streams) measure resources and live in
``test_resources.py``; the comments at their places say so.

Rows are numbered 1–16 in the issue's order; each section comment carries the number,
and the "Also" items of the issue follow the matrix.

Timing bounds use a fixed ``SLACK_S`` on top of the figure the row promises, so they
fail on a relay that waits for the wrong thing, not on a loaded CI machine. Nothing
here sleeps to synchronise: tests wait on the emulator's events (request arrived,
peer closed, idle), on the relay's log lines, or on the tasks themselves. The sleeps
that remain are the fault itself (a trickling client, a paced scripted upstream).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from pytest_aiohttp import AiohttpServer

from relay.emulator import RequestRecord, RunningEmulator
from tests.conftest import MODEL, TOKEN, RelayFactory, auth, chat_body, directive, parse_sse
from tests.integration.test_errors import closed_port, envelope
from tests.integration.test_streaming_faults import (
    assert_completed,
    assert_done_once_last,
    assert_error_then_done,
    text_of,
)

CHAT = "/v1/chat/completions"
UPSTREAM_CHAT = "/api/chat/completions"
PIECES = ["alpha ", "beta ", "gamma ", "delta"]
#: added to every promised bound: scheduling noise, never a second chance for a wrong wait.
SLACK_S = 0.5
MIB = 1024 * 1024


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


# --- helpers ------------------------------------------------------------------------


def chat_requests(emulator: RunningEmulator) -> list[RequestRecord]:
    """The qwen-v1 chat completions the emulator received (model-list fetches left out)."""
    return [record for record in emulator.state.log if record.path == UPSTREAM_CHAT]


async def post(session: aiohttp.ClientSession, url: str, body: Any,
               headers: dict[str, str] | None = None) -> tuple[aiohttp.ClientResponse, str]:
    async with asyncio.timeout(15):
        async with session.post(url + CHAT, json=body, headers=auth() if headers is None else headers) as resp:
            return resp, await resp.text()


def answer_text(body: str, stream: bool) -> str:
    if not stream:
        return str(json.loads(body)["choices"][0]["message"]["content"])
    return text_of(parse_sse(body))


async def timed_events(resp: aiohttp.ClientResponse) -> list[tuple[float, str]]:
    """Each SSE ``data`` payload with the loop time at which its event was complete."""
    loop = asyncio.get_running_loop()
    events: list[tuple[float, str]] = []
    data: list[str] = []
    async for raw in resp.content:
        line = raw.decode().rstrip("\r\n")
        if line.startswith("data:"):
            data.append(line[5:].lstrip(" "))
        elif not line and data:
            events.append((loop.time(), "\n".join(data)))
            data = []
    return events


async def gate_in_flight(session: aiohttp.ClientSession, relay: str) -> float:
    """The relay's ``qwen_relay_in_flight`` gauge, read from ``GET /metrics``."""
    async with session.get(relay + "/metrics") as resp:
        assert resp.status == 200
        text = await resp.text()
    (line,) = [line for line in text.splitlines() if line.startswith("qwen_relay_in_flight ")]
    return float(line.split()[1])


async def wait_gate_empty(relay: str, within_s: float = 2.0) -> None:
    """Poll the gauge until no slot is held: it has no event to wait on from outside."""
    async with aiohttp.ClientSession() as session, asyncio.timeout(within_s):
        while await gate_in_flight(session, relay) != 0:
            pass


async def wait_tasks_settled(baseline: set[asyncio.Task[Any]], within_s: float = 2.0) -> None:
    """Wait for every task started since ``baseline`` to end; fail naming the ones that do not.

    Waits on the tasks themselves (``asyncio.wait``), so no sleep decides the outcome:
    a connection handler ends once its socket is closed, a leaked task never does.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within_s
    while True:
        new = asyncio.all_tasks() - baseline - {asyncio.current_task()}
        if not new:
            return
        remaining = deadline - loop.time()
        if remaining <= 0:
            names = sorted(task.get_coro().__qualname__ for task in new)  # type: ignore[union-attr]
            raise AssertionError(f"{len(new)} task(s) still running: {names}")
        await asyncio.wait(new, timeout=remaining)


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def memory_kib(pid: int | str = "self") -> dict[str, int]:
    """``VmRSS`` and ``VmHWM`` (peak RSS) of a process (default: this one), in KiB, from /proc."""
    values: dict[str, int] = {}
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            name, _, value = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                values[name] = int(value.split()[0])
    return values


class RelayProcess:
    """``python -m relay`` in a child process; its JSON log is read as it is written.

    Reading stderr continuously matters twice: a full pipe would block the relay, and
    log lines (``listening``, ``drain_started``) are events a test can wait on.
    """

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.url = ""
        self.log: list[dict[str, Any]] = []
        self._pulse = asyncio.Event()
        self._reader = asyncio.get_running_loop().create_task(self._read_log())

    async def _read_log(self) -> None:
        assert self.process.stderr is not None
        async for raw in self.process.stderr:
            try:
                entry = json.loads(raw)
            except ValueError:
                entry = {"event": None, "raw": raw.decode(errors="replace")}
            self.log.append(entry if isinstance(entry, dict) else {"event": None, "raw": entry})
            self._pulse.set()
            self._pulse = asyncio.Event()
        self._pulse.set()

    async def wait_for_log(self, event: str) -> dict[str, Any]:
        """Return the first log entry named ``event``; callers bound this with a timeout."""
        while True:
            for entry in self.log:
                if entry.get("event") == event:
                    return entry
            if self._reader.done():
                raise AssertionError(f"relay exited ({self.process.returncode}) before logging {event!r}")
            await self._pulse.wait()

    def memory_kib(self) -> dict[str, int]:
        return memory_kib(self.process.pid)

    async def close(self) -> None:
        """Kill the relay's whole process group (its workers too), bounded.

        Every relay here starts with ``start_new_session=True``: a worker left
        behind would hold stderr open, and Python 3.11's ``Process.wait`` waits
        for the pipes as well as for the exit.
        """
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass  # the group is gone already
        async with asyncio.timeout(15):
            await self.process.wait()
        self._reader.cancel()
        try:
            await self._reader
        except asyncio.CancelledError:
            pass


@asynccontextmanager
async def relay_process(*args: str) -> AsyncIterator[RelayProcess]:
    """Run the relay on a free port (``--port 0``), speaking qwen-v1 like the in-process fixture."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "relay", "--host", "127.0.0.1", "--port", "0", "--dialect", "qwen-v1", *args,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE, start_new_session=True,
        limit=4 * MIB)  # a log line with a traceback can exceed asyncio's 64 KiB line limit
    relay = RelayProcess(process)
    try:
        async with asyncio.timeout(20):
            listening = await relay.wait_for_log("listening")
        relay.url = f"http://127.0.0.1:{listening['port']}"
        yield relay
    finally:
        await relay.close()


# --- row 1: upstream 5xx / HTML challenge page, then success -------------------------


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("fault", ["http_500", "http_502", "http_503", "http_500_empty", "html_challenge"])
async def test_upstream_5xx_or_html_challenge_then_success_answers_within_retries(
        relay_factory: RelayFactory, emulator: RunningEmulator, session: aiohttp.ClientSession,
        fault: str, stream: bool) -> None:
    """Issue 6, row "upstream 5xx / HTML challenge page, then success": the client gets
    the answer after at most ``--retries`` attempts, each visible in the emulator's log."""
    retries = 3
    relay = await relay_factory(retries=retries)
    text = directive(fault=fault, fail_times=retries - 1, key=f"row1-{fault}-{stream}", reply="after the faults")
    resp, body = await post(session, relay, chat_body(stream=stream, text=text))
    assert resp.status == 200, body
    assert answer_text(body, stream) == "after the faults"
    attempts = chat_requests(emulator)
    assert len(attempts) <= retries
    assert [record.fault for record in attempts] == [fault] * (retries - 1) + [None]
    assert [record.attempt for record in attempts] == list(range(1, retries + 1))


# --- row 2: upstream 5xx every time --------------------------------------------------


@pytest.mark.parametrize(
    ("fault", "ttfb_ms", "code"),
    [
        ("http_500", 0, "upstream_unavailable"),
        ("http_502", 0, "upstream_unavailable"),
        ("http_503", 0, "upstream_unavailable"),
        ("http_500_empty", 0, "upstream_unavailable"),
        ("html_challenge", 0, "upstream_challenge"),
        # Each attempt takes most of --timeout: the attempts × timeout term of the bound.
        ("http_503", 800, "upstream_unavailable"),
    ],
    ids=["500", "502", "503", "500-empty", "challenge", "503-slow"],
)
async def test_upstream_5xx_every_time_is_502_after_exactly_retries_attempts_within_time_bound(
        relay_factory: RelayFactory, emulator: RunningEmulator, session: aiohttp.ClientSession,
        fault: str, ttfb_ms: int, code: str) -> None:
    """Issue 6, row "upstream 5xx every time": a 502 OpenAI error after exactly
    ``--retries`` attempts, in at most backoff sum + attempts × ``--timeout``."""
    retries, timeout_s, backoff_max_s = 3, 1.0, 0.1
    relay = await relay_factory(retries=retries, timeout_s=timeout_s, backoff_base_s=0.05,
                                backoff_max_s=backoff_max_s)
    loop = asyncio.get_running_loop()
    started = loop.time()
    resp, body = await post(session, relay, chat_body(text=directive(fault=fault, ttfb_ms=ttfb_ms)))
    elapsed = loop.time() - started
    error = envelope(resp, body, 502)
    assert error["code"] == code
    assert "<html" not in error["message"].lower()
    assert len(chat_requests(emulator)) == retries
    assert elapsed < retries * timeout_s + retries * backoff_max_s + SLACK_S, elapsed
    assert elapsed >= retries * ttfb_ms / 1000


# --- row 3: upstream 401 / 403 / 429 ------------------------------------------------


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize(
    ("fault", "status", "code"),
    [("http_401", 401, "invalid_api_key"), ("http_403", 401, "invalid_api_key"),
     ("http_429", 429, "rate_limit_exceeded")],
    ids=["401", "403", "429"],
)
async def test_upstream_401_403_429_become_401_401_429_and_auth_errors_are_not_retried(
        relay_factory: RelayFactory, emulator: RunningEmulator, session: aiohttp.ClientSession,
        fault: str, status: int, code: str, stream: bool) -> None:
    """Issue 6, row "upstream 401 / 403 / 429": 401 / 401 / 429 with the upstream's
    Retry-After; exactly one attempt for 401/403 (nor is a 429 hammered with retries)."""
    relay = await relay_factory(retries=3)
    resp, body = await post(session, relay, chat_body(stream=stream, text=directive(fault=fault, retry_after=7)))
    error = envelope(resp, body, status)
    assert error["code"] == code
    assert "<html" not in error["message"].lower()
    if status == 429:
        assert resp.headers.get("Retry-After") == "7"
    assert len(chat_requests(emulator)) == 1


# --- row 4: connection refused, DNS failure -----------------------------------------


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("failure", ["refused", "dns"])
async def test_connection_refused_or_dns_failure_is_502_quickly(
        relay_factory: RelayFactory, session: aiohttp.ClientSession, failure: str, stream: bool) -> None:
    """Issue 6, row "connection refused, DNS failure": 502, quickly.

    ``.invalid`` is reserved (RFC 2606): no resolver may answer it, so resolution
    fails at once here (checked: getaddrinfo returns EAI_NONAME in ~0.1 s). "Quickly"
    means well inside ``--timeout`` (5 s): only the retry backoffs may pass.
    """
    upstream = f"http://127.0.0.1:{closed_port()}" if failure == "refused" else "http://qwen-relay-test.invalid"
    relay = await relay_factory(upstream=upstream, timeout_s=5.0)
    loop = asyncio.get_running_loop()
    started = loop.time()
    async with asyncio.timeout(2):
        resp, body = await post(session, relay, chat_body(stream=stream))
    assert envelope(resp, body, 502)["code"] == "upstream_unavailable"
    assert loop.time() - started < 2


# --- row 5: silent before first byte --------------------------------------------------


@pytest.mark.parametrize(
    ("fault", "stream"),
    [("stall_before", False), ("stall_before", True), ("stall_headers", True)],
    ids=["no-headers-json", "no-headers-stream", "headers-then-silence"],
)
async def test_silent_before_first_byte_is_504_after_timeout(
        relay_factory: RelayFactory, emulator: RunningEmulator, session: aiohttp.ClientSession,
        fault: str, stream: bool) -> None:
    """Issue 6, row "silent before first byte": 504 after ``--timeout`` (not before it,
    and less than a second after it), with no retry of a timed-out attempt."""
    timeout_s = 0.5
    relay = await relay_factory(timeout_s=timeout_s)
    loop = asyncio.get_running_loop()
    started = loop.time()
    resp, body = await post(session, relay, chat_body(stream=stream, text=directive(fault=fault)))
    elapsed = loop.time() - started
    assert envelope(resp, body, 504)["code"] == "upstream_timeout"
    assert timeout_s <= elapsed < timeout_s + 1, elapsed
    assert len(chat_requests(emulator)) == 1


# --- row 6: silent mid-stream --------------------------------------------------------


async def test_silent_mid_stream_sends_error_then_done_within_timeout_plus_one_second(
        relay_factory: RelayFactory, emulator: RunningEmulator, session: aiohttp.ClientSession) -> None:
    """Issue 6, row "silent mid-stream": ``data: {"error":...}`` then ``data: [DONE]``
    within ``--timeout`` + 1 s of the last text; the text before the stall is kept, the
    silent upstream is hung up on, and nothing is retried (bytes were already sent)."""
    timeout_s = 0.5
    relay = await relay_factory(timeout_s=timeout_s)
    body = chat_body(stream=True, text=directive(fault="stall_mid", after=2, pieces=PIECES))
    async with asyncio.timeout(10):
        async with session.post(relay + CHAT, json=body, headers=auth()) as resp:
            assert resp.status == 200
            timed = await timed_events(resp)
    events = [data for _, data in timed]
    assert text_of(events) == "alpha beta "
    assert_error_then_done(events, "upstream_timeout")
    last_text_at = max(at for at, data in timed if data != "[DONE]" and "beta" in data)
    done_at = timed[-1][0]
    # The relay's timer starts when it reads "beta", a hair before the client does: 0.9×.
    assert 0.9 * timeout_s <= done_at - last_text_at < timeout_s + 1, done_at - last_text_at
    assert len(chat_requests(emulator)) == 1
    async with asyncio.timeout(1):
        await emulator.state.wait_for_idle()


# --- row 7: reset mid-stream ----------------------------------------------------------
# Covered exactly by tests/integration/test_streaming_faults.py::
# test_reset_mid_stream_sends_error_then_done_without_retry (text so far, one error
# event, one [DONE], one upstream request). test_no_retry_after_any_byte_reached_the_client
# below repeats the "no retry" half for every fault that can follow the first byte.


# --- row 8: stream ends without [DONE] -------------------------------------------------
# Covered exactly by tests/integration/test_streaming_faults.py::
# test_missing_upstream_done_still_finishes_with_stop_then_done (exact text, exactly one
# finish_reason "stop" chunk, no error, one final [DONE]).


# --- row 9: a line over --max-line-bytes -------------------------------------------------


async def test_line_over_max_line_bytes_sends_error_then_done_and_memory_stays_bounded(
        emulator: RunningEmulator) -> None:
    """Issue 6, row "a line over --max-line-bytes": error event then ``[DONE]``, and
    memory does not grow past the limit.

    The relay runs as its own process so its peak RSS (``VmHWM``) is its own: a 50 MB
    line against ``--max-line-bytes`` 1 MiB must raise the peak by far less than 50 MB.
    """
    line_bytes, limit = 50_000_000, MIB
    async with relay_process("--upstream", emulator.url, "--max-line-bytes", str(limit)) as relay:
        async with aiohttp.ClientSession() as session:
            # Warm up first: the model list is cached and the code paths are imported.
            resp, body = await post(session, relay.url, chat_body(stream=True, text=directive(reply="warm")))
            assert resp.status == 200, body
            before = relay.memory_kib()
            text = directive(fault="oversized_line", size=line_bytes, after=1, pieces=PIECES)
            resp, body = await post(session, relay.url, chat_body(stream=True, text=text))
            after = relay.memory_kib()
        events = parse_sse(body)
        assert text_of(events) == "alpha "
        assert_error_then_done(events, "upstream_line_too_long")
        growth_kib = after["VmHWM"] - before["VmHWM"]
        print(f"\n[row 9] relay peak RSS {after['VmHWM'] / 1024:.1f} MiB "
              f"(+{growth_kib / 1024:.1f} MiB for a {line_bytes / 1e6:.0f} MB line, limit {limit // MIB} MiB)")
        assert growth_kib * 1024 < 8 * limit, f"peak RSS grew by {growth_kib} KiB"
        async with asyncio.timeout(2):
            await emulator.state.wait_for_idle()  # the relay hung up instead of reading the rest


# --- row 10: garbage, split UTF-8, non-object JSON, \r\n and \r, keep-alives -------------


MULTIBYTE_REPLY = "naïve café — 中文字符 🚀😀 “quoted” \\ back\nslash ✓"


@pytest.mark.parametrize("line_ending", ["\n", "\r\n", "\r"], ids=["lf", "crlf", "cr"])
async def test_garbage_split_utf8_line_endings_and_keepalives_never_crash_and_text_is_exact(
        relay: str, session: aiohttp.ClientSession, line_ending: str) -> None:
    """Issue 6, row "garbage lines, invalid UTF-8 split across TCP reads, JSON that is
    not an object, \\r\\n and \\r line ends, comment and blank keep-alive lines": never a
    crash, and the valid text is still delivered exactly.

    All quirks at once: every event written one byte at a time (each multi-byte
    character cut across reads, so no single read is valid UTF-8), non-JSON and
    non-object ``data:`` events, ``: keep-alive`` comments, trailing spaces.
    """
    text = directive(reply=MULTIBYTE_REPLY, chunks=7, split="byte", garbage=True, keepalive=True,
                     trailing_space=True, line_ending=line_ending)
    resp, body = await post(session, relay, chat_body(stream=True, text=text))
    assert resp.status == 200, body
    events = parse_sse(body)
    assert_completed(events, MULTIBYTE_REPLY)
    assert "\ufffd" not in body


def scripted_upstream(script: list[bytes], gap_s: float = 0.01) -> web.Application:
    """A stand-in Qwen Chat that answers every chat with exactly these bytes, write by write.

    Needed where the emulator cannot go: it only ever sends valid UTF-8. This is a fake
    at the network edge (a real HTTP server on a real socket), not a mock of our code.
    The gap between writes gives each its own TCP segment and, in practice, its own
    read on the relay's side; the assertions hold for any split, so it is not a sync.
    """

    async def models(request: web.Request) -> web.Response:
        return web.json_response({"data": [{"id": MODEL, "object": "model"}]})

    async def chat(request: web.Request) -> web.StreamResponse:
        await request.read()
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for chunk in script:
            await response.write(chunk)
            await asyncio.sleep(gap_s)
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_get("/api/models", models)
    app.router.add_post("/api/chat/completions", chat)
    return app


def v1_event(content: str) -> bytes:
    chunk = {"choices": [{"delta": {"role": "assistant", "content": content}}]}
    return ("data: " + json.dumps(chunk, ensure_ascii=False, separators=(",", ":"))).encode()


async def test_garbage_invalid_utf8_line_endings_and_keepalives_from_a_scripted_upstream_never_crash(
        relay_factory: RelayFactory, aiohttp_server: AiohttpServer, session: aiohttp.ClientSession) -> None:
    """Issue 6, row "garbage lines, invalid UTF-8 split across TCP reads, …" with bytes
    the emulator never sends: truly invalid UTF-8 (in comments and garbage events, cut
    across reads), mixed ``\\n`` / ``\\r\\n`` / ``\\r`` endings in one stream, JSON
    scalars, arrays and ``null``, ``event:``/``id:``/``retry:`` fields, blank keep-alive
    lines, and junk after ``[DONE]``. Valid text is delivered exactly; garbage is skipped.
    """
    first, second, final = "café ", "café 😀 中文", "café 😀 中文 done ✓"
    second_bytes = v1_event(second)
    cut = second_bytes.index("😀".encode()) + 2  # inside the 4-byte emoji
    script = [
        b": \xff\xfe keep-alive with invalid UTF-8\r\n\r\n",
        b"\n\n\r\n",  # blank keep-alive lines
        v1_event(first) + b"\r\n\r\n",
        b"data: \xc3",  # a garbage event whose invalid sequence is cut across reads
        b"\x28 not json \xe2\x82\r\n\r\n",
        b"data: [1,2,3]\r\rdata: 42\n\ndata: null\r\n\r\ndata: \"a string\"\n\n",
        b"event: ping\nid: 7\nretry: 10\ndata: {}\n\n",
        second_bytes[:cut],
        second_bytes[cut:] + b"\r",
        b"\r",  # "\r" then "\r": a CR-only blank line ends the event
        b":\n\n" + v1_event(final) + b"\n",
        b"\ndata: [DONE]\n\n",
        v1_event(final + " junk after DONE") + b"\n\n",
    ]
    upstream = await aiohttp_server(scripted_upstream(script), host="127.0.0.1")
    relay = await relay_factory(upstream=str(upstream.make_url("")).rstrip("/"))
    for _ in range(2):  # and the relay is still up for the next request
        resp, body = await post(session, relay, chat_body(stream=True))
        assert resp.status == 200, body
        assert_completed(parse_sse(body), final)


# --- row 11: client disconnects mid-stream -------------------------------------------------


@pytest.mark.parametrize("fault", ["stall_mid", "slow_dribble"], ids=["upstream-silent", "upstream-dribbling"])
async def test_client_disconnect_mid_stream_closes_upstream_frees_slot_and_leaves_no_task(
        relay_factory: RelayFactory, emulator: RunningEmulator, fault: str) -> None:
    """Issue 6, row "client disconnects mid-stream": the upstream connection is closed
    within 1 s, the semaphore slot is freed (``qwen_relay_in_flight 0``), and no task is
    left running (``asyncio.all_tasks()`` before and after, in this very loop)."""
    relay = await relay_factory()
    async with aiohttp.ClientSession() as session:  # warm up: the model list is cached
        resp, body = await post(session, relay, chat_body(text=directive(reply="warm")))
        assert resp.status == 200, body
    baseline = asyncio.all_tasks()
    body = chat_body(stream=True, text=directive(fault=fault, after=1, reply="d" * 40, chunks=20))
    async with aiohttp.ClientSession() as session:
        async with asyncio.timeout(5):
            resp = await session.post(relay + CHAT, json=body, headers=auth())
            assert resp.status == 200
            async for raw in resp.content:
                if b'"content":"d' in raw:
                    break
        resp.close()  # the client goes away mid-stream
    async with asyncio.timeout(1):
        await emulator.state.peer_closed.wait()
        await emulator.state.wait_for_idle()
    (record,) = chat_requests(emulator)[1:]
    assert record.client_disconnected
    assert record.events_sent < 20
    assert emulator.state.streams_aborted == 1
    await wait_gate_empty(relay)
    await wait_tasks_settled(baseline, within_s=1)


# --- row 12: client reads very slowly -------------------------------------------------------
# In tests/integration/test_resources.py::
# test_slow_client_gets_backpressure_instead_of_buffering_and_relay_rss_stays_bounded


# --- row 13: 1,000 clients open and abandon streams ------------------------------------------
# In tests/integration/test_resources.py::
# test_thousand_abandoned_streams_leak_no_tasks_sockets_or_slots


# --- row 14: request bodies -------------------------------------------------------------------


def _nested_messages(depth: int) -> bytes:
    return (b'{"model":"' + MODEL.encode() + b'","messages":[{"role":"user","content":'
            + b"[" * depth + b"]" * depth + b"}]}")


@pytest.mark.parametrize(
    ("data", "status", "param"),
    [
        (b'{"model": "qwen-max-latest", "messages": [', 400, None),
        (b"[" * 100_000, 400, None),
        (_nested_messages(100_000), 400, None),
        (json.dumps(chat_body(text="x" * (10 * MIB + 1))).encode(), 413, None),
        (json.dumps({"model": MODEL, "messages": "hello"}).encode(), 400, "messages"),
        (json.dumps({"model": MODEL, "messages": {"role": "user", "content": "hi"}}).encode(), 400, "messages"),
        (json.dumps(chat_body(temperature="0.5")).encode(), 400, "temperature"),
        (json.dumps(chat_body(max_tokens="100")).encode(), 400, "max_tokens"),
        (json.dumps(chat_body(stream="true")).encode(), 400, "stream"),
        (b'{"model": "qwen-max-latest", "messages": [{"role": "user", "content": "caf\xe9 \xff\xfe"}]}', 400, None),
        (b'{"model": "qwen-max-latest", "temperature": NaN, "messages": [{"role": "user", "content": "hi"}]}',
         400, None),
        # JSON can spell a lone UTF-16 surrogate; no UTF-8 text can carry it onwards.
        (b'{"model": "qwen-max-latest", "messages": [{"role": "user", "content": "\\ud800"}]}', 400, None),
        (b'{"model": "\\udfff", "messages": [{"role": "user", "content": "hi"}]}', 400, None),
    ],
    ids=["invalid-json", "nested-100k", "nested-content-100k", "over-10MiB", "messages-string",
         "messages-object", "temperature-string", "max-tokens-string", "stream-string", "non-utf8",
         "nan-literal", "lone-surrogate-content", "lone-surrogate-model"],
)
async def test_bad_request_bodies_get_the_right_4xx_envelope_and_the_server_stays_up(
        relay: str, emulator: RunningEmulator, session: aiohttp.ClientSession,
        data: bytes, status: int, param: str | None) -> None:
    """Issue 6, row "request bodies: invalid JSON, deeply nested JSON, 10 MB+ body,
    ``messages`` not a list, numbers as strings, unknown fields, non-UTF-8 bytes": the
    right 4xx with the OpenAI envelope, nothing sent upstream, and the server stays up."""
    async with asyncio.timeout(15):
        async with session.post(relay + CHAT, data=data,
                                headers={**auth(), "Content-Type": "application/json"}) as resp:
            body = await resp.text()
    error = envelope(resp, body, status)
    if param is not None:
        assert error["param"] == param
    assert chat_requests(emulator) == []
    resp, body = await post(session, relay, chat_body(text=directive(reply="still up")))
    assert resp.status == 200, body
    assert answer_text(body, False) == "still up"


async def test_unknown_request_fields_are_accepted_and_the_server_stays_up(
        relay: str, session: aiohttp.ClientSession) -> None:
    """Issue 6, row "request bodies: … unknown fields": not an error at all. The OpenAI
    SDKs add fields release by release; the relay forwards what it does not know."""
    for stream in (False, True):
        body_in = chat_body(stream=stream, text=directive(reply="fine"), some_future_field={"a": [1, None]},
                            metadata={"k": "v"}, user="u-1", parallel_tool_calls=False)
        resp, body = await post(session, relay, body_in)
        assert resp.status == 200, body
        assert answer_text(body, stream) == "fine"


# --- row 15: slow request body (slowloris) ----------------------------------------------------


def _request_head(content_length: int) -> bytes:
    return (f"POST {CHAT} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TOKEN}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {content_length}\r\n\r\n").encode()


async def _trickle(writer: asyncio.StreamWriter, data: bytes, every_s: float) -> None:
    """Send ``data`` one byte at a time (the slowloris); stop quietly when the peer hangs up."""
    try:
        for index in range(len(data)):
            writer.write(data[index:index + 1])
            await writer.drain()
            await asyncio.sleep(every_s)  # the attack is the delay itself
    except ConnectionError:
        pass


async def test_slow_request_body_is_dropped_with_408_in_bounded_time_and_others_are_unaffected(
        relay_factory: RelayFactory, session: aiohttp.ClientSession) -> None:
    """Issue 6, row "slow request body (slowloris)": the connection is dropped after a
    bounded time (``--body-timeout``: a 408, then the connection closes), and other
    requests are served normally while the slow one hangs.

    Headers with ``Content-Length: 1000``, then one body byte every 0.1 s: the 408 must
    come at ``--body-timeout`` and the connection must close right after it, not when
    the trickling client finally stops.
    """
    body_timeout_s = 0.5
    relay = await relay_factory(client_body_s=body_timeout_s)
    host, port = relay.removeprefix("http://").split(":")
    loop = asyncio.get_running_loop()
    reader, writer = await asyncio.open_connection(host, int(port))
    started = loop.time()
    writer.write(_request_head(1000))
    trickle = loop.create_task(_trickle(writer, b"{" + b" " * 999, 0.1))
    try:
        head = loop.create_task(reader.readuntil(b"\r\n\r\n"))
        resp, body = await post(session, relay, chat_body(text=directive(reply="unaffected")))
        assert resp.status == 200, body
        assert answer_text(body, False) == "unaffected"
        assert not head.done(), "the slow request ended before the normal one was served"
        async with asyncio.timeout(body_timeout_s + SLACK_S):
            status_and_headers = await head
        answered_s = loop.time() - started
        assert status_and_headers.startswith(b"HTTP/1.1 408 "), status_and_headers
        assert body_timeout_s <= answered_s, answered_s
        rest = b""
        try:
            async with asyncio.timeout(SLACK_S):
                rest = await reader.read()  # b"" at EOF: the relay closed the connection
        except TimeoutError:
            raise AssertionError(
                f"408 sent after {answered_s:.2f} s, but the connection was still open "
                f"{SLACK_S} s later while the client kept trickling") from None
    finally:
        trickle.cancel()
        writer.close()
    assert json.loads(rest)["error"]["code"] == "request_timeout"


# Slow request *headers* (classic slowloris) are outside this row: aiohttp has no
# deadline for reading a request head. The deployment puts nginx in front, whose
# client_header_timeout (60 s default) bounds it; see deploy/ and README.

async def _open_stream(session: aiohttp.ClientSession, url: str, text: str) -> tuple[aiohttp.ClientResponse, str]:
    """Start a stream and read up to its first content event, so it surely holds a slot."""
    response = await session.post(url + CHAT, json=chat_body(stream=True, text=text), headers=auth())
    assert response.status == 200, await response.text()
    head = ""
    while '"content":"' not in head.partition("\n\n")[2]:
        chunk = await response.content.readany()
        assert chunk, "the stream ended before its first content event"
        head += chunk.decode()
    return response, head


async def test_sigterm_during_20_open_streams_refuses_new_connections_ends_every_stream_and_exits_zero(
        emulator: RunningEmulator) -> None:
    """Issue 6, row "SIGTERM during 20 open streams": new connections are refused; the
    open streams finish within the grace period (``--drain-timeout``) or end with an
    error event and ``[DONE]``; the process exits 0."""
    drain_s = 3.0
    finishing = directive(reply="one two three four five six seven eight", chunks=8, delay_ms=250)
    stalled = directive(fault="stall_mid", after=1, pieces=["held ", "never sent"])
    async with relay_process("--upstream", emulator.url, "--drain-timeout", str(drain_s)) as relay:
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector) as session:
            async with asyncio.timeout(10):
                streams = await asyncio.gather(
                    *(_open_stream(session, relay.url, finishing if i % 2 else stalled) for i in range(20)))
            loop = asyncio.get_running_loop()
            signalled = loop.time()
            relay.process.send_signal(signal.SIGTERM)
            async with asyncio.timeout(5):
                await relay.wait_for_log("drain_started")
                while True:  # the listener closes right after drain_started: poll until refused
                    try:
                        _, probe = await asyncio.open_connection("127.0.0.1", int(relay.url.rsplit(":", 1)[1]))
                    except (ConnectionRefusedError, ConnectionResetError):  # RST when the connect races the close
                        break
                    probe.close()
            with pytest.raises(aiohttp.ClientConnectorError):
                async with aiohttp.ClientSession() as fresh:
                    await fresh.post(relay.url + CHAT, json=chat_body(), headers=auth())

            async def finish(response: aiohttp.ClientResponse, head: str) -> tuple[list[str], float]:
                text = head + (await response.read()).decode()
                return parse_sse(text), loop.time() - signalled

            async with asyncio.timeout(drain_s + 5):
                ended = await asyncio.gather(*(finish(response, head) for response, head in streams))
        for index, (events, after_s) in enumerate(ended):
            assert_done_once_last(events)
            if index % 2:
                assert_completed(events, "one two three four five six seven eight")
                assert after_s < drain_s, "a stream that could finish was cut short"
            else:
                assert text_of(events) == "held "
                assert assert_error_then_done(events, "relay_draining")["type"] == "server_error"
        async with asyncio.timeout(drain_s + 5):
            assert await relay.process.wait() == 0


# --- also: no retry after any byte reached the client, or after the client left ---------------


@pytest.mark.parametrize(
    ("fields", "code"),
    [
        ({"fault": "reset_mid"}, "upstream_unavailable"),
        ({"fault": "stall_mid"}, "upstream_timeout"),
        ({"fault": "in_stream_error"}, "upstream_error"),
        ({"fault": "oversized_line", "size": 200_000}, "upstream_line_too_long"),
    ],
    ids=["reset", "stall", "in-stream-error", "oversized-line"],
)
async def test_no_retry_after_any_byte_reached_the_client(
        relay_factory: RelayFactory, emulator: RunningEmulator, session: aiohttp.ClientSession,
        fields: dict[str, Any], code: str) -> None:
    """Issue 6, "No retry after any byte reached the client": whatever fails after the
    first event, the client gets the text so far, one error event, ``[DONE]``, and the
    upstream saw exactly one request (a retry would duplicate or garble the answer)."""
    relay = await relay_factory(retries=3, timeout_s=0.5, max_line_bytes=64 * 1024)
    resp, body = await post(session, relay, chat_body(stream=True, text=directive(after=1, pieces=PIECES, **fields)))
    assert resp.status == 200, body
    events = parse_sse(body)
    assert text_of(events) == "alpha "
    assert_error_then_done(events, code)
    assert len(chat_requests(emulator)) == 1


async def test_no_retry_after_the_client_went_away_during_the_retry_backoff(
        relay_factory: RelayFactory, emulator: RunningEmulator) -> None:
    """Issue 6, "No retry after the client went away": a client that leaves while the
    relay waits to retry a failing upstream (backoff 0.5–1 s here) ends the retrying;
    the emulator sees no further attempt, and the slot is free again."""
    relay = await relay_factory(retries=3, backoff_base_s=1.0, backoff_max_s=1.0)
    state = emulator.state

    async def client() -> None:
        async with aiohttp.ClientSession() as session:
            await post(session, relay, chat_body(text=directive(fault="http_503")))

    task = asyncio.get_running_loop().create_task(client())
    async with asyncio.timeout(5):
        await state.wait_until(lambda: any(record.status == 503 for record in chat_requests(emulator)))
    task.cancel()  # the client goes away: its connection is closed
    with pytest.raises(asyncio.CancelledError):
        await task
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(1.5):  # past the longest backoff (1 s)
            await state.wait_until(lambda: len(chat_requests(emulator)) >= 2)
    assert len(chat_requests(emulator)) == 1
    await wait_gate_empty(relay)


# --- also: the relay's own exceptions never leak a traceback or a token ---------------------------


CANARY = "sk-canary-7d1f0c5e9b2a4e6f8a3c"


def assert_nothing_leaks(resp: aiohttp.ClientResponse, body: str) -> None:
    for where in (body, *resp.headers.values()):
        assert "Traceback" not in where and 'File "' not in where, where[:300]
        assert CANARY not in where, where[:300]


@pytest.mark.parametrize(
    "scenario",
    [
        {"fault": "http_500"}, {"fault": "http_500_empty"}, {"fault": "html_challenge"},
        {"fault": "http_401"}, {"fault": "http_403"}, {"fault": "http_429", "retry_after": 3},
        {"fault": "stall_before"}, {"fault": "stall_headers"}, {"fault": "stall_mid"},
        {"fault": "reset_mid"}, {"fault": "in_stream_error"}, {"fault": "in_stream_error", "after": 0},
        {"fault": "oversized_line", "size": 200_000}, {"garbage": True},
        {"bogus_field": CANARY},  # the emulator's 400 names the field: upstream text, not ours
    ],
    ids=lambda scenario: "-".join(str(value) for value in scenario.values())[:30],
)
async def test_relay_errors_never_leak_a_traceback_or_the_token(
        relay_factory: RelayFactory, session: aiohttp.ClientSession, scenario: dict[str, Any]) -> None:
    """Issue 6, "The relay's own exceptions never leak a traceback or a token to the
    client": for every upstream failure, streamed or not, the response (body and
    headers) holds neither a Python traceback nor the caller's token."""
    relay = await relay_factory(timeout_s=0.5, max_line_bytes=64 * 1024)
    for stream in (False, True):
        body_in = chat_body(stream=stream, text=directive(**scenario))
        resp, body = await post(session, relay, body_in, headers=auth(CANARY))
        if "bogus_field" in scenario:
            body = body.replace(CANARY, "")  # echoed back from the message, not from the header
        assert_nothing_leaks(resp, body)
        assert resp.status != 500, body


async def test_bad_tokens_are_401_without_echoing_the_token(relay: str, session: aiohttp.ClientSession) -> None:
    """Issue 6, "… never leak … a token": malformed tokens are refused without echoing them."""
    for header in (f"Bearer {CANARY} extra", f"Bearer {CANARY}\u00e9", f"Basic {CANARY}", f"Token {CANARY}"):
        resp, body = await post(session, relay, chat_body(), headers={"Authorization": header})
        assert_nothing_leaks(resp, body)
        assert envelope(resp, body, 401)["code"] == "invalid_api_key"


async def test_oversized_authorization_header_gets_an_envelope_without_echoing_the_token(
        relay: str, session: aiohttp.ClientSession) -> None:
    """Issue 6, "… never leak … a token": an ``Authorization`` header longer than the
    HTTP parser's field limit (8190 bytes in aiohttp) is still refused with an OpenAI
    envelope, and the refusal does not quote the header back."""
    resp, body = await post(session, relay, chat_body(), headers={"Authorization": f"Bearer {CANARY * 400}"})
    assert_nothing_leaks(resp, body)
    assert resp.status in (400, 401, 431), body
    envelope(resp, body, resp.status)


async def test_upstream_that_does_not_speak_http_is_502_not_a_relay_500(
        relay_factory: RelayFactory, session: aiohttp.ClientSession) -> None:
    """Issue 6, "The relay's own exceptions never leak …" (and row 4's "502, quickly"):
    an ``--upstream`` that answers with something other than HTTP (a wrong port, an SSH
    banner) is the upstream's failure, a 502 envelope, never the relay's own 500."""
    async def banner(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1024)
        writer.write(b"SSH-2.0-OpenSSH_9.6\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(banner, "127.0.0.1", 0)
    try:
        port = server.sockets[0].getsockname()[1]
        relay = await relay_factory(upstream=f"http://127.0.0.1:{port}")
        for stream in (False, True):
            resp, body = await post(session, relay, chat_body(stream=stream), headers=auth(CANARY))
            assert_nothing_leaks(resp, body)
            error = envelope(resp, body, 502)
            assert error["code"].startswith("upstream_")
    finally:
        server.close()
        await server.wait_closed()

