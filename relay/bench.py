"""``qwen-relay bench``: measure this build against the bundled emulator.

Starts the emulator and the relay as two child processes on free loopback
ports, drives the relay from this process with a closed loop of concurrent
clients (bounded by ``--requests``), checks every answer, and prints requests/s,
p50/p99 latency, and the relay's CPU time and peak RSS from ``/proc``. It is
the quick check a user can run anywhere; for side-by-side figures, run another
build (or nginx) the same way on the same machine and compare ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import sys
import time
from collections.abc import Sequence

import aiohttp

__all__ = ["main"]

_REPLY = "The quick brown fox jumps over the lazy dog. " * 6


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="qwen-relay bench", description="Load-test this build offline.")
    parser.add_argument("--concurrency", type=int, default=100, help="clients in flight (default 100)")
    parser.add_argument("--requests", type=int, default=3000, help="measured requests (default 3000)")
    parser.add_argument("--stream", action="store_true", help="stream the answers (SSE)")
    parser.add_argument("--chunks", type=int, default=20, help="stream events per answer (default 20)")
    parser.add_argument("--dialect", default="qwen-v2", help="dialect the emulator is spoken to in")
    parser.add_argument("--relay-arg", action="append", default=[], help="extra flag for the relay (repeatable)")
    return parser


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _proc_stats(pid: int) -> tuple[float, int]:
    """(CPU seconds, peak RSS KiB) of a process, from /proc."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    cpu = (int(fields[11]) + int(fields[12])) / ticks
    peak = 0
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                peak = int(line.split()[1])
    return cpu, peak


async def _wait_ready(session: aiohttp.ClientSession, url: str, process: asyncio.subprocess.Process) -> None:
    async with asyncio.timeout(20):
        while process.returncode is None:
            try:
                async with session.get(url) as response:
                    if response.status < 500:
                        return
            except aiohttp.ClientConnectionError:
                await asyncio.sleep(0.05)  # the child is still starting: nothing to await on
    raise RuntimeError(f"{url}: the process exited with {process.returncode}")


async def _one(session: aiohttp.ClientSession, url: str, body: dict[str, object], stream: bool) -> float:
    started = time.perf_counter()
    async with session.post(url, json=body, headers={"Authorization": "Bearer bench"}) as response:
        if response.status != 200:
            raise RuntimeError(f"HTTP {response.status}: {(await response.text())[:200]}")
        if stream:
            text, done = [], 0
            async for line in response.content:
                if line.startswith(b"data: [DONE]"):
                    done += 1
                elif line.startswith(b"data: "):
                    choices = json.loads(line[6:]).get("choices") or [{}]
                    text.append(choices[0].get("delta", {}).get("content") or "")
            answer = "".join(text)
            if done != 1:
                raise RuntimeError("stream without exactly one [DONE]")
        else:
            answer = (await response.json())["choices"][0]["message"]["content"]
    if answer != _REPLY:
        raise RuntimeError(f"wrong answer: {answer[:80]!r}")
    return time.perf_counter() - started


async def _run(args: argparse.Namespace) -> str:
    emulator_port, relay_port = _free_port(), _free_port()
    emulator = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "relay.emulator", "--port", str(emulator_port),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
    relay = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "relay", "--port", str(relay_port), "--upstream", f"http://127.0.0.1:{emulator_port}",
        "--dialect", args.dialect, "--max-concurrency", str(max(100, 2 * args.concurrency)), "--log-level", "warning",
        *args.relay_arg, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
    base = f"http://127.0.0.1:{relay_port}"
    directive = json.dumps({"reply": _REPLY, "chunks": args.chunks})
    body = {"model": "qwen-max-latest", "stream": args.stream,
            "messages": [{"role": "user", "content": f"#emulator {directive}"}]}
    connector = aiohttp.TCPConnector(limit=args.concurrency)
    try:
        async with aiohttp.ClientSession(connector=connector) as session:
            await _wait_ready(session, f"http://127.0.0.1:{emulator_port}/api/models", emulator)
            await _wait_ready(session, base + "/healthz", relay)
            url = base + "/v1/chat/completions"
            for _ in range(min(200, args.requests)):  # warm-up: pools, caches
                await _one(session, url, body, args.stream)
            remaining = args.requests
            latencies: list[float] = []

            async def client() -> None:
                nonlocal remaining
                while remaining > 0:
                    remaining -= 1
                    latencies.append(await _one(session, url, body, args.stream))

            cpu_before, _ = _proc_stats(relay.pid)
            started = time.perf_counter()
            await asyncio.gather(*(client() for _ in range(args.concurrency)))
            elapsed = time.perf_counter() - started
            cpu_after, peak_kib = _proc_stats(relay.pid)
    finally:
        for process in (relay, emulator):
            if process.returncode is None:
                process.terminate()
                await process.wait()
    latencies.sort()
    p50 = latencies[len(latencies) // 2] * 1000
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000
    kind = f"stream ({args.chunks} events)" if args.stream else "non-stream"
    return (f"{kind}, {args.dialect}, C={args.concurrency}, {len(latencies)} requests: "
            f"{len(latencies) / elapsed:.0f} req/s, p50 {p50:.1f} ms, p99 {p99:.1f} ms, "
            f"relay CPU {(cpu_after - cpu_before) / len(latencies) * 1e6:.0f} us/request, "
            f"relay peak RSS {peak_kib / 1024:.1f} MiB (emulator and client share the machine)")


def main(argv: Sequence[str]) -> int:
    args = _parser().parse_args(list(argv))
    try:
        print(asyncio.run(_run(args)))
    except RuntimeError as exc:
        print(f"FAIL: {exc}")
        return 1
    return 0
