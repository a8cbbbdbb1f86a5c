"""Run the real coding agents, Claude Code and Codex CLI, against a base URL, offline.

Issue 18 is done when the two agents people point at a relay work through it, so the
tests drive the real programs that ``tests/agents/install.sh`` puts (pinned, from
the npm registry) under ``tests/agents/installed/``; ``.ci/run`` calls it. A missing
install is a failure naming that script, never a skip.

Each run is sealed off from the machine and the network:

- Its environment is built from scratch, never inherited, so a developer's real API
  keys, proxies or agent config cannot leak in: a private ``HOME`` (and
  ``CLAUDE_CONFIG_DIR`` / ``CODEX_HOME`` under it), ``PATH`` (Codex's launcher is a
  Node script), the base URL and key, and the switches below.
- Every proxy variable points at an :class:`EgressGuard`, a loopback proxy that
  refuses and records each request, with ``NO_PROXY`` for loopback only: whatever an
  agent tries to reach besides the relay shows up in ``AgentRun.egress`` instead of
  leaving the machine. Both agents honour the variables (measured with strace: with
  them set, the only TCP connections were to the base URL and to the proxy).
- The agent runs under asyncio's subprocess API, because the relay under test
  usually serves from the test's own event loop (a blocking ``subprocess.run``
  would deadlock it), in a session of its own, bounded by ``timeout_s``, after
  which its whole process group is killed.

The switches, measured on Claude Code 2.1.197 and Codex CLI 0.171.0:

- Claude Code: without ``CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC=1`` it opens six
  connections to api.anthropic.com (telemetry, feature flags) beside the base URL;
  ``DISABLE_TELEMETRY``, ``DISABLE_AUTOUPDATER`` and ``DISABLE_ERROR_REPORTING`` are
  set too, as belt and braces. ``CLAUDE_CODE_DISABLE_NONSTREAMING_FALLBACK=1``
  matters for the tests: without it a broken stream (no ``content_block_start``,
  ``data:`` lines without ``event:``, an ``error`` event) is silently retried as a
  non-stream request, and the stream bug passes unseen. ``CLAUDE_CODE_MAX_RETRIES=0``
  makes an error status fail at once instead of after ten backed-off retries.
  ``--dangerously-skip-permissions`` / ``--permission-mode bypassPermissions`` are
  refused when running as root (CI is root), so tools are allowed by name with
  ``--allowedTools``.
- Codex CLI: without ``[features] plugins = false`` it calls github.com,
  api.github.com and chatgpt.com, without ``[analytics] enabled = false``
  ab.chatgpt.com. ``request_max_retries = 0`` and ``stream_max_retries = 0`` make a
  stream that ends without ``response.completed`` (or with ``response.failed``) fail
  in one request instead of six. ``--strict-config`` turns a misspelt key into an
  error. ``--dangerously-bypass-approvals-and-sandbox`` runs the tool without its
  bubblewrap sandbox, which needs user namespaces the machine may not give.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

__all__ = [
    "AGENTS_DIR",
    "AGENT_TIMEOUT_S",
    "CLAUDE_BIN",
    "CODEX_BIN",
    "CODEX_KEY_ENV",
    "AgentRun",
    "EgressGuard",
    "claude_env",
    "codex_commands",
    "codex_config",
    "codex_env",
    "codex_messages",
    "egress_guard",
    "require_agent",
    "run_claude",
    "run_codex",
]

AGENTS_DIR = Path(__file__).resolve().parents[1] / "agents" / "installed"
CLAUDE_BIN = AGENTS_DIR / "node_modules" / ".bin" / "claude"
CODEX_BIN = AGENTS_DIR / "node_modules" / ".bin" / "codex"
#: a run that takes 1-3 s on a quiet machine; generous for a loaded CI one, under pytest-timeout's 300 s.
AGENT_TIMEOUT_S = 120.0
#: the variable that Codex's ``env_key`` names: it sends its value as ``Authorization: Bearer``.
CODEX_KEY_ENV = "QWEN_RELAY_API_KEY"
_PROXY_VARS = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy")
_LOOPBACK = "127.0.0.1,localhost,::1"
# How long the guard waits for a request line; a client that says nothing is noted as such.
_GUARD_READ_S = 5.0
# How much of an agent's output an assertion message quotes.
_TAIL_CHARS = 3000


@dataclass(frozen=True)
class AgentRun:
    """What one agent run left: exit status, output, its parsed report, refused egress.

    ``report`` is Claude Code's ``--output-format json`` object, or the list of Codex's
    ``--json`` events (one JSON object a line); None when stdout was not that.
    """

    agent: str
    returncode: int
    stdout: str
    stderr: str
    report: Any
    egress: tuple[str, ...]

    def describe(self) -> str:
        """The run in a few lines, for an assertion message."""
        return (f"{self.agent} exited {self.returncode}; egress attempts: {list(self.egress)}\n"
                f"--- stdout (tail)\n{self.stdout[-_TAIL_CHARS:]}\n--- stderr (tail)\n{self.stderr[-_TAIL_CHARS:]}")


class EgressGuard:
    """A loopback HTTP proxy that refuses every request and keeps its first line.

    A ``CONNECT host:443`` line names the host an agent tried to reach; an empty
    list after a run means it reached nothing but the loopback addresses in
    ``NO_PROXY``.
    """

    def __init__(self) -> None:
        self.attempts: list[str] = []
        self._server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("the egress guard is not listening")
        port = self._server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._refuse, "127.0.0.1", 0)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _refuse(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            try:
                async with asyncio.timeout(_GUARD_READ_S):
                    line = await reader.readline()
            except TimeoutError:
                line = b"(no request line)"
            self.attempts.append(line.decode("latin-1").strip())
            writer.write(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            with contextlib.suppress(ConnectionError):
                await writer.drain()
        finally:
            writer.close()


@contextlib.asynccontextmanager
async def egress_guard() -> AsyncIterator[EgressGuard]:
    """A listening :class:`EgressGuard`, closed on the way out."""
    guard = EgressGuard()
    await guard.start()
    try:
        yield guard
    finally:
        await guard.close()


def require_agent(binary: Path) -> None:
    """Fail (not skip) when an agent is not installed: CI installs both."""
    if not binary.exists():
        pytest.fail(f"{binary} is missing: run tests/agents/install.sh (needs Node.js and npm)")


def _base_env(home: Path, proxy_url: str) -> dict[str, str]:
    env = {"HOME": str(home), "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
           "LANG": "C.UTF-8", "TERM": "dumb", "NO_PROXY": _LOOPBACK, "no_proxy": _LOOPBACK}
    env.update(dict.fromkeys(_PROXY_VARS, proxy_url))
    return env


def claude_env(base_url: str, api_key: str, *, home: Path, proxy_url: str) -> dict[str, str]:
    """Claude Code's whole environment: the relay, a private config dir, no other traffic."""
    env = _base_env(home, proxy_url)
    env.update({
        "CLAUDE_CONFIG_DIR": str(home / ".claude"),
        "ANTHROPIC_BASE_URL": base_url,
        "ANTHROPIC_API_KEY": api_key,  # sent as x-api-key
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        "DISABLE_TELEMETRY": "1",
        "DISABLE_AUTOUPDATER": "1",
        "DISABLE_ERROR_REPORTING": "1",
        "CLAUDE_CODE_DISABLE_NONSTREAMING_FALLBACK": "1",
        "CLAUDE_CODE_MAX_RETRIES": "0",
    })
    return env


