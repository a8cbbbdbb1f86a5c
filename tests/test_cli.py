"""Command line (relay/cli.py): flag > ``QWEN_RELAY_<NAME>`` env var > default,
one frozen Config, exit status 2 on bad input naming what was bad.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest

from relay.cli import ENV_PREFIX, parse_config
from relay.config import Config


def test_defaults() -> None:
    """With no flags and no env vars every default is the documented one."""
    config = parse_config([], {})
    assert config == Config()
    assert config.limits.max_concurrency == 100
    assert config.timeouts.upstream_s == 30.0
    assert config.retries == 3
    assert config.models_ttl_s == 3600.0
    assert config.limits.max_line_bytes == 1_048_576
    assert config.limits.max_body_bytes == 10_485_760
    assert config.compress_min_bytes == 512
    assert config.cors_origins == ("*",)
    assert config.log_level == "info"
    assert config.upstream == "https://chat.qwen.ai"
    assert config.dialect == "qwen-v2"
    assert config.reasoning_in_content is False
    assert (config.host, config.port) == ("127.0.0.1", 8080)


def test_environment_of_the_process_is_not_read_when_environ_given(monkeypatch: pytest.MonkeyPatch) -> None:
    """An explicit ``environ`` replaces os.environ entirely."""
    monkeypatch.setenv("QWEN_RELAY_RETRIES", "9")
    assert parse_config([], {}).retries == 3
    assert parse_config([]).retries == 9


@pytest.mark.parametrize(("name", "raw", "read"), [
    ("MAX_CONCURRENCY", "7", lambda c: c.limits.max_concurrency == 7),
    ("TIMEOUT", "2.5", lambda c: c.timeouts.upstream_s == 2.5),
    ("RETRIES", "1", lambda c: c.retries == 1),
    ("MODELS_TTL", "0", lambda c: c.models_ttl_s == 0.0),
    ("MAX_LINE_BYTES", "2048", lambda c: c.limits.max_line_bytes == 2048),
    ("MAX_BODY_BYTES", "4096", lambda c: c.limits.max_body_bytes == 4096),
    ("COMPRESS_MIN_BYTES", "0", lambda c: c.compress_min_bytes == 0),
    ("CORS_ORIGINS", "https://a.example, https://b.example,", lambda c: c.cors_origins == (
        "https://a.example", "https://b.example")),
    ("LOG_LEVEL", "DEBUG", lambda c: c.log_level == "debug"),
    ("HOST", "0.0.0.0", lambda c: c.host == "0.0.0.0"),
    ("PORT", "9000", lambda c: c.port == 9000),
    ("UPSTREAM", "http://127.0.0.1:1234", lambda c: c.upstream == "http://127.0.0.1:1234"),
    ("BUSY_POLL_US", "300", lambda c: c.busy_poll_us == 300),
])
def test_env_var_applies(name: str, raw: str, read: Callable[[Config], bool]) -> None:
    """``QWEN_RELAY_<NAME>`` sets each setting."""
    config = parse_config([], {ENV_PREFIX + name: raw})
    assert read(config)


def test_flag_beats_env_var() -> None:
    """When both are given, the flag wins."""
    environ = {"QWEN_RELAY_MAX_CONCURRENCY": "7", "QWEN_RELAY_TIMEOUT": "5"}
    config = parse_config(["--max-concurrency", "11", "--timeout=9"], environ)
    assert config.limits.max_concurrency == 11
    assert config.timeouts.upstream_s == 9.0


def test_flag_beats_invalid_env_var() -> None:
    """An env var overridden by a flag is never parsed, so it cannot fail."""
    config = parse_config(["--retries", "2"], {"QWEN_RELAY_RETRIES": "lots"})
    assert config.retries == 2


@pytest.mark.parametrize(("name", "raw"), [
    ("MAX_CONCURRENCY", "many"),
    ("TIMEOUT", "soon"),
    ("PORT", "80.5"),
    ("LOG_LEVEL", "verbose"),
])
def test_invalid_env_value_exits_2_naming_the_variable(
    name: str, raw: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A value that does not parse exits with status 2 and names the env var
    (not the flag the user never typed) and the value."""
    with pytest.raises(SystemExit) as info:
        parse_config([], {ENV_PREFIX + name: raw})
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert ENV_PREFIX + name in err
    assert repr(raw) in err


@pytest.mark.parametrize(("name", "raw"), [
    ("RETRIES", "0"),
    ("TIMEOUT", "-1"),
    ("UPSTREAM", "ftp://x"),
])
def test_out_of_range_env_value_exits_2_naming_the_variable(
    name: str, raw: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A value that parses but is out of range is just as invalid: status 2, and
    the message names the env var the user actually set."""
    with pytest.raises(SystemExit) as info:
        parse_config([], {ENV_PREFIX + name: raw})
    assert info.value.code == 2
    assert ENV_PREFIX + name in capsys.readouterr().err


@pytest.mark.parametrize("argv", [
    ["--max-concurrency", "x"],
    ["--retries", "0"],
    ["--timeout", "0"],
    ["--timeout", "nan"],
    ["--port", "70000"],
    ["--max-body-bytes", "100"],
    ["--compress-min-bytes", "-1"],
    ["--models-ttl", "-5"],
    ["--cors-origins", " , "],
    ["--busy-poll-us", "-1"],
    ["--busy-poll-us", "20000"],
    ["--no-such-flag"],
])
def test_invalid_flag_exits_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    """Bad flags are a usage error (status 2), never a traceback."""
    with pytest.raises(SystemExit) as info:
        parse_config(argv, {})
    assert info.value.code == 2
    assert "qwen-relay" in capsys.readouterr().err


@pytest.mark.parametrize(("given", "expected"), [
    ("https://chat.qwenlm.ai/", "https://chat.qwenlm.ai"),
    ("https://proxy.example/qwen/", "https://proxy.example/qwen"),
    ("https://proxy.example/qwen//", "https://proxy.example/qwen"),
    ("http://127.0.0.1:8081/a/b", "http://127.0.0.1:8081/a/b"),
])
def test_upstream_trailing_slash_stripped_and_path_prefix_kept(given: str, expected: str) -> None:
    """The origin loses trailing slashes (paths are appended with a leading /)
    but keeps its path prefix."""
    assert parse_config(["--upstream", given], {}).upstream == expected


def test_upstream_emulator_is_accepted() -> None:
    """``--upstream emulator`` selects the bundled emulator."""
    assert parse_config(["--upstream", "emulator"], {}).upstream == "emulator"


@pytest.mark.parametrize("upstream", ["ftp://x", "chat.qwenlm.ai", "", "/"])
def test_non_http_upstream_is_rejected(upstream: str, capsys: pytest.CaptureFixture[str]) -> None:
    """Only http(s) origins (or ``emulator``) are accepted; the error names --upstream."""
    with pytest.raises(SystemExit) as info:
        parse_config(["--upstream", upstream], {})
    assert info.value.code == 2
    assert "--upstream" in capsys.readouterr().err


def test_help_names_every_env_var(capsys: pytest.CaptureFixture[str]) -> None:
    """--help documents each flag's env var; it exits 0."""
    with pytest.raises(SystemExit) as info:
        parse_config(["--help"], {})
    assert info.value.code == 0
    out = capsys.readouterr().out
    flags = set(re.findall(r"--([a-z][a-z-]+)", out)) - {"help", "version"}  # the two that set nothing
    assert {"upstream", "max-concurrency", "timeout", "retries", "cors-origins"} <= flags
    text = "".join(out.split())
    for flag in flags:
        assert ENV_PREFIX + flag.upper().replace("-", "_") in text, flag
