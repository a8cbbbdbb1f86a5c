"""A newcomer's first ten minutes (issue 21 §4), each found on a fresh machine.

The program's ``--version`` and ``--help``; lifecycle lines under a logger that says
so, not ``relay.error``; access lines that tell the truth about ``/v1/models`` and
error answers; ``GET /v1/models/{id}`` as OpenAI answers it; and a README that
points only at what the repository holds.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import signal
import sys
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest

from relay import __version__
from relay.cli import SUBCOMMANDS
from relay.emulator import RunningEmulator
from relay.operator.config import KeySpec, OperatorConfig, Secret, hash_key
from tests.conftest import MODEL, TOKEN, RelayFactory, auth, chat_body, directive
from tests.integration.test_fault_matrix import relay_process

ROOT = Path(__file__).resolve().parents[2]
KEY = "sk-relay-newcomer-0123456789"


async def run_program(*args: str) -> tuple[int, str, str]:
    """``python -m relay ARGS`` (what the ``qwen-relay`` script runs): exit code, stdout, stderr."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "relay", *args, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    async with asyncio.timeout(60):
        out, err = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


# --- the program ---------------------------------------------------------------------------------


async def test_version_prints_the_packages_version() -> None:
    code, out, _ = await run_program("--version")
    assert (code, out) == (0, f"qwen-relay {__version__}\n")


async def test_help_lists_every_subcommand_with_one_line_each() -> None:
    """``--help`` names each subcommand with its line, and each one named answers its own ``--help``:
    the list and what runs cannot drift apart, and no subcommand is missing from it."""
    code, out, _ = await run_program("--help")
    assert code == 0
    assert {"smoke", "bench", "hash-key", "login", "doctor"} <= set(SUBCOMMANDS)
    for name, command in SUBCOMMANDS.items():
        lines = [line for line in out.splitlines() if re.match(rf"\s+{re.escape(name)}\s+\S", line)]
        assert len(lines) == 1 and lines[0].split(None, 1)[1] == command.help, (name, lines)
    for name in SUBCOMMANDS:
        code, sub_out, sub_err = await run_program(name, "--help")
        assert code == 0 and "usage:" in sub_out, (name, sub_out[-300:], sub_err[-300:])
    assert "--upstream" in out and "QWEN_RELAY_UPSTREAM" in out  # the flags are still there


async def test_lifecycle_lines_come_from_relay_lifecycle_not_relay_error() -> None:
    """Start (with the in-process emulator) and a SIGTERM drain log under ``relay.lifecycle``;
    a clean start and stop logs nothing under ``relay.error``."""
    async with relay_process("--upstream", "emulator") as relay:
        relay.process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(20):
            assert await relay.process.wait() == 0
            await relay.wait_for_log("drain_finished")
        loggers = {entry.get("event"): entry.get("logger") for entry in relay.log}
    lifecycle = ("emulator_started", "listening", "drain_started", "drain_finished")
    assert {event: loggers.get(event) for event in lifecycle} == dict.fromkeys(lifecycle, "relay.lifecycle")
    assert [entry for entry in relay.log if entry.get("logger") == "relay.error"] == []


# --- the access line ------------------------------------------------------------------------------