def codex_config(base_url: str, model: str) -> str:
    """``config.toml`` for a model provider at ``base_url`` that reaches nothing else."""
    def quoted(value: str) -> str:
        return json.dumps(value)  # a JSON string of ASCII is a TOML basic string

    return "\n".join([
        f"model = {quoted(model)}",
        'model_provider = "qwen-relay"',
        'approval_policy = "never"',
        'sandbox_mode = "danger-full-access"',
        "check_for_update_on_startup = false",
        "",
        "[model_providers.qwen-relay]",
        'name = "qwen-relay"',
        f"base_url = {quoted(base_url.rstrip('/') + '/v1')}",
        f"env_key = {quoted(CODEX_KEY_ENV)}",
        'wire_api = "responses"',
        "request_max_retries = 0",
        "stream_max_retries = 0",
        "stream_idle_timeout_ms = 60000",
        "",
        "[features]",
        "plugins = false",
        "",
        "[analytics]",
        "enabled = false",
        "",
        "[otel]",
        'exporter = "none"',
        "",
        "[history]",
        'persistence = "none"',
        "",
    ])


def codex_env(api_key: str, *, home: Path, proxy_url: str) -> dict[str, str]:
    """Codex's whole environment: a private ``CODEX_HOME`` and the key its provider names."""
    env = _base_env(home, proxy_url)
    env.update({"CODEX_HOME": str(home / ".codex"), CODEX_KEY_ENV: api_key})
    return env


