"""Admin keys: how they are configured, presented and matched (issue 21 §3)."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from relay.cli import parse_config
from relay.operator import hash_key
from relay.status.admin import is_admin_key, presented_key

ADMIN = "sk-admin-0123456789"
RELAY = "sk-relay-alice"


def basic(user: str, key: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{key}".encode()).decode()


@pytest.mark.parametrize(("header", "scheme", "key"), [
    (f"Bearer {ADMIN}", "bearer", ADMIN),
    (f"bearer   {ADMIN} ", "bearer", ADMIN),
    (basic("anyone", ADMIN), "basic", ADMIN),
    (basic("", ADMIN), "basic", ADMIN),
    (basic("x", "pass:with:colons"), "basic", "pass:with:colons"),
])
def test_a_key_is_taken_from_bearer_or_from_basics_password(header: str, scheme: str, key: str) -> None:
    presented = presented_key(header)
    assert presented is not None and (presented.scheme, presented.key) == (scheme, key)
    assert key not in repr(presented)


@pytest.mark.parametrize("header", [None, "", "Bearer", "Bearer ", "Token abc", "Basic", "Basic %%%",
                                    "Basic " + base64.b64encode(b"no-colon").decode(),
                                    "Basic " + base64.b64encode(b"user:").decode(),
                                    "Basic " + base64.b64encode(b"user:\xff\xfe").decode(),
                                    "Bearer " + "k" * 9000, "Bearer a\u0007b"])
def test_absent_or_malformed_credentials_present_no_key(header: str | None) -> None:
    assert presented_key(header) is None


def test_only_a_configured_digest_matches() -> None:
    digests = (bytes.fromhex(hash_key("other")[7:]), bytes.fromhex(hash_key(ADMIN)[7:]))
    assert is_admin_key(ADMIN, digests)
    assert not is_admin_key(ADMIN + "x", digests)
    assert not is_admin_key(ADMIN, ())


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "relay.toml"
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_admin_keys_are_read_from_the_operator_table_and_kept_out_of_repr(tmp_path: Path) -> None:
    path = write(tmp_path, f'[operator]\nadmin_keys = ["{hash_key(ADMIN)}", "{hash_key("second")}"]\n')
    operator = parse_config(["--config", path], {}).operator
    assert operator.admin_keys == (bytes.fromhex(hash_key(ADMIN)[7:]), bytes.fromhex(hash_key("second")[7:]))
    assert hash_key(ADMIN)[7:] not in repr(operator)


@pytest.mark.parametrize(("text", "expected"), [
    ('[operator]\nadmin_keys = "sha256:abc"\n', "operator.admin_keys: must be an array"),
    ('[operator]\nadmin_keys = ["md5:abc"]\n', "operator.admin_keys: entry 1 must be 'sha256:'"),
    (f'[operator]\nadmin_keys = ["{hash_key(ADMIN)}", "{hash_key(ADMIN)}"]\n', "entry 2 repeats an earlier one"),
    (f'[operator]\nadmin_keys = ["{hash_key(RELAY)}"]\n[[operator.keys]]\nname = "alice"\nhash = "{hash_key(RELAY)}"\n',
     "entry 1 is also a relay key"),
])
def test_bad_admin_keys_are_refused_naming_the_field(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                     text: str, expected: str) -> None:
    with pytest.raises(SystemExit) as exit_info:
        parse_config(["--config", write(tmp_path, text)], {})
    assert exit_info.value.code == 2
    assert expected in capsys.readouterr().err


def test_usage_days_comes_from_the_flag_the_env_or_the_config_file(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    assert parse_config([], {}).usage_days == 30
    assert parse_config([], {"QWEN_RELAY_USAGE_DAYS": "7"}).usage_days == 7
    assert parse_config(["--usage-days", "3"], {"QWEN_RELAY_USAGE_DAYS": "7"}).usage_days == 3
    assert parse_config(["--config", write(tmp_path, "[relay]\nusage_days = 90\n")], {}).usage_days == 90
    with pytest.raises(SystemExit):
        parse_config(["--usage-days", "0"], {})
    assert "--usage-days must be between 1 and 3660" in capsys.readouterr().err
