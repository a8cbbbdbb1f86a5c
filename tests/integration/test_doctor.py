"""``qwen-relay doctor`` as operators run it: a real process against the strict emulator.

Each diagnosis is provoked once, the way the service provokes it: an armed WAF
page on ``/api/models``, risk control on writes, ``Bad_Request`` on chat creation,
a dead login, an expired bare token, a closed port. A failure must stop the run
at that check, so the last check reported is the failing one.
"""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path
from typing import Any

import pytest

from relay.emulator import RunningEmulator
from tests.integration.test_login import EMAIL, run_cli
from tests.test_transport import _program, free_port, running

ALL_CHECKS = ["egress", "dns", "tcp", "models", "token", "refresh", "chat_new", "completion", "chat_delete"]


class Setup:
    def __init__(self, emulator: RunningEmulator, where: Path) -> None:
        self.emulator = emulator
        self.where = where
        seed = emulator.state.create_login(EMAIL)
        self.access_token = seed.access_token
        self.login_id = seed.id
        self.accounts = where / "accounts.toml"
        self.accounts.write_text(f'[[operator.accounts]]\nname = "main"\ncookies = "{seed.cookie}"\n')
        self.accounts.chmod(0o600)
        self.config = where / "relay.toml"
        self.config.write_text(f'[operator]\naccounts_file = "{self.accounts}"\n')

    def args(self, *extra: str) -> list[str]:
        return ["doctor", "--upstream", self.emulator.url, "--auth-origin", self.emulator.url,
                "--state-dir", str(self.where / "state"), "--timeout", "5", *extra]

    async def doctor(self, *extra: str, account: bool = True) -> tuple[int, dict[str, Any]]:
        """Run ``doctor --json``; its exit code and report."""
        code, out, err = await run_cli(*self.args(*(("--config", str(self.config)) if account else ()), *extra,
                                                  "--json"))
        assert out.strip(), err
        report: dict[str, Any] = json.loads(out)
        assert report["ok"] is (code == 0)
        return code, report


@pytest.fixture
def setup(emulator: RunningEmulator, tmp_path: Path) -> Setup:
    return Setup(emulator, tmp_path)


def last(report: dict[str, Any]) -> dict[str, Any]:
    check: dict[str, Any] = report["checks"][-1]
    return check


async def test_every_check_passes_for_a_fresh_login(setup: Setup) -> None:
    code, out, err = await run_cli(*setup.args("--config", str(setup.config)))
    assert code == 0, out + err
    lines = out.strip().splitlines()
    assert [line.split()[1] for line in lines] == ALL_CHECKS
    assert all(line.startswith("✓ ") and " ms  " in line for line in lines)
    assert setup.access_token not in out + err
    code, report = await setup.doctor()
    assert code == 0
    assert [check["name"] for check in report["checks"]] == ALL_CHECKS
    assert all(check["ok"] and isinstance(check["ms"], float) for check in report["checks"])
    assert not setup.emulator.state.chats  # the test chats are deleted


async def test_two_runs_keep_the_rotated_refresh_token(setup: Setup) -> None:
    """Refresh tokens are single-use: the second run refreshes with the token the first one saved."""
    for _ in range(2):
        code, report = await setup.doctor()
        assert code == 0, report
    results = [record.result for record in setup.emulator.state.refreshes]
    assert results == ["ok", "ok"]
    login = setup.emulator.state.logins.logins[setup.login_id]
    assert login.alive and login.refresh_count == 2
    assert (setup.where / "state" / "accounts" / "main.json").stat().st_mode & 0o077 == 0


async def test_a_waf_page_on_models_means_the_egress_ip_is_flagged(setup: Setup) -> None:
    setup.emulator.state.arm({"fault": "waf"}, path="/api/models")
    code, report = await setup.doctor()
    assert code == 1
    assert last(report)["name"] == "models" and not last(report)["ok"]
    assert "the egress IP is flagged; use another proxy" in last(report)["detail"]


@pytest.mark.parametrize("how", ["challenge", "require_bx"])
async def test_risk_control_on_writes_points_at_the_bx_bundle(setup: Setup, how: str) -> None:
    login = setup.emulator.state.logins.logins[setup.login_id]
    if how == "challenge":
        login.challenge_writes = 1
    else:
        login.requires_bx = True
    code, report = await setup.doctor()
    assert code == 1
    assert last(report)["name"] == "chat_new"
    assert "the bx-* bundle is missing or stale" in last(report)["detail"]
    assert "`qwen-relay login`'s manual steps" in last(report)["detail"]


async def test_bad_request_points_at_the_web_version(setup: Setup) -> None:
    setup.emulator.state.arm({"fault": "v2_error", "code": "Bad_Request"}, path="/api/v2/chats/new")
    code, report = await setup.doctor()
    assert code == 1
    assert last(report)["name"] == "chat_new"
    assert "--web-version" in last(report)["detail"] and "`version` header" in last(report)["detail"]


async def test_a_dead_login_says_run_login(setup: Setup) -> None:
    setup.emulator.state.logins.kill(setup.emulator.state.logins.logins[setup.login_id])
    code, report = await setup.doctor("--token", setup.access_token, account=False)
    assert code == 1
    names = [check["name"] for check in report["checks"]]
    assert names == ALL_CHECKS[:names.index("chat_new") + 1]
    assert "skipped" in report["checks"][names.index("refresh")]["detail"]
    assert "the login is gone: run `qwen-relay login`" in last(report)["detail"]


async def test_an_expired_bare_token_fails_the_token_check(setup: Setup) -> None:
    def segment(value: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

    expired = f"{segment({'alg': 'HS256', 'typ': 'JWT'})}.{segment({'exp': int(time.time()) - 120})}.sig"
    code, report = await setup.doctor("--token", expired, account=False)
    assert code == 1
    assert last(report)["name"] == "token"
    assert "expired" in last(report)["detail"] and "run `qwen-relay login`" in last(report)["detail"]


async def test_a_closed_port_is_connection_refused(setup: Setup) -> None:
    closed = free_port()
    code, out, _ = await run_cli("doctor", "--upstream", f"http://127.0.0.1:{closed}", "--token", "t",
                                 "--state-dir", str(setup.where / "state"))
    assert code == 1
    assert out.strip().splitlines()[-1].startswith("✗ tcp")
    assert f"connection refused by 127.0.0.1:{closed}" in out


async def test_the_egress_through_a_socks_proxy(setup: Setup) -> None:
    """With a proxy, the proxy's TCP connect and the tunnel are checked instead of DNS/TCP/TLS."""
    port = free_port()
    with running([_program("microsocks"), "-i", "127.0.0.1", "-p", str(port), "-u", "u", "-P", "pw"], port):
        code, report = await setup.doctor("--proxy", f"socks5://u:pw@127.0.0.1:{port}")
    assert code == 0, report
    names = [check["name"] for check in report["checks"]]
    assert names[:4] == ["egress", "proxy_dns", "proxy_tcp", "tunnel"]
    assert f"127.0.0.1:{port}" in report["checks"][0]["detail"] and "pw" not in json.dumps(report)
