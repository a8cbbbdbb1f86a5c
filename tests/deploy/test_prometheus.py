"""deploy/grafana/qwen-relay.json and deploy/prometheus/alerts.yml, proven by the real Prometheus (issue 21 §2).

A relay runs as operators run it (``python -m relay --workers 2``) in pool mode
over an account of the emulator, with two relay keys and the translation cache;
Debian's ``prometheus`` scrapes it every second (a generated prometheus.yml on
loopback, a temp storage dir, the shipped alert rules loaded). The test drives
traffic that touches every panel: streams and whole answers, retries, an
upstream failure, 4xx errors, a key's rpm limit, repeated translations, and
finally risk control on every write, which leaves no usable account.

Then every PromQL expression of the dashboard (Grafana's variables replaced as
Grafana would: ``$__rate_interval`` by a window, "All" instances by ``.*``) is
evaluated through ``/api/v1/query`` and must return data, and every metric it
names must be one Prometheus ingested from the relay: a panel naming a metric
the relay does not export fails here. The alert rules pass ``promtool check
rules`` and their unit tests (``promtool test rules``); loaded in the live
Prometheus, each evaluates without error and "no usable account" goes pending.

Prometheus must be installed (``.ci/run`` installs it); without it these tests
fail rather than skip. Every wait is a poll with a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from relay.emulator import EmulatorConfig, RunningEmulator, start_emulator
from relay.operator import hash_key
from tests.conftest import auth, chat_body, directive, stop_process
from tests.integration.accounts_support import Relay, free_port, poll, start_relay

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
DASHBOARD = DEPLOY / "grafana" / "qwen-relay.json"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
ALERT_TESTS = DEPLOY / "prometheus" / "alerts_test.yml"
CHAT = "/v1/chat/completions"
KEY = "sk-prometheus-main-0123456789"
#: rpm = 1: its second request within a minute (on the same worker) is refused.
TIGHT_KEY = "sk-prometheus-tight-0123456789"
#: what ``$__rate_interval`` becomes: Grafana takes at least 4 scrape intervals (1 s here).
RATE_INTERVAL = "30s"
#: Grafana's "All" for a variable with ``allValue: ".*"``.
ALL = ".*"
#: a wait for Prometheus (a scrape, a rule evaluation: 1 s each) with room for a loaded machine.
PROMETHEUS_WAIT_S = 30.0


def _program(name: str) -> str:
    found = shutil.which(name) or (f"/usr/bin/{name}" if os.access(f"/usr/bin/{name}", os.X_OK) else None)
    if found is None:
        pytest.fail(f"{name} is not installed: apt-get install -y prometheus (.ci/run does this)")
    return found


# -- what the deploy files ask of Prometheus ------------------------------------------------------------


def _grafana_expr(expr: str) -> str:
    """``expr`` as Grafana sends it with every instance selected."""
    expr = expr.replace("$__rate_interval", RATE_INTERVAL).replace("${instance}", ALL).replace("$instance", ALL)
    assert "$" not in expr, f"a Grafana variable the test does not know: {expr}"
    return expr


def dashboard_queries() -> list[tuple[str, str]]:
    """(where, PromQL) for every target of every panel, rows' panels included, and the variables' queries."""
    dashboard = json.loads(DASHBOARD.read_text())
    found: list[tuple[str, str]] = []
    panels = list(dashboard["panels"])
    while panels:
        panel = panels.pop(0)
        panels.extend(panel.get("panels", []))
        for target in panel.get("targets", []):
            found.append((f"panel {panel['title']!r} target {target['refId']}", _grafana_expr(target["expr"])))
    for variable in dashboard["templating"]["list"]:
        if variable["type"] != "query":
            continue
        query = variable["query"]["query"] if isinstance(variable["query"], dict) else variable["query"]
        match = re.fullmatch(r"label_values\((\w+),\s*(\w+)\)", query)
        assert match, f"variable {variable['name']}: an unknown query form {query!r}"
        metric, label = match.groups()
        found.append((f"variable {variable['name']!r}", f"count by ({label}) ({metric})"))  # its values
    return found


def alert_names() -> set[str]:
    return set(re.findall(r"^\s*- alert: (\w+)$", ALERTS.read_text(), re.MULTILINE))


def metric_names(expr: str) -> set[str]:
    return set(re.findall(r"\bqwen_relay_[a-z0-9_]+", expr))


# -- the programs --------------------------------------------------------------------------------------


@dataclass
class Prometheus:
    url: str
    log: Path

    async def get(self, session: aiohttp.ClientSession, path: str, **params: str) -> Any:
        async with session.get(self.url + path, params=params) as response:
            body = await response.json()
        assert body["status"] == "success", f"{path} {params}: {body.get('error')}"
        return body["data"]

    async def query(self, session: aiohttp.ClientSession, expr: str) -> list[dict[str, Any]]:
        data = await self.get(session, "/api/v1/query", query=expr)
        assert data["resultType"] in ("vector", "scalar"), data
        result: list[dict[str, Any]] = data["result"] if data["resultType"] == "vector" else [data["result"]]
        return result


@contextlib.asynccontextmanager
async def prometheus(where: Path, relay_port: int) -> AsyncIterator[Prometheus]:
    """Debian's prometheus on a free loopback port, scraping the relay every second, alerts.yml loaded."""
    port = free_port()
    config = where / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n"
        f"rule_files:\n  - {json.dumps(str(ALERTS))}\n"
        "scrape_configs:\n  - job_name: qwen-relay\n    static_configs:\n"
        f"      - targets: ['127.0.0.1:{relay_port}']\n")
    log = where / "prometheus.log"
    with log.open("wb") as output:
        process = await asyncio.create_subprocess_exec(
            _program("prometheus"), f"--config.file={config}", f"--storage.tsdb.path={where / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn",
            stdout=output, stderr=subprocess.STDOUT, start_new_session=True)
    server = Prometheus(f"http://127.0.0.1:{port}", log)
    try:
        async with aiohttp.ClientSession() as session:
            async def ready() -> bool:
                if process.returncode is not None:
                    raise AssertionError(f"prometheus exited {process.returncode}: {log.read_text()[-2000:]}")
                try:
                    async with session.get(server.url + "/-/ready") as response:
                        return response.status == 200
                except aiohttp.ClientConnectionError:
                    return False

            await poll(ready, "prometheus is ready", timeout_s=PROMETHEUS_WAIT_S)
        yield server
    finally:
        await stop_process(process)


