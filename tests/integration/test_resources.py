"""Issue 6's resource rows: a slow client gets backpressure, abandoned streams leak nothing.

Two rows of the fault matrix (``test_fault_matrix.py`` points here) are about what a
relay holds rather than what it answers, so they are measured, not just asserted on
the wire:

- a client that stops reading must make the relay stop reading the upstream (TCP
  backpressure end to end) instead of buffering the answer; seen from the emulator as
  events it could not send, and from the relay process as a peak RSS that does not
  follow the answer's size;
- a thousand clients that open a stream and vanish must leave no task, socket,
  upstream stream or concurrency slot behind, counted in this very process;
- an open stream must not keep its prompt (a coding agent's is 100 KB and more):
  counted with tracemalloc on the relay's own allocations.

Each test prints the peak RSS it measured (run with ``-s`` to see it).
"""

from __future__ import annotations

import asyncio
import gc
import json
import socket
import tracemalloc
from collections import Counter

import aiohttp
import pytest

from relay.emulator import RequestRecord, RunningEmulator
from tests.conftest import TOKEN, RelayFactory, auth, chat_body, directive, parse_sse
from tests.integration.test_fault_matrix import (
    CHAT,
    MIB,
    chat_requests,
    memory_kib,
    open_fds,
    relay_process,
    wait_gate_empty,
    wait_tasks_settled,
)
from tests.integration.test_streaming_faults import assert_completed


def request_bytes(body: object, *, close: bool) -> bytes:
    data = json.dumps(body).encode()
    head = (f"POST {CHAT} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TOKEN}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n")
    return (head + ("Connection: close\r\n" if close else "") + "\r\n").encode() + data


def dechunk(data: bytes) -> bytes:
    """The body of a ``Transfer-Encoding: chunked`` message (trailers ignored)."""
    out = bytearray()
    position = 0
    while True:
        end = data.index(b"\r\n", position)
        size = int(data[position:end].split(b";")[0], 16)
        position = end + 2
        if size == 0:
            return bytes(out)
        out += data[position:position + size]
        position += size + 2


def _send_buffer_max() -> int:
    """The most a TCP send buffer autotunes to here (``tcp_wmem`` max; Linux default 4 MiB)."""
    try:
        with open("/proc/sys/net/ipv4/tcp_wmem", encoding="ascii") as tcp_wmem:
            return int(tcp_wmem.read().split()[2])
    except (OSError, ValueError, IndexError):
        return 4 * MIB


