"""deploy/nginx/two-hosts.example.conf, run by the real nginx in front of two relays (issue 10).

The two "hosts" are two relay processes on loopback ports; the example's server
lines, listen lines and certificate paths are rewritten, nothing else. Proves the
file is valid nginx, spreads requests over both relays, and sends a POST to the
other relay while one drains or is gone.

The relays are other processes, and what is waited for shows in their log files
(the access line written after a response, ``drain_started``): the test polls those
files with a deadline, never sleeps a guessed time (issue 21).
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
import ssl
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.conftest import MODEL, auth, directive
from tests.deploy.test_nginx import _free_port, _start_nginx, _stop, _wait_for, certificate, write_nginx_conf
from tests.integration.accounts_support import poll

__all__ = ["certificate"]  # the module-scoped fixture, shared with test_nginx

EXAMPLE = Path(__file__).resolve().parents[2] / "deploy" / "nginx" / "two-hosts.example.conf"


def _substitute(text: str, pattern: str, replacement: str, count: int = 1) -> str:
    result, found = re.subn(pattern, replacement, text, flags=re.MULTILINE)
    assert found == count, f"{EXAMPLE.name}: expected {count} match(es) of {pattern!r}, got {found}"
    return result


def render(relay_ports: tuple[int, int], http_port: int, tls_port: int, cert: Path, key: Path) -> str:
    text = EXAMPLE.read_text()
    text = _substitute(text, r"^(\s*)server 10\.0\.0\.11:8080 (.*);", rf"\g<1>server 127.0.0.1:{relay_ports[0]} \g<2>;")
    text = _substitute(text, r"^(\s*)server 10\.0\.0\.12:8080 (.*);", rf"\g<1>server 127.0.0.1:{relay_ports[1]} \g<2>;")
    text = _substitute(text, r"^(\s*)listen 80;", rf"\g<1>listen 127.0.0.1:{http_port};")
    text = _substitute(text, r"^(\s*)listen 443 (.*);", rf"\g<1>listen 127.0.0.1:{tls_port} \g<2>;")
    text = _substitute(text, r"^\s*listen \[::\]:.*\n", "", count=2)
    text = _substitute(text, r"^(\s*)ssl_certificate\s+/etc/ssl/\S+;", rf"\g<1>ssl_certificate {cert};")
    return _substitute(text, r"^(\s*)ssl_certificate_key\s+/etc/ssl/\S+;", rf"\g<1>ssl_certificate_key {key};")


@dataclass(frozen=True)
class Fleet:
    https: str
    cert: Path
    relays: tuple[subprocess.Popen[bytes], subprocess.Popen[bytes]]
    logs: tuple[Path, Path]


@pytest.fixture
def fleet(tmp_path: Path, certificate: tuple[Path, Path]) -> Iterator[Fleet]:
    cert, key = certificate
    ports = (_free_port(), _free_port())
    logs = (tmp_path / "relay-a.log", tmp_path / "relay-b.log")
    relays = []
    for port, log in zip(ports, logs, strict=True):
        with log.open("wb") as stderr:
            relays.append(subprocess.Popen(
                [sys.executable, "-m", "relay", "--upstream", "emulator", "--host", "127.0.0.1",
                 "--port", str(port), "--drain-timeout", "5"], stdout=subprocess.DEVNULL, stderr=stderr))
    nginx: subprocess.Popen[bytes] | None = None
    http_port, tls_port = _free_port(), _free_port()
    try:
        for relay, log, port in zip(relays, logs, ports, strict=True):
            _wait_for(relay, log, "/healthz", 200, port=port)
        nginx = _start_nginx(tmp_path, write_nginx_conf(tmp_path, render(ports, http_port, tls_port, cert, key)))
        _wait_for(nginx, tmp_path / "nginx.log", "/healthz", 301, port=http_port)
        yield Fleet(f"https://127.0.0.1:{tls_port}", cert, (relays[0], relays[1]), logs)
    finally:
        if nginx is not None:
            _stop(nginx, group=True)
        for relay in relays:
            _stop(relay)


def entries(log: Path) -> list[dict[str, Any]]:
    """The log's complete JSON lines (the relay may be writing the last one right now)."""
    lines = log.read_text().splitlines(keepends=True)
    return [json.loads(line) for line in lines if line.startswith("{") and line.endswith("\n")]


def served(log: Path) -> int:
    return sum(1 for entry in entries(log) if entry.get("logger") == "relay.access" and entry.get("status") == 200
               and entry.get("path") == "/v1/chat/completions")


def logged(log: Path, event: str) -> bool:
    return any(entry.get("event") == event for entry in entries(log))


async def _post_all(fleet: Fleet, count: int) -> list[int]:
    tls = ssl.create_default_context(cafile=str(fleet.cert))
    body = {"model": MODEL, "messages": [{"role": "user", "content": directive(reply="fleet", delay_ms=30)}]}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=tls)) as session:
        async def one() -> int:
            async with session.post(fleet.https + "/v1/chat/completions", json=body, headers=auth()) as response:
                await response.read()
                return response.status

        return list(await asyncio.gather(*(one() for _ in range(count))))


async def test_example_spreads_requests_over_both_relays_and_fails_over(fleet: Fleet) -> None:
    assert await _post_all(fleet, 20) == [200] * 20
    # The relays write an access line just after its response: wait for all twenty.
    await poll(lambda: sum(served(log) for log in fleet.logs) >= 20, "the access lines of the 20 requests")
    first = [served(log) for log in fleet.logs]
    assert sum(first) == 20 and min(first) > 0, first
    fleet.relays[0].send_signal(signal.SIGTERM)  # drains, then exits: nginx moves to relay b
    await poll(lambda: logged(fleet.logs[0], "drain_started"), "relay a to start draining")
    assert await _post_all(fleet, 10) == [200] * 10
    await poll(lambda: served(fleet.logs[1]) - first[1] >= 10, "relay b's access lines of the 10 requests")
    assert served(fleet.logs[1]) - first[1] == 10
    assert served(fleet.logs[0]) == first[0]  # the draining relay answered none of them