async def _run(agent: str, argv: Sequence[str], *, env: Mapping[str, str], cwd: Path,
               timeout_s: float, guard_attempts: Sequence[str]) -> tuple[int, str, str, tuple[str, ...]]:
    """Run to the end or to ``timeout_s``; kill the process group either way (tools may linger)."""
    before = len(guard_attempts)
    process = await asyncio.create_subprocess_exec(
        *argv, cwd=cwd, env=dict(env), stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, start_new_session=True)
    try:
        async with asyncio.timeout(timeout_s):
            out, err = await process.communicate()
    except TimeoutError:
        _kill_group(process.pid)
        out, err = await process.communicate()  # ends: the group was killed
        raise AssertionError(f"{agent} did not finish within {timeout_s} s\n--- stdout (tail)\n"
                             f"{out.decode(errors='replace')[-_TAIL_CHARS:]}\n--- stderr (tail)\n"
                             f"{err.decode(errors='replace')[-_TAIL_CHARS:]}") from None
    finally:
        _kill_group(process.pid)
    assert process.returncode is not None
    return (process.returncode, out.decode(errors="replace"), err.decode(errors="replace"),
            tuple(guard_attempts[before:]))


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


async def run_claude(base_url: str, prompt: str, *, home: Path, workdir: Path, api_key: str,
                     guard: EgressGuard, model: str | None = None,
                     allowed_tools: Sequence[str] = ("Bash",), extra_args: Sequence[str] = (),
                     timeout_s: float = AGENT_TIMEOUT_S) -> AgentRun:
    """``claude -p PROMPT --output-format json`` in ``workdir``, with ``allowed_tools`` allowed.

    ``model`` None leaves Claude Code's default (a ``claude-*`` id the relay must map).
    """
    require_agent(CLAUDE_BIN)
    home.mkdir(parents=True, exist_ok=True)
    argv = [str(CLAUDE_BIN), "-p", prompt, "--output-format", "json"]
    if allowed_tools:
        argv += ["--allowedTools", ",".join(allowed_tools)]
    if model is not None:
        argv += ["--model", model]
    argv += list(extra_args)
    env = claude_env(base_url, api_key, home=home, proxy_url=guard.url)
    returncode, out, err, egress = await _run("claude", argv, env=env, cwd=workdir, timeout_s=timeout_s,
                                              guard_attempts=guard.attempts)
    report: Any = None
    with contextlib.suppress(json.JSONDecodeError):
        report = json.loads(out) if out.strip() else None
    return AgentRun("claude", returncode, out, err, report, egress)


async def run_codex(base_url: str, prompt: str, *, home: Path, workdir: Path, api_key: str,
                    guard: EgressGuard, model: str, extra_args: Sequence[str] = (),
                    timeout_s: float = AGENT_TIMEOUT_S) -> AgentRun:
    """``codex exec --json PROMPT`` in ``workdir``, with a provider at ``base_url`` + ``/v1``."""
    require_agent(CODEX_BIN)
    codex_home = home / ".codex"
    codex_home.mkdir(parents=True, exist_ok=True)
    (codex_home / "config.toml").write_text(codex_config(base_url, model))
    argv = [str(CODEX_BIN), "exec", "--json", "--strict-config", "--skip-git-repo-check",
            "--dangerously-bypass-approvals-and-sandbox", "--cd", str(workdir), *extra_args, prompt]
    env = codex_env(api_key, home=home, proxy_url=guard.url)
    returncode, out, err, egress = await _run("codex", argv, env=env, cwd=workdir, timeout_s=timeout_s,
                                              guard_attempts=guard.attempts)
    events: list[dict[str, Any]] = []
    for line in out.splitlines():
        with contextlib.suppress(json.JSONDecodeError):
            event = json.loads(line)
            if isinstance(event, dict):
                events.append(event)
    return AgentRun("codex", returncode, out, err, events or None, egress)


def _completed_items(events: Sequence[Mapping[str, Any]] | None, kind: str) -> list[dict[str, Any]]:
    return [event["item"] for event in events or ()
            if event.get("type") == "item.completed" and isinstance(event.get("item"), dict)
            and event["item"].get("type") == kind]


def codex_messages(events: Sequence[Mapping[str, Any]] | None) -> list[str]:
    """The texts of the agent's finished messages, in order."""
    return [str(item.get("text")) for item in _completed_items(events, "agent_message")]


def codex_commands(events: Sequence[Mapping[str, Any]] | None) -> list[dict[str, Any]]:
    """The finished shell commands (``command``, ``aggregated_output``, ``exit_code``)."""
    return _completed_items(events, "command_execution")
