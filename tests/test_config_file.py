"""--config FILE: TOML settings and upstream headers, rejected whole when malformed (issue 4)."""

from __future__ import annotations

from pathlib import Path

import pytest

from relay.cli import ENV_PREFIX, parse_config


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "relay.toml"
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_file_sets_settings_and_headers(tmp_path: Path) -> None:
    path = write(tmp_path, '''
[relay]
max_concurrency = 7
dialect = "qwen-phase"
reasoning-in-content = true

[upstream]
cookies = "ssxmod_itna=abc"

[upstream.headers]
"bx-v" = "2.5.36"
"User-Agent" = "Test/1.0"
''')
    config = parse_config(["--config", path], {})
    assert config.limits.max_concurrency == 7
    assert config.dialect == "qwen-phase"
    assert config.reasoning_in_content is True
    assert dict(config.upstream_headers) == {"bx-v": "2.5.36", "User-Agent": "Test/1.0"}
    assert config.web.cookies == "ssxmod_itna=abc"


def test_env_and_flag_win_over_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "[relay]\nmax_concurrency = 7\nretries = 5\n")
    config = parse_config(["--config", path, "--retries", "2"], {ENV_PREFIX + "MAX_CONCURRENCY": "9"})
    assert config.limits.max_concurrency == 9
    assert config.retries == 2


def test_config_path_from_env(tmp_path: Path) -> None:
    path = write(tmp_path, "[relay]\nport = 9999\n")
    assert parse_config([], {ENV_PREFIX + "CONFIG": path}).port == 9999


@pytest.mark.parametrize(("text", "expected"), [
    ("[relay\nport = 1\n", "invalid TOML"),
    ("[relay]\nnope = 1\n", "line 2, relay.nope: unknown setting"),
    ("[relay]\n\nport = \"x\"\n", "[relay] port"),
    ("[relay]\nretries = 0\n", "--retries"),
    ("[upstream.headers]\n\"bad name\" = \"v\"\n", "not a valid HTTP header name"),
    ("[upstream.headers]\nAuthorization = \"Bearer x\"\n", "set by the relay itself"),
    ("[other]\nx = 1\n", "unknown table"),
])
def test_malformed_file_is_rejected_with_where_and_what(
        tmp_path: Path, text: str, expected: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        parse_config(["--config", write(tmp_path, text)], {})
    assert info.value.code == 2
    assert expected in capsys.readouterr().err


def test_missing_file_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse_config(["--config", str(tmp_path / "absent.toml")], {})
    assert "cannot read" in capsys.readouterr().err
