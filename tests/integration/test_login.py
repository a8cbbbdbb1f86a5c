"""``qwen-relay login`` as users run it: a real process against the emulator's auth host.

The password goes in on stdin (not a TTY), as a script would feed it; the
accounts file is read back with the relay's own config loader.
"""

from __future__ import annotations

import asyncio
import os
import stat
import sys
import tomllib
from pathlib import Path

import pytest

from relay.config_file import load_config_file
from relay.emulator import RunningEmulator

EMAIL = "demo@example.com"
PASSWORD = "demo-password"


async def run_cli(*args: str, stdin: str = "") -> tuple[int, str, str]:
    """``python -m relay ARGS`` with ``stdin``; its exit code, stdout and stderr."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "relay", *args, stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    async with asyncio.timeout(30):
        out, err = await process.communicate(stdin.encode())
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def login(emulator: RunningEmulator, accounts: Path, *extra: str, password: str = PASSWORD,
                name: str = "main") -> tuple[int, str, str]:
    return await run_cli("login", "--email", EMAIL, "--name", name, "--auth-origin", emulator.url,
                         "--accounts-file", str(accounts), *extra, stdin=password + "\n")


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def accounts_in(path: Path) -> list[dict[str, str]]:
    accounts: list[dict[str, str]] = tomllib.loads(path.read_text())["operator"]["accounts"]
    return accounts


async def test_login_writes_a_private_accounts_file_the_relay_loads(emulator: RunningEmulator,
                                                                    tmp_path: Path) -> None:
    """Success: one 0600 file, one entry whose jar holds token= and refresh_token=; nothing secret printed."""
    accounts = tmp_path / "accounts.toml"
    code, out, err = await login(emulator, accounts)
    assert code == 0, err
    assert mode_of(accounts) == 0o600
    [entry] = accounts_in(accounts)
    assert entry["name"] == "main"
    parts = dict(part.strip().split("=", 1) for part in entry["cookies"].split(";"))
    assert parts["token"] and parts["refresh_token"] and "x-ap" in parts
    # The relay's own loader accepts it, through [operator] accounts_file.
    config = tmp_path / "relay.toml"
    config.write_text(f'[operator]\naccounts_file = "{accounts}"\n')
    operator = load_config_file(str(config), frozenset()).operator
    assert operator is not None and [account.name for account in operator.accounts] == ["main"]
    assert str(accounts) in out and 'mode = "pool"' in out and len(out.strip().splitlines()) == 1
    for secret in (PASSWORD, parts["token"], parts["refresh_token"]):
        assert secret not in out + err
    [login_record] = emulator.state.logins.logins.values()
    assert login_record.email == EMAIL and login_record.alive


async def test_wrong_password_exits_1_and_says_so(emulator: RunningEmulator, tmp_path: Path) -> None:
    accounts = tmp_path / "accounts.toml"
    code, out, err = await login(emulator, accounts, password="not-the-password")
    assert code == 1
    assert "wrong email or password" in err
    assert not accounts.exists()
    assert "not-the-password" not in out + err


@pytest.mark.parametrize("wall", ["waf", "risk_control", "rate"])
async def test_a_challenged_sign_in_prints_the_manual_steps(emulator: RunningEmulator, tmp_path: Path,
                                                            wall: str) -> None:
    """The WAF page, risk-control JSON and the sign-in rate wall all mean: do it in a browser."""
    if wall == "rate":
        emulator.state.logins.signin_limit = 0  # every sign-in is over the wall
    else:
        emulator.state.logins.signin_wall = wall
    accounts = tmp_path / "accounts.toml"
    code, _, err = await login(emulator, accounts)
    assert code == 1
    assert "Qwen Chat wants a browser for this sign-in (challenge). Do it by hand:" in err
    for step in ("https://chat.qwen.ai", "F12", "`Cookie:`", "token= and refresh_token=", "`bx-ua`",
                 "[[operator.accounts]]", 'name = "main"', "cookies = ", "bx_ua = ", "bx_umidtoken = ",
                 "bx_v = ", "0600"):
        assert step in err
    assert not accounts.exists()


async def test_login_through_an_unreachable_proxy_names_it(emulator: RunningEmulator, tmp_path: Path) -> None:
    """A network error is the transport's message, the proxy by host:port, never its password."""
    accounts = tmp_path / "accounts.toml"
    code, out, err = await login(emulator, accounts, "--proxy", "socks5://user:secret@127.0.0.1:9")
    assert code == 1
    assert "through the proxy 127.0.0.1:9" in err
    assert 'proxy = "<your proxy URL>"' in err and "secret" not in out + err
    assert not accounts.exists()


async def test_login_replaces_the_account_of_the_same_name(emulator: RunningEmulator, tmp_path: Path) -> None:
    accounts = tmp_path / "accounts.toml"
    accounts.write_text('[[operator.accounts]]\nname = "main"\ncookies = "token=old; refresh_token=old"\n\n'
                        '[[operator.accounts]]\nname = "other"\ncookies = "token=keep; refresh_token=keep"\n'
                        'bx_v = "2.5.36"\n')
    accounts.chmod(0o600)
    code, _, err = await login(emulator, accounts)
    assert code == 0, err
    assert mode_of(accounts) == 0o600
    entries = {entry["name"]: entry for entry in accounts_in(accounts)}
    assert set(entries) == {"main", "other"}
    assert entries["other"] == {"name": "other", "cookies": "token=keep; refresh_token=keep", "bx_v": "2.5.36"}
    assert "token=old" not in entries["main"]["cookies"] and "refresh_token=" in entries["main"]["cookies"]
    assert not [name for name in os.listdir(tmp_path) if name.endswith(".tmp")]


async def test_login_refuses_an_accounts_file_others_can_read(emulator: RunningEmulator, tmp_path: Path) -> None:
    accounts = tmp_path / "accounts.toml"
    accounts.write_text('[[operator.accounts]]\nname = "other"\ncookies = "token=keep"\n')
    accounts.chmod(0o644)
    before = accounts.read_text()
    code, _, err = await login(emulator, accounts)
    assert code == 1
    assert f"chmod 600 {accounts}" in err
    assert accounts.read_text() == before and mode_of(accounts) == 0o644
    assert not emulator.state.logins.logins  # refused before any sign-in


async def test_login_writes_where_the_config_points(emulator: RunningEmulator, tmp_path: Path) -> None:
    """Without --accounts-file: the config's [operator] accounts_file, even before it exists."""
    accounts = tmp_path / "from-config.toml"
    config = tmp_path / "relay.toml"
    config.write_text(f'[operator]\naccounts_file = "{accounts}"\n')
    code, out, err = await run_cli("login", "--email", EMAIL, "--name", "cfg", "--auth-origin", emulator.url,
                                   "--config", str(config), stdin=PASSWORD + "\n")
    assert code == 0, err
    assert str(accounts) in out
    assert [entry["name"] for entry in accounts_in(accounts)] == ["cfg"] and mode_of(accounts) == 0o600