def write_config(where: Path, account_cookie: str) -> str:
    path = where / "relay.toml"
    path.write_text("\n".join([
        "[operator]", 'mode = "pool"', "",
        "[[operator.keys]]", 'name = "main"', f'hash = "{hash_key(KEY)}"', "",
        "[[operator.keys]]", 'name = "tight"', f'hash = "{hash_key(TIGHT_KEY)}"', "rpm = 1", "",
        "[[operator.accounts]]", 'name = "a"', f"cookies = {json.dumps(account_cookie)}", ""]))
    os.chmod(path, 0o600)
    return str(path)


@pytest.fixture
async def emulator() -> AsyncIterator[RunningEmulator]:
    # Access tokens live an hour: no refresh during the test, whichever worker would make it.
    running = await start_emulator(EmulatorConfig(access_ttl_s=3600))
    try:
        yield running
    finally:
        await running.close()


# -- the traffic ---------------------------------------------------------------------------------------


async def post(session: aiohttp.ClientSession, url: str, body: dict[str, Any], key: str = KEY) -> int:
    async with session.post(url, json=body, headers=auth(key)) as response:
        await response.read()
        return response.status


async def drive(session: aiohttp.ClientSession, relay: Relay) -> None:
    """Traffic for every panel; new connections each time, so both workers serve."""
    url = relay.url + CHAT
    for round_number in range(3):
        bodies = [chat_body(stream=index % 2 == 0, text=directive(reply=f"answer {index}", delay_ms=10),
                            **({"stream_options": {"include_usage": True}} if index % 2 == 0 else {}))
                  for index in range(8)]
        assert await asyncio.gather(*(post(session, url, body) for body in bodies)) == [200] * 8, round_number
    # An in-stream error before any byte: tried again on a new chat (a retry by reason on the dashboard).
    retried = [chat_body(text=directive(reply="again", stream_error="internal_error", stream_error_form="string",
                                        after=0, fail_times=1, key=f"prom-retry-{n}")) for n in range(2)]
    assert [await post(session, url, body) for body in retried] == [200, 200]
    refused = chat_body(text=directive(fault="v2_error", actual_status=400, code="Bad_Request", details="no"))
    assert await post(session, url, refused) == 502  # an upstream error that rests no account
    assert await post(session, url, chat_body(), key="sk-not-a-relay-key-0123456789") == 401
    async with session.get(relay.url + "/no/such/path") as response:
        assert response.status == 404
    # rpm = 1 per worker: of four requests, a worker gets two at least (pigeonhole), and refuses one.
    statuses = [await post(session, url, chat_body(), key=TIGHT_KEY) for _ in range(4)]
    assert 429 in statuses and 200 in statuses, statuses
    # The same text three times: a worker sees it twice at least, and answers it from its cache.
    for _ in range(3):
        async with session.post(relay.url + "/translate", headers=auth(KEY),
                                json={"text": "Good morning", "source_lang": "EN", "target_lang": "FR"}) as response:
            assert response.status == 200, await response.text()


