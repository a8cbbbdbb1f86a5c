"""deploy/qwen-relay.service is a valid, hardened unit that starts the relay as configured.

systemd itself checks the file: ``systemd-analyze verify`` for syntax and references,
``systemd-analyze security --offline=yes`` for the sandbox (issue 7). Both run on a
copy whose ``ExecStart`` points at the ``qwen-relay`` script installed with this Python,
because verify rejects a unit whose program does not exist; the shipped file keeps
the real path, ``/usr/local/bin/qwen-relay``. CI installs systemd's tools, so a missing
``systemd-analyze`` fails here rather than skipping.
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import json
import re
import shlex
import shutil
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from relay.cli import parse_config
from relay.config import Config
from tests.conftest import MODEL, auth, directive, parse_sse, stop_process

UNIT = Path(__file__).resolve().parents[2] / "deploy" / "qwen-relay.service"
SHIPPED_EXEC = "/usr/local/bin/qwen-relay"
#: ``systemd-analyze security`` rates 0 (locked down) to 10 (exposed); the unit is at
#: 1.1 today (network access is most of what is left). A loosened sandbox fails here.
MAX_EXPOSURE = 1.5

Directives = list[tuple[str, str, str]]


def _systemd_analyze() -> str:
    found = shutil.which("systemd-analyze")
    if found is None:
        pytest.fail("systemd-analyze is not installed: apt-get install -y systemd (.ci/run does this)")
    return found


def _installed_script() -> str:
    """The console script installed with this interpreter, else the one on PATH."""
    beside = Path(sys.executable).parent / "qwen-relay"
    found = str(beside) if beside.is_file() else shutil.which("qwen-relay")
    if found is None:
        pytest.fail("the qwen-relay console script is not installed: pip install -e .")
    return str(Path(found).resolve())


def parse_unit(text: str) -> Directives:
    """(section, key, value) in file order; keys repeat, so no dict and no configparser."""
    directives: Directives = []
    section = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        key, sep, value = line.partition("=")
        assert sep, f"not a key=value line: {raw!r}"
        directives.append((section, key.strip(), value.strip()))
    return directives


def values(directives: Directives, key: str, section: str = "Service") -> list[str]:
    return [v for s, k, v in directives if s == section and k == key]


def last(directives: Directives, key: str, section: str = "Service") -> str:
    found = values(directives, key, section)
    assert found, f"{key}= missing from [{section}]"
    return found[-1]


def seconds(span: str) -> float:
    """A systemd time span such as ``45s``, ``1min 30s`` or ``45``, in seconds."""
    units = {"ms": 0.001, "s": 1.0, "sec": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "": 1.0}
    total = 0.0
    for number, unit in re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", span):
        total += float(number) * units[unit]
    return total


@pytest.fixture(scope="module")
def shipped() -> Directives:
    return parse_unit(UNIT.read_text())


@pytest.fixture(scope="module")
def runnable_unit(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shipped unit with ExecStart rewritten to the installed script; same file name."""
    text = UNIT.read_text()
    rewritten, count = re.subn(rf"^ExecStart={re.escape(SHIPPED_EXEC)}\b",
                               f"ExecStart={_installed_script()}", text, flags=re.MULTILINE)
    assert count == 1, "expected exactly one active ExecStart=/usr/local/bin/qwen-relay line"
    path = tmp_path_factory.mktemp("unit") / UNIT.name
    path.write_text(rewritten)
    return path


def _verify(path: Path) -> tuple[int, list[str]]:
    done = subprocess.run([_systemd_analyze(), "verify", str(path)],
                          check=False, capture_output=True, text=True, timeout=60)
    lines = (done.stdout + done.stderr).splitlines()
    # The host's other units may draw warnings of their own; only ours count.
    return done.returncode, [line for line in lines if path.name in line]


def test_unit_passes_systemd_analyze_verify(runnable_unit: Path) -> None:
    returncode, complaints = _verify(runnable_unit)
    assert complaints == []
    assert returncode == 0