def reset_peak_rss() -> bool:
    """Reset this process's ``VmHWM`` to its current RSS (Linux ≥ 4.0); False if not allowed."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as clear_refs:
            clear_refs.write("5")
    except OSError:
        return False
    return True


def _answer_text(size: int) -> str:
    """Deterministic text with 1- and 2-byte UTF-8 characters, so a lost, doubled or
    re-ordered byte anywhere shows up as a wrong answer.

    Latin-1 only on purpose: CPython stores such a str at one byte per character, so
    the relay's memory per line equals its size on the wire; one emoji would make
    every copy four times larger (PEP 393) and blur what the RSS bound measures.
    """
    line = "".join(chr(0x61 + i % 26) for i in range(50)) + " é ü ß © ½ 0123456789\n"
    return (line * (size // len(line) + 1))[:size]


async def wait_until_quiet(record: RequestRecord, quiet_s: float, within_s: float) -> int:
    """Wait until ``events_sent`` has not changed for ``quiet_s``; return it.

    The one poll in these tests, and why: "the emulator stopped sending" is the
    absence of an event, so only time can show it. The emulator does not signal each
    event sent (only the first), so the count is sampled every 0.1 s.
    """
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(within_s):
        seen, since = record.events_sent, loop.time()
        while loop.time() - since < quiet_s:
            await asyncio.sleep(0.1)
            if record.events_sent != seen:
                seen, since = record.events_sent, loop.time()
    return seen


# --- row 12: client reads very slowly --------------------------------------------------------


async def test_slow_client_gets_backpressure_instead_of_buffering_and_relay_rss_stays_bounded(
        emulator: RunningEmulator) -> None:
    """Issue 6, row "client reads very slowly": the relay applies backpressure (stops
    reading the upstream) instead of buffering the whole answer; RSS stays bounded.

    Why this shape: qwen-v1 is cumulative, so every upstream event repeats the whole
    answer so far, and the loopback TCP buffers between relay and client hold ~4 MB
    (the relay's send buffer autotunes up to ``tcp_wmem`` max). A first piece of 6 MB
    (``tcp_wmem`` max + 2 MiB on hosts tuned higher) cannot fit in them, so the
    relay's first write blocks while the client is paused. 23 small pieces follow,
    each an upstream line of ~6 MB (~150 MB upstream in all, for a ~6 MB answer). A
    relay that kept reading would let the emulator send all 24 events; one that
    honours backpressure lets it send only the few that fit in the relay↔emulator
    buffers. (2,000 pieces of a 2 MB answer would be 2 GB upstream.)

    The relay runs as its own process so its RSS is its own; the client is a raw
    socket with a small receive buffer that reads one segment, pauses, then reads all.
    """
    first_piece = max(6 * MIB, _send_buffer_max() + 2 * MIB)
    pieces = [_answer_text(first_piece)] + [f" | tail piece {index:02d}" for index in range(23)]
    events_total = len(pieces)
    answer = "".join(pieces)
    max_line = str(4 * first_piece)
    async with relay_process("--upstream", emulator.url, "--max-line-bytes", max_line) as relay:
        host, port = relay.url.removeprefix("http://").split(":")
        loop = asyncio.get_running_loop()
        warm = await _exchange(host, int(port), request_bytes(chat_body(text=directive(reply="warm")), close=True))
        assert warm.startswith(b"HTTP/1.1 200 "), warm[:200]
        before = relay.memory_kib()

        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)
        sock.setblocking(False)
        try:
            async with asyncio.timeout(10):
                await loop.sock_connect(sock, (host, int(port)))
                await loop.sock_sendall(sock, request_bytes(
                    chat_body(stream=True, text=directive(pieces=pieces)), close=True))
                received = [await loop.sock_recv(sock, 4096)]  # a little, then the client pauses
                await emulator.state.first_chunk_sent.wait()
            (record,) = chat_requests(emulator)[1:]
            paused_events = await wait_until_quiet(record, quiet_s=1.0, within_s=20)
            paused = relay.memory_kib()
            paused_events_later = await wait_until_quiet(record, quiet_s=0.5, within_s=5)
            paused_later = relay.memory_kib()
            assert not record.finished
            assert paused_events == paused_events_later
            assert paused_events <= 5, (
                f"the emulator sent {paused_events} of {events_total} events while the client read nothing")

            async with asyncio.timeout(60):  # the client resumes and reads everything
                while chunk := await loop.sock_recv(sock, 1 << 20):
                    received.append(chunk)
        finally:
            sock.close()
        after = relay.memory_kib()

    raw = b"".join(received)
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 "), head
    assert b"transfer-encoding: chunked" in head.lower()
    events = parse_sse(dechunk(body).decode("utf-8"))
    assert_completed(events, answer)
    assert record.events_sent == events_total
    upstream_mib = sum(len("".join(pieces[:n]).encode()) for n in range(1, events_total + 1)) / MIB
    growth_mib = (after["VmHWM"] - before["VmHWM"]) / 1024
    print(f"\n[row 12] paused after {paused_events}/{events_total} upstream events; relay RSS "
          f"{before['VmRSS'] / 1024:.1f} MiB before, {paused['VmRSS'] / 1024:.1f} → "
          f"{paused_later['VmRSS'] / 1024:.1f} MiB while paused, peak {after['VmHWM'] / 1024:.1f} MiB "
          f"(+{growth_mib:.1f} MiB) for {upstream_mib:.0f} MiB streamed upstream, {len(answer) / MIB:.1f} M chars")
    # Nothing accumulates while the client is paused ...
    assert paused_later["VmRSS"] - paused["VmRSS"] < 4 * 1024
    # ... and the peak follows the longest line, not the stream: a bounded number of
    # copies of it (the request that carried it, the line being parsed and decoded, the
    # previous cumulative text; ~13 measured), never all the lines that were streamed.
    line_mib = len(answer.encode()) / MIB
    assert growth_mib < 20 * line_mib < upstream_mib


async def _exchange(host: str, port: int, request: bytes) -> bytes:
    """One request on its own connection (``Connection: close``); the whole raw answer."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(request)
        async with asyncio.timeout(10):
            return await reader.read()
    finally:
        writer.close()


# --- row 13: 1,000 clients open and abandon streams ----------------------------------------------

STALLED = directive(fault="stall_mid", after=1, pieces=["held ", "never sent"])
STAGES = ("mid-request-body", "before-the-answer", "after-the-headers", "after-the-first-event")


@pytest.mark.parametrize("clients", [1000])
async def test_thousand_abandoned_streams_leak_no_tasks_sockets_or_slots(
        relay_factory: RelayFactory, emulator: RunningEmulator, clients: int) -> None:
    """Issue 6, row "1,000 clients open and abandon streams": no leaked tasks, sockets
    or semaphore slots afterwards, counted here: asyncio tasks of this loop, the
    relay's ``qwen_relay_in_flight``, the emulator's open streams and this process's
    open file descriptors, before and after.

    Relay and emulator run in this process, so every task and socket either of them
    leaks is visible. Clients leave at four points: halfway through the request body,
    right after the request (before any answer), after the response headers, and after
    the first event (the upstream then stays silent until the relay hangs up); half of
    them close politely (FIN), half reset (RST). At most 100 at a time.
    """
    relay = await relay_factory(max_concurrency=200)
    host, port = relay.removeprefix("http://").split(":")
    warm = await _exchange(host, int(port), request_bytes(chat_body(text=directive(reply="warm")), close=True))
    assert warm.startswith(b"HTTP/1.1 200 "), warm[:200]
    gc.collect()  # start from a clean heap, so the peak below belongs to this test
    has_peak = reset_peak_rss()
    before_kib = memory_kib()
    baseline_tasks = asyncio.all_tasks()
    baseline_fds = open_fds()
    request = request_bytes(chat_body(stream=True, text=STALLED), close=False)
    gate = asyncio.Semaphore(100)
    left_at: Counter[str] = Counter()

    async def abandon(index: int) -> None:
        stage = index % 4
        async with gate:
            reader, writer = await asyncio.open_connection(host, int(port))
            try:
                writer.write(request[:len(request) - 20] if stage == 0 else request)
                await writer.drain()
                if stage >= 2:
                    head = await reader.readuntil(b"\r\n\r\n")
                    assert head.startswith(b"HTTP/1.1 200 "), head
                if stage == 3:
                    await reader.readuntil(b'"content":"held ')
                left_at[STAGES[stage]] += 1
            finally:
                if index % 2:
                    writer.transport.abort()
                else:
                    writer.close()
                    try:
                        await writer.wait_closed()
                    except ConnectionError:
                        pass

    loop = asyncio.get_running_loop()
    started = loop.time()
    async with asyncio.timeout(60):
        await asyncio.gather(*(abandon(index) for index in range(clients)))
    opened_s = loop.time() - started
    async with asyncio.timeout(5):
        await emulator.state.wait_for_idle()
    await wait_gate_empty(relay, within_s=5)
    await wait_tasks_settled(baseline_tasks, within_s=5)
    async with asyncio.timeout(5):
        while open_fds() > baseline_fds + 2:  # sockets close in callbacks right after their tasks end
            await asyncio.sleep(0)
    state = emulator.state
    after_kib = memory_kib()
    peak_note = "peak since reset" if has_peak else "peak since start (clear_refs not allowed)"
    print(f"\n[row 13] {clients} streams abandoned in {opened_s:.1f} s ({dict(left_at)}); "
          f"tasks {len(baseline_tasks)} → {len(asyncio.all_tasks())}, fds {baseline_fds} → {open_fds()}; "
          f"upstream streams started {state.streams_started}, aborted {state.streams_aborted}, open "
          f"{state.open_streams}; test-process RSS {before_kib['VmRSS'] / 1024:.1f} → "
          f"{after_kib['VmRSS'] / 1024:.1f} MiB, {peak_note} {after_kib['VmHWM'] / 1024:.1f} MiB")
    assert sum(left_at.values()) == clients
    assert state.open_streams == 0
    assert state.streams_completed == 0
    assert state.streams_aborted == state.streams_started >= clients // 2
    assert all(record.finished for record in chat_requests(emulator))



async def test_an_open_stream_keeps_no_copy_of_its_prompt(relay_factory: RelayFactory) -> None:
    """A coding agent's long prompt (here 4 MiB) is not held for the life of its stream.

    Counted with tracemalloc in this process: large blocks allocated under the
    relay's own handlers (``relay/handlers``) and still alive while the stream is
    held open. The in-process emulator keeps its own copy as it streams; its
    blocks have no frame in ``relay/handlers`` and are not counted.
    """
    relay = await relay_factory()
    held = directive(fault="stall_mid", after=1, pieces=["held ", "open"])
    prompt = "x" * (4 * MIB) + "\n" + held
    tracemalloc.start(30)
    try:
        async with aiohttp.ClientSession() as session, asyncio.timeout(30), \
                session.post(relay + CHAT, json=chat_body(stream=True, text=prompt), headers=auth()) as resp:
            assert resp.status == 200, await resp.text()
            async for line in resp.content:  # the first event: the stream is committed
                if line.startswith(b"data:"):
                    break
            gc.collect()
            snapshot = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    ours = snapshot.filter_traces([tracemalloc.Filter(True, "*/relay/handlers/*", all_frames=True)])
    large = [stat for stat in ours.statistics("traceback") if stat.size >= MIB]
    assert not large, "\n".join(f"{stat.size} bytes held, allocated at:\n" + "\n".join(stat.traceback.format())
                                 for stat in large)