async def challenge_every_write(session: aiohttp.ClientSession, relay: Relay, emulator: RunningEmulator,
                                login_id: str) -> None:
    """Risk control on each write of the account, until no worker has it active (each rests it)."""
    async with session.post(emulator.url + "/_emulator/challenge",
                            json={"login": login_id, "times": 100, "on": "writes"}) as response:
        assert response.status == 200
    for _ in range(40):  # bounded: each worker rests the account on the first write it sends
        await post(session, relay.url + CHAT, chat_body(text=directive(reply="risky")))
        async with session.get(relay.url + "/metrics") as response:
            text = await response.text()
        if 'qwen_relay_account_state{account="a",state="active"} 0.0' in text:
            return
    raise AssertionError("the account stayed active on some worker after 40 challenged writes")


# -- the tests -----------------------------------------------------------------------------------------


def test_the_alert_rules_pass_promtool_check_and_their_unit_tests() -> None:
    promtool = _program("promtool")
    checked = subprocess.run([promtool, "check", "rules", str(ALERTS)], capture_output=True, text=True, timeout=60,
                             check=False)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(alert_names())} rules found" in checked.stdout, checked.stdout
    tested = subprocess.run([promtool, "test", "rules", ALERT_TESTS.name], cwd=ALERT_TESTS.parent,
                            capture_output=True, text=True, timeout=60, check=False)
    assert tested.returncode == 0, tested.stdout + tested.stderr
    unit_tested = set(re.findall(r"alertname: (\w+)", ALERT_TESTS.read_text()))
    assert unit_tested == alert_names(), "every alert has a unit test"