def test_verify_catches_a_misspelt_directive(runnable_unit: Path, tmp_path: Path) -> None:
    """The verify check above can fail: systemd only warns (exit 0) on an unknown key."""
    broken = tmp_path / runnable_unit.name
    broken.write_text(runnable_unit.read_text().replace("ProtectSystem=strict", "ProtectSytem=strict"))
    _, complaints = _verify(broken)
    assert any("ProtectSytem" in line for line in complaints)


def test_security_exposure_is_low(runnable_unit: Path) -> None:
    done = subprocess.run([_systemd_analyze(), "security", "--offline=yes", str(runnable_unit)],
                          check=False, capture_output=True, text=True, timeout=60)
    match = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)", done.stdout)
    assert match, f"no exposure line in:\n{done.stdout}\n{done.stderr}"
    exposure = float(match.group(1))
    print(f"systemd-analyze security: overall exposure {exposure}")
    assert exposure <= MAX_EXPOSURE, done.stdout


def test_unit_runs_as_a_notify_service_restarted_on_failure(shipped: Directives) -> None:
    assert last(shipped, "Type") == "notify"
    assert last(shipped, "NotifyAccess") == "main"
    assert last(shipped, "Restart") == "on-failure"
    assert seconds(last(shipped, "RestartSec")) > 0
    assert last(shipped, "EnvironmentFile") == "-/etc/qwen-relay/env"
    assert last(shipped, "KillSignal") == "SIGTERM"
    assert last(shipped, "RuntimeDirectory") == "qwen-relay"
    assert values(shipped, "WantedBy", "Install") == ["multi-user.target"]


def test_stop_timeout_outlasts_the_drain(shipped: Directives) -> None:
    """systemd must not SIGKILL a relay that is still inside its drain timeout."""
    drain_s = Config().drain_timeout_s
    assert seconds(last(shipped, "TimeoutStopSec")) >= drain_s + 10


def test_file_limit_covers_the_advertised_concurrency(shipped: Directives) -> None:
    """Each stream holds a client and an upstream socket; nginx keeps idle ones open too."""
    limit = int(last(shipped, "LimitNOFILE"))
    assert limit >= 10_000
    assert limit >= 4 * Config().limits.max_concurrency


def test_unit_is_hardened(shipped: Directives) -> None:
    expected = {
        "DynamicUser": "yes", "NoNewPrivileges": "yes", "ProtectSystem": "strict",
        "ProtectHome": "yes", "PrivateTmp": "yes", "PrivateDevices": "yes",
        "ProtectKernelTunables": "yes", "ProtectKernelModules": "yes", "ProtectKernelLogs": "yes",
        "ProtectControlGroups": "yes", "ProtectClock": "yes", "ProtectHostname": "yes",
        "ProtectProc": "invisible", "ProcSubset": "pid", "RestrictNamespaces": "yes",
        "RestrictRealtime": "yes", "RestrictSUIDSGID": "yes", "LockPersonality": "yes",
        "MemoryDenyWriteExecute": "yes", "SystemCallArchitectures": "native", "UMask": "0077",
        "RemoveIPC": "yes", "DevicePolicy": "closed", "CapabilityBoundingSet": "",
        "AmbientCapabilities": "",
    }
    assert {key: last(shipped, key) for key in expected} == expected
    assert sorted(last(shipped, "RestrictAddressFamilies").split()) == ["AF_INET", "AF_INET6", "AF_UNIX"]
    filters = values(shipped, "SystemCallFilter")
    assert filters[0] == "@system-service"
    assert "~@privileged @resources" in filters


