"""Claude Code and Codex CLI, the real programs, through the relay (issue 18).

Each agent gets a task the emulator answers with a tool call: the directive line in
the user's prompt asks for one ``<tool_call>`` block, which the relay must turn into
a ``tool_use`` block (``/v1/messages``) or a ``function_call`` item
(``/v1/responses``). The agent runs the tool for real; the command writes a marker
file and prints the directive of the next answer. So the follow-up request, which
carries that output as a ``tool_result`` block or a ``function_call_output`` item,
ends in a final text only when the relay folded the tool's output into the prompt
the emulator saw (the last directive line wins, relay/emulator/directive.py). The
marker file shows the agent ran the tool; the final text shows the second turn went
through; the egress guard shows neither agent reached anything but the relay.

The plain-text tests come first so that a broken stream shows apart from broken tool
calls. See tests/integration/agents_support.py for the environment and switches.
"""

from __future__ import annotations

import shlex
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.conftest import TOKEN, RelayFactory, directive
from tests.integration.agents_support import (
    EgressGuard,
    codex_commands,
    codex_messages,
    egress_guard,
    run_claude,
    run_codex,
)

MODEL = "qwen3-coder-plus"
FINAL = "The marker file is written."
MARKER_TEXT = "hello-from-tool"


@pytest.fixture
async def relay(relay_factory: RelayFactory) -> str:
    return await relay_factory(dialect="qwen-v2")


@pytest.fixture
async def guard() -> AsyncIterator[EgressGuard]:
    async with egress_guard() as running:
        yield running


def task(line: str) -> str:
    """A prompt whose directive has a line of its own, however the relay folds the turn."""
    return "Do as the line below says.\n" + line


def marker_command(marker: Path) -> str:
    """Write the marker, then print the directive that makes the next answer ``FINAL``."""
    return (f"echo {MARKER_TEXT} > {shlex.quote(str(marker))} && echo wrote-marker && "
            f"printf '%s\\n' {shlex.quote(directive(reply=FINAL, sources=[]))}")


async def test_claude_code_print_mode_streams_a_text_answer(
        relay: str, tmp_path: Path, guard: EgressGuard) -> None:
    """``claude -p`` gets a streamed text answer from /v1/messages and reports it as its result."""
    reply = "Hello from the relay, in pieces."
    run = await run_claude(relay, task(directive(reply=reply, chunks=5)), home=tmp_path / "home",
                           workdir=tmp_path, api_key=TOKEN, guard=guard, model=MODEL)
    assert run.returncode == 0, run.describe()
    assert run.report is not None and run.report["is_error"] is False, run.describe()
    assert run.report["result"] == reply
    assert run.report["num_turns"] == 1
    assert run.egress == ()


async def test_claude_code_unchanged_uses_its_own_model_id_mapped_by_the_table(
        relay: str, tmp_path: Path, guard: EgressGuard) -> None:
    """No ``--model``: Claude Code asks for its ``claude-…`` default, which the default
    ``[surfaces.anthropic.models]`` table maps to a Qwen model."""
    reply = "Answered under a Claude model id."
    run = await run_claude(relay, task(directive(reply=reply)), home=tmp_path / "home",
                           workdir=tmp_path, api_key=TOKEN, guard=guard)
    assert run.returncode == 0, run.describe()
    assert run.report is not None and run.report["result"] == reply, run.describe()
    assert run.egress == ()


async def test_claude_code_runs_the_relays_tool_use_and_finishes(
        relay: str, tmp_path: Path, guard: EgressGuard) -> None:
    """A Hermes tool call becomes a Bash ``tool_use`` Claude Code runs; its ``tool_result`` gets the final text."""
    workdir = tmp_path / "work"
    workdir.mkdir()
    marker = workdir / "marker.txt"
    call = directive(tool_calls=[{"name": "Bash", "arguments": {
        "command": marker_command(marker), "description": "Write the marker file"}}], chunks=7)
    run = await run_claude(relay, task(call), home=tmp_path / "home", workdir=workdir, api_key=TOKEN,
                           guard=guard, model=MODEL, allowed_tools=("Bash",))
    assert run.returncode == 0, run.describe()
    assert marker.read_text() == MARKER_TEXT + "\n", run.describe()
    assert run.report is not None and run.report["is_error"] is False, run.describe()
    assert run.report["result"] == FINAL
    assert run.report["num_turns"] == 2
    assert run.report["permission_denials"] == []
    assert run.egress == ()


async def test_codex_exec_streams_a_text_answer(relay: str, tmp_path: Path, guard: EgressGuard) -> None:
    """``codex exec`` gets a streamed text answer from /v1/responses, ended by ``response.completed``."""
    reply = "Hello from the relay, in pieces."
    # Codex always declares web_search, which turns search on: the emulator's search results are empty here.
    run = await run_codex(relay, task(directive(reply=reply, chunks=5, sources=[])), home=tmp_path / "home",
                          workdir=tmp_path, api_key=TOKEN, guard=guard, model=MODEL)
    assert run.returncode == 0, run.describe()
    assert codex_messages(run.report) == [reply], run.describe()
    assert run.report is not None and run.report[-1]["type"] == "turn.completed", run.describe()
    assert run.egress == ()


async def test_codex_exec_runs_the_relays_function_call_and_finishes(
        relay: str, tmp_path: Path, guard: EgressGuard) -> None:
    """A Hermes tool call becomes an ``exec_command`` call Codex runs; its output gets the final text."""
    workdir = tmp_path / "work"
    workdir.mkdir()
    marker = workdir / "marker.txt"
    call = directive(tool_calls=[{"name": "exec_command", "arguments": {"cmd": marker_command(marker)}}], chunks=7,
                     sources=[])
    run = await run_codex(relay, task(call), home=tmp_path / "home", workdir=workdir, api_key=TOKEN,
                          guard=guard, model=MODEL)
    assert run.returncode == 0, run.describe()
    assert marker.read_text() == MARKER_TEXT + "\n", run.describe()
    commands = codex_commands(run.report)
    assert len(commands) == 1 and commands[0]["exit_code"] == 0, run.describe()
    assert "wrote-marker" in commands[0]["aggregated_output"]
    assert codex_messages(run.report) == [FINAL], run.describe()
    assert run.egress == ()