async def test_every_dashboard_query_and_alert_returns_data_from_a_relay_under_load(
        emulator: RunningEmulator, tmp_path: Path) -> None:
    login = emulator.state.create_login("a@example.com")
    relay = await start_relay("--workers", "2", "--config", write_config(tmp_path, login.cookie),
                              "--upstream", emulator.url, "--auth-origin", emulator.url,
                              "--state-dir", str(tmp_path / "state"), "--translation-cache", "memory",
                              "--challenge-cooldown", "600")
    try:
        relay_port = int(relay.url.rsplit(":", 1)[1])
        async with prometheus(tmp_path, relay_port) as server, aiohttp.ClientSession() as prom:
            async def scraped() -> bool:
                return [sample["value"][1] for sample in await server.query(prom, 'up{job="qwen-relay"}')] == ["1"]

            await poll(scraped, "prometheus scrapes the relay", timeout_s=PROMETHEUS_WAIT_S)
            connector = aiohttp.TCPConnector(force_close=True)  # a new connection each time: either worker
            async with aiohttp.ClientSession(connector=connector) as session:
                await drive(session, relay)
                await challenge_every_write(session, relay, emulator, login.id)

            async def ingested_all() -> bool:
                result = await server.query(prom, f'sum(qwen_relay_requests_total{{route="{CHAT}"}})')
                return bool(result) and float(result[0]["value"][1]) >= 3 * 8 + 2 + 1 + 1 + 4

            await poll(ingested_all, "prometheus has the load's counts", timeout_s=PROMETHEUS_WAIT_S)
            exported = set(await server.get(prom, "/api/v1/label/__name__/values"))
            await _check_dashboard(prom, server, exported)
            await _check_alerts(prom, server, exported)
    finally:
        await relay.close()


async def _check_dashboard(prom: aiohttp.ClientSession, server: Prometheus, exported: set[str]) -> None:
    queries = dashboard_queries()
    assert len(queries) >= 25, "the dashboard lost its panels"
    unknown = {where: sorted(metric_names(expr) - exported) for where, expr in queries
               if metric_names(expr) - exported}
    assert unknown == {}, f"panels query metrics the relay does not export: {unknown}"
    missing: dict[str, str] = {}

    async def all_answer() -> bool:
        missing.clear()
        for where, expr in queries:
            if not await server.query(prom, expr):
                missing[where] = expr
        return not missing

    try:
        await poll(all_answer, "every dashboard query returns data", timeout_s=PROMETHEUS_WAIT_S)
    except AssertionError as exc:
        raise AssertionError(f"queries without data: {json.dumps(missing, indent=1)}") from exc


async def _check_alerts(prom: aiohttp.ClientSession, server: Prometheus, exported: set[str]) -> None:
    """alerts.yml as the live Prometheus loaded it: each rule evaluates cleanly over the relay's series."""
    assert alert_names() == {"QwenRelayNoUsableAccount", "QwenRelayChallenges", "QwenRelayHigh5xxRatio",
                             "QwenRelayAccessTokenNotRefreshed"}
    loaded: list[dict[str, Any]] = []

    async def evaluated_cleanly() -> bool:
        groups = (await server.get(prom, "/api/v1/rules"))["groups"]
        loaded[:] = [rule for group in groups for rule in group["rules"]]
        assert {rule["name"] for rule in loaded} == alert_names()
        for rule in loaded:
            assert rule["health"] != "err", (rule["name"], rule.get("lastError"))
        return all(rule["health"] == "ok" for rule in loaded)

    await poll(evaluated_cleanly, "prometheus evaluated every rule", timeout_s=PROMETHEUS_WAIT_S)
    for rule in loaded:
        assert metric_names(rule["query"]) <= exported, (rule["name"], metric_names(rule["query"]) - exported)
        await server.query(prom, rule["query"])  # valid PromQL over the relay's real series
    # The series behind the account alerts exist (the comparison at their end aside).
    assert await server.query(prom, 'max by (instance) ({__name__=~"qwen_relay_(account|token)_state", '
                                    'state="active"})')
    assert await server.query(prom, "min by (instance, account) (qwen_relay_account_token_expires_in_seconds)")

    async def no_account_alert() -> bool:
        alerts = (await server.get(prom, "/api/v1/alerts"))["alerts"]
        return any(alert["labels"]["alertname"] == "QwenRelayNoUsableAccount"
                   and alert["state"] in ("pending", "firing") for alert in alerts)

    await poll(no_account_alert, "QwenRelayNoUsableAccount is pending", timeout_s=PROMETHEUS_WAIT_S)