def access_entries(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    return [dict(record.fields) for record in caplog.records  # type: ignore[attr-defined]
            if record.name == "relay.access"]


async def access_entry(caplog: pytest.LogCaptureFixture, count: int) -> dict[str, Any]:
    """The ``count``-th access line; lines are handed over at the end of a loop iteration."""
    for _ in range(1000):
        entries = access_entries(caplog)
        if len(entries) >= count:
            return entries[count - 1]
        await asyncio.sleep(0)  # yield to the relay's handler and the log's batch, no timed wait
    raise AssertionError(f"no access line number {count}: {access_entries(caplog)}")


async def fetch(session: aiohttp.ClientSession, method: str, url: str, **kwargs: Any) -> tuple[int, bytes]:
    """Status and body exactly as sent: ``identity``, so the access line's bytes are the body's."""
    headers = {"Accept-Encoding": "identity", **kwargs.pop("headers", {})}
    async with asyncio.timeout(30), session.request(method, url, headers=headers, **kwargs) as response:
        return response.status, await response.read()


async def test_access_lines_count_the_bytes_and_upstream_attempts_of_model_lists_and_errors(
        relay_factory: RelayFactory, emulator: RunningEmulator, caplog: pytest.LogCaptureFixture) -> None:
    """``bytes_out`` is the body sent and ``upstream_attempts`` every upstream attempt made for the
    request: for ``/v1/models`` (a miss with one retry, then a hit) and for error answers (a 401 the
    relay gives, a 404, a 502 after three attempts), where both used to be 0."""
    caplog.set_level(logging.INFO, logger="relay.access")
    relay = await relay_factory(retries=3)
    emulator.state.arm({"fault": "http_503"}, path="/api/models", times=1)
    failing = chat_body(text=directive(fault="http_503", fail_times=99, key="newcomer-502"))
    expected = [  # method, path, headers, body: status, upstream attempts
        ("GET", "/v1/models", auth(), None, 200, 2),  # a miss: 503, then the list
        ("GET", "/v1/models", auth(), None, 200, 0),  # cached
        ("GET", f"/v1/models/{MODEL}", auth(), None, 200, 0),
        ("GET", "/v1/models/no-such-model", auth(), None, 404, 0),
        ("POST", "/v1/chat/completions", {}, chat_body(), 401, 0),  # no token: no upstream call
        ("GET", "/v1/nothing-here", auth(), None, 404, 0),
        ("POST", "/v1/chat/completions", auth(), failing, 502, 3),
    ]
    async with aiohttp.ClientSession() as session:
        for number, (method, path, headers, body, status, attempts) in enumerate(expected, start=1):
            got_status, got_body = await fetch(session, method, relay + path, headers=headers, json=body)
            assert got_status == status, (path, got_body[:300])
            line = await access_entry(caplog, number)
            assert (line["path"], line["status"]) == (path, status)
            assert line["bytes_out"] == len(got_body) > 0, (path, line)
            assert line["upstream_attempts"] == attempts, (path, line)


# --- GET /v1/models/{id} ----------------------------------------------------------------------------


async def test_retrieve_model_answers_the_listed_object_or_404_model_not_found(relay: str) -> None:
    """The official SDK's ``models.retrieve``: the same object as the list's entry; an unknown id is
    OpenAI's 404 ``model_not_found`` in the error envelope."""
    client = openai.AsyncOpenAI(base_url=relay + "/v1", api_key=TOKEN, max_retries=0)
    try:
        listed = {model.id: model.model_dump() for model in (await client.models.list()).data}
        assert MODEL in listed
        retrieved = await client.models.retrieve(MODEL)
        assert retrieved.model_dump() == listed[MODEL] and retrieved.object == "model"
        with pytest.raises(openai.NotFoundError) as refused:
            await client.models.retrieve("gpt-no-such-model")
    finally:
        await client.close()
    error = refused.value.body
    assert isinstance(error, dict) and error["code"] == "model_not_found" and error["param"] == "model"
    assert error["type"] == "invalid_request_error" and "gpt-no-such-model" in error["message"]


async def test_retrieve_model_hides_what_a_relay_key_may_not_use(relay_factory: RelayFactory) -> None:
    """A relay key limited to some models finds only those, as its ``/v1/models`` lists only those."""
    spec = KeySpec(name="newcomer", digest=bytes.fromhex(hash_key(KEY)[7:]), models=frozenset({MODEL}))
    relay = await relay_factory(operator=OperatorConfig(mode="pool", keys=(spec,), tokens=(Secret("pool-token-1"),)))
    async with aiohttp.ClientSession() as session:
        allowed = await fetch(session, "GET", f"{relay}/v1/models/{MODEL}", headers=auth(KEY))
        hidden = await fetch(session, "GET", f"{relay}/v1/models/qwen-plus-latest", headers=auth(KEY))
        stranger = await fetch(session, "GET", f"{relay}/v1/models/{MODEL}", headers=auth("not-a-relay-key"))
    assert allowed[0] == 200 and json.loads(allowed[1])["id"] == MODEL
    assert hidden[0] == 404 and json.loads(hidden[1])["error"]["code"] == "model_not_found"
    assert stranger[0] == 401


# --- the README -------------------------------------------------------------------------------------


def test_readme_links_and_paths_stay_inside_the_repository() -> None:
    """Every relative link of the README names a file of the repository, and no path leaves it
    (a newcomer's clone holds nothing beside it: no ``../shared``, no team harness)."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "../" not in readme
    targets = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", readme)
    local = [target for target in targets if "://" not in target and not target.startswith("mailto:")]
    assert local, "the README links none of the repository's files: the check would prove nothing"
    assert [target for target in local if not (ROOT / target).exists()] == []


def test_readme_installs_into_a_virtualenv_from_a_clone_and_tests_as_ci_does() -> None:
    """The quick start starts from ``git clone`` and a virtualenv (Debian refuses a bare ``pip
    install``), installs ``openai`` before using it, and the test command is the one .ci/run runs."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    quick_start = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    commands = quick_start.index("git clone"), quick_start.index("python3 -m venv .venv"), \
        quick_start.index(". .venv/bin/activate"), quick_start.index("pip install -e .")
    assert list(commands) == sorted(commands)
    assert quick_start.index("pip install openai") < quick_start.index("from openai import OpenAI")
    test_command = "pip install -e '.[test]' && python -m pytest"
    assert test_command in readme.split("## Run the tests", 1)[1].split("\n## ", 1)[0]
    assert test_command in (ROOT / ".ci" / "run").read_text(encoding="utf-8")
