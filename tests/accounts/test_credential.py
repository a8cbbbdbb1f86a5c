"""Cookie jars, JWT expiry, persisted jars and [[operator.accounts]] parsing (issue 17)."""

from __future__ import annotations

import base64
import json
import os
import stat
import time
from pathlib import Path
from typing import Any

import pytest

from relay.accounts.credential import CookieJar, Credential, token_expiry
from relay.accounts.store import AccountStore, default_state_dir, source_digest
from relay.config_file import ConfigFileError, load_config_file
from relay.operator import TokenPool
from relay.operator.config import AccountSpec, Secret
from relay.state import MemoryState


def jwt(claims: dict[str, Any]) -> str:
    def part(data: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()
    return f"{part({'alg': 'HS256'})}.{part(claims)}.c2ln"


def test_token_expiry_reads_exp_and_tolerates_anything_else() -> None:
    assert token_expiry(jwt({"id": "u", "exp": 1790000000})) == 1790000000
    for broken in ("", "abc", "a.b.c", jwt({"id": "u"}), jwt({"exp": "soon"}), jwt({"exp": True})):
        assert token_expiry(broken) is None


def test_jar_parses_a_browser_cookie_header_and_puts_token_first() -> None:
    jar = CookieJar.parse("acw_tc=1; token=t0; refresh_token=r0;  x-ap=2 ; junk")
    assert jar.header() == "token=t0; acw_tc=1; refresh_token=r0; x-ap=2"
    version = jar.version
    jar.update({"token": "t1", "acw_tc": ""})  # an empty value deletes (Max-Age=0)
    assert jar.header() == "token=t1; refresh_token=r0; x-ap=2" and jar.version == version + 1
    jar.update({"token": "t1"})
    assert jar.version == version + 1  # nothing changed


def test_set_cookie_of_one_credential_never_reaches_another() -> None:
    spec_a = AccountSpec("a", Secret("token=ta; refresh_token=ra; x-ap=A"))
    spec_b = AccountSpec("b", Secret("token=tb; refresh_token=rb; x-ap=B"))
    pool = TokenPool((), accounts=(spec_a, spec_b))
    a, b = (entry.credential for entry in pool.accounts())
    a.take_cookies({"ssxmod_itna": "new", "token": "ta2"})
    assert b.jar.get("ssxmod_itna") is None and b.token == "tb"
    assert a.token == "ta2" and a.is_account and a.can_refresh


def test_a_bare_token_is_a_jar_with_only_its_token() -> None:
    credential = Credential.bare("eyJabc")
    assert credential.jar.header() == "token=eyJabc" and not credential.can_refresh
    assert credential.label != "eyJabc"


def test_reload_keeps_a_live_account_and_replaces_a_repasted_one() -> None:
    pool = TokenPool((), accounts=(AccountSpec("a", Secret("token=t; refresh_token=r")),))
    (entry,) = pool.accounts()
    entry.credential.take_cookies({"token": "rotated"})
    pool.update((), (AccountSpec("a", Secret("token=t; refresh_token=r")),))
    assert pool.accounts()[0] is entry and entry.token == "rotated"
    pool.update((), (AccountSpec("a", Secret("token=new; refresh_token=new")),))
    assert pool.accounts()[0].token == "new"


async def test_file_store_writes_0600_atomically_and_resumes_only_the_same_login(tmp_path: Path) -> None:
    store = AccountStore(MemoryState(), str(tmp_path))
    source = source_digest("token=t; refresh_token=r")
    await store.save("main", source, CookieJar({"token": "t2", "refresh_token": "r2"}))
    path = tmp_path / "accounts" / "main.json"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]
    loaded = await store.load("main", source)
    assert loaded is not None and loaded.get("refresh_token") == "r2"
    assert await store.load("main", source_digest("token=other")) is None  # a newly pasted login wins
    assert await store.load("nobody", source) is None


def test_default_state_dir_prefers_systemd() -> None:
    assert default_state_dir({"STATE_DIRECTORY": "/var/lib/qwen-relay", "HOME": "/h"}) == "/var/lib/qwen-relay"
    assert default_state_dir({"HOME": "/h"}) == "/h/.local/state/qwen-relay"


def write(path: Path, text: str, mode: int = 0o600) -> str:
    path.write_text(text)
    path.chmod(mode)
    return str(path)


def test_accounts_in_the_config_and_in_a_0600_accounts_file(tmp_path: Path) -> None:
    accounts = write(tmp_path / "accounts.toml", '[[operator.accounts]]\nname = "b"\n'
                                                 'cookies = "token=tb; refresh_token=rb"\n')
    config = write(tmp_path / "relay.toml", f'''
[operator]
mode = "both"
accounts_file = "{accounts}"

[[operator.accounts]]
name = "a"
cookies = "token=ta; refresh_token=ra; acw_tc=1"
bx_ua = "ua-bundle"
bx_umidtoken = "umid"
bx_v = "2.5.36"
proxy = "socks5://user:pass@127.0.0.1:1080"
''')
    operator = load_config_file(config, frozenset()).operator
    assert operator is not None
    a, b = operator.accounts
    assert (a.name, b.name) == ("a", "b") and a.bx_v == "2.5.36"
    assert "user:pass" not in repr(a) and "ta" not in repr(a)
    pool = TokenPool((), accounts=operator.accounts)
    assert dict(pool.accounts()[0].credential.bx) == {"bx-ua": "ua-bundle", "bx-umidtoken": "umid", "bx-v": "2.5.36"}
    assert pool.accounts()[0].credential.proxy == "socks5://user:pass@127.0.0.1:1080"


@pytest.mark.parametrize(("entry", "message"), [
    ('name = "a b"\ncookies = "token=t"', "name"),
    ('name = "a"\ncookies = "acw_tc=1"', "token="),
    ('name = "a"\ncookies = "token=t"\nproxy = "ftp://x"', "proxy"),
    ('name = "a"\ncookies = "token=t"\ncolour = "red"', "unknown field"),
])
def test_bad_account_entries_are_refused_naming_the_field(tmp_path: Path, entry: str, message: str) -> None:
    config = write(tmp_path / "relay.toml", f"[[operator.accounts]]\n{entry}\n")
    with pytest.raises(ConfigFileError, match=message):
        load_config_file(config, frozenset())


def test_an_accounts_file_others_can_read_is_refused(tmp_path: Path) -> None:
    accounts = write(tmp_path / "accounts.toml", '[[operator.accounts]]\nname = "b"\ncookies = "token=t"\n',
                     mode=0o644)
    config = write(tmp_path / "relay.toml", f'[operator]\naccounts_file = "{accounts}"\n')
    with pytest.raises(ConfigFileError, match="chmod 600"):
        load_config_file(config, frozenset())


def test_expires_in_uses_the_jwt() -> None:
    credential = Credential.bare(jwt({"exp": time.time() + 100}))
    left = credential.expires_in_s()
    assert left is not None and 98 < left <= 100


async def test_the_refresh_lock_in_a_state_dir_holds_across_processes(tmp_path: Path) -> None:
    """Workers of --workers N (and doctor) share --state-dir: one refresh of a login at a time."""
    first, second = AccountStore(MemoryState(), str(tmp_path)), AccountStore(MemoryState(), str(tmp_path))
    held = await first.acquire_lock("main", 10)
    assert held is not None
    assert await second.acquire_lock("main", 10) is None  # another open file description: flock says no
    assert await second.acquire_lock("other", 10) is not None
    await first.release_lock("main", held)
    again = await second.acquire_lock("main", 10)
    assert again is not None
    await second.release_lock("main", again)