def test_exec_start_flags_are_ones_the_relay_accepts(shipped: Directives) -> None:
    """Both ExecStart variants parse with the relay's own CLI: a renamed flag fails here."""
    argv = shlex.split(last(shipped, "ExecStart"))
    assert argv[0] == SHIPPED_EXEC
    config = parse_config(argv[1:], environ={})
    assert (config.host, config.port, config.unix) == ("127.0.0.1", 8080, None)

    commented = re.findall(r"^#ExecStart=(.*)$", UNIT.read_text(), flags=re.MULTILINE)
    assert len(commented) == 2, "expected the --unix and the --workers ExecStart variants"
    unix, workers = (parse_config(shlex.split(line)[1:], environ={}) for line in commented)
    assert all(shlex.split(line)[0] == SHIPPED_EXEC for line in commented)
    # The socket lives in the unit's RuntimeDirectory, which nginx can reach.
    assert unix.unix == f"/run/{last(shipped, 'RuntimeDirectory')}/relay.sock"
    assert workers.workers >= 1 and (workers.host, workers.port) == ("127.0.0.1", 8080)


def test_stop_signals_only_the_main_process_so_workers_drain_once(shipped: Directives) -> None:
    """--workers: the supervisor forwards SIGTERM; KillMode=mixed keeps systemd from sending a second."""
    assert last(shipped, "KillMode") == "mixed"
    assert last(shipped, "KillSignal") == "SIGTERM"


# MemoryDenyWriteExecute=yes kills a program that maps memory writable and executable
# (a JIT, some libffi builds). Linux >= 6.3 applies the same rule to one process with
# prctl(PR_SET_MDWE), kept across execve, so the real relay is run under it here.
_PR_SET_MDWE = 65
_PR_MDWE_REFUSE_EXEC_GAIN = 1
_WITH_MDWE = f"""
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
if libc.prctl({_PR_SET_MDWE}, {_PR_MDWE_REFUSE_EXEC_GAIN}, 0, 0, 0) != 0:
    sys.exit(100 + ctypes.get_errno())
os.execv(sys.argv[1], sys.argv[1:])
"""


def _kernel_has_mdwe() -> bool:
    libc = ctypes.CDLL(None, use_errno=True)
    get_mdwe = 66  # PR_GET_MDWE: harmless query, EINVAL before Linux 6.3
    return libc.prctl(get_mdwe, 0, 0, 0, 0) >= 0 or ctypes.get_errno() != errno.EINVAL


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
async def relay_without_wx_memory() -> AsyncIterator[str]:
    if not _kernel_has_mdwe():
        pytest.skip("this kernel has no PR_SET_MDWE (Linux < 6.3)")
    port = _free_port()
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _WITH_MDWE, sys.executable, "-m", "relay", "--upstream", "emulator",
        "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as session, asyncio.timeout(20):
            while process.returncode is None:
                try:
                    async with session.get(url + "/healthz") as response:
                        if response.status == 200:
                            break
                except aiohttp.ClientConnectionError:
                    await asyncio.sleep(0.05)  # polling a port that is not open yet: no event to await
        if process.returncode is not None:
            assert process.stderr is not None
            pytest.fail(f"relay under MDWE exited {process.returncode}: {(await process.stderr.read())!r}")
        yield url
    finally:
        await stop_process(process)


async def test_relay_serves_under_memory_deny_write_execute(relay_without_wx_memory: str) -> None:
    """The unit's MemoryDenyWriteExecute=yes leaves the relay (CPython, brotli) working."""
    body = {"model": MODEL, "stream": True,
            "messages": [{"role": "user", "content": directive(reply="no jit here", chunks=2)}]}
    async with aiohttp.ClientSession() as session:
        async with session.post(relay_without_wx_memory + "/v1/chat/completions", json=body,
                                headers=auth()) as response:
            assert response.status == 200
            events = parse_sse(await response.text())
        # br compression runs in the brotli C extension: exercise it too.
        async with session.get(relay_without_wx_memory + "/v1/models", headers={
                **auth(), "Accept-Encoding": "br"}) as response:
            assert response.status == 200
            assert response.headers.get("Content-Encoding") == "br"
            assert MODEL in [m["id"] for m in (await response.json())["data"]]
    assert events[-1] == "[DONE]"
    text = "".join(json.loads(e)["choices"][0]["delta"].get("content") or "" for e in events[:-1])
    assert text == "no jit here"
