"""[operator] tables of --config, env overrides and hash-key (issue 9)."""

from __future__ import annotations

import io
import os
import re
from pathlib import Path

import pytest

from relay.cli import ENV_PREFIX, hash_key_main, load_operator, parse_config
from relay.config_file import ConfigFileError
from relay.operator import OperatorConfig, Secret, hash_key

KEY_HASH = hash_key("sk-relay-alice")
OTHER_HASH = hash_key("sk-relay-bob")


def write(tmp_path: Path, text: str, name: str = "relay.toml") -> str:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


def token_file(tmp_path: Path, text: str, mode: int = 0o600) -> str:
    path = tmp_path / "tokens"
    path.write_text(text, encoding="utf-8")
    os.chmod(path, mode)
    return str(path)


def test_full_operator_section_is_parsed(tmp_path: Path) -> None:
    tokens = token_file(tmp_path, "# pool\ntok-a\n\ntok-b\n")
    path = write(tmp_path, f'''
[operator]
mode = "pool"

[[operator.keys]]
name = "alice"
hash = "{KEY_HASH}"
models = ["qwen-max-latest"]
rpm = 60
max_concurrent = 4

[[operator.keys]]
hash = "{OTHER_HASH}"

[operator.tokens]
file = "{tokens}"
''')
    operator = parse_config(["--config", path], {}).operator
    assert operator.mode == "pool"
    alice, second = operator.keys
    assert (alice.name, alice.models, alice.rpm, alice.max_concurrent) == (
        "alice", frozenset({"qwen-max-latest"}), 60, 4)
    assert (second.name, second.models, second.rpm, second.max_concurrent) == ("key2", None, None, None)
    assert [token.reveal() for token in operator.tokens] == ["tok-a", "tok-b"]


def test_default_is_passthrough_without_operator_table(tmp_path: Path) -> None:
    assert parse_config([], {}).operator == OperatorConfig()
    assert parse_config(["--config", write(tmp_path, "[relay]\nport = 1\n")], {}).operator.mode == "passthrough"


def test_env_sets_mode_and_tokens_over_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, f'[operator]\n[[operator.keys]]\nhash = "{KEY_HASH}"\n'
                           '[operator.tokens]\nlist = ["file-token"]\n')
    operator = parse_config(["--config", path], {ENV_PREFIX + "MODE": "both",
                                                 ENV_PREFIX + "TOKENS": "env-a, env-b"}).operator
    assert operator.mode == "both"
    assert [token.reveal() for token in operator.tokens] == ["env-a", "env-b"]


def test_tokens_and_keys_never_appear_in_repr(tmp_path: Path) -> None:
    path = write(tmp_path, f'[operator]\nmode = "pool"\n[[operator.keys]]\nhash = "{KEY_HASH}"\n'
                           '[operator.tokens]\nlist = ["canary-token-xyz"]\n')
    config = parse_config(["--config", path], {})
    shown = repr(config) + str(config.operator) + repr(Secret("canary-token-xyz"))
    assert "canary-token-xyz" not in shown
    assert KEY_HASH[7:] not in shown


@pytest.mark.parametrize(("text", "expected"), [
    ('[operator]\nmode = "open"\n', "line 2, operator.mode: must be one of passthrough, pool, both"),
    ('[operator]\nmodes = "pool"\n', "line 2, operator.modes: unknown setting"),
    ((f'[operator]\n\n[[operator.keys]]\nname = "a"\nhash = "{KEY_HASH}"\n\n[[operator.keys]]\nname = "b"\n'
     'hash = "md5:abc"\n'), "line 9, operator.keys[1].hash: must be 'sha256:'"),
    (f'[[operator.keys]]\nhash = "{KEY_HASH}"\nrpm = 0\n', "line 3, operator.keys[0].rpm: must be a positive integer"),
    (f'[[operator.keys]]\nhash = "{KEY_HASH}"\nmax_concurrent = "4"\n',
     "line 3, operator.keys[0].max_concurrent: must be a positive integer"),
    (f'[[operator.keys]]\nhash = "{KEY_HASH}"\nmodels = "qwen-max"\n', "line 3, operator.keys[0].models"),
    (f'[[operator.keys]]\nhash = "{KEY_HASH}"\nrole = "admin"\n', "operator.keys[0].role: unknown field"),
    (f'[[operator.keys]]\nname = "a b"\nhash = "{KEY_HASH}"\n', "line 2, operator.keys[0].name"),
    (f'[[operator.keys]]\nname = "a"\nhash = "{KEY_HASH}"\n[[operator.keys]]\nname = "a"\nhash = "{OTHER_HASH}"\n',
     "line 5, operator.keys[1].name: duplicate key name"),
    ('[operator.tokens]\nlist = ["a", 2]\n', "line 2, operator.tokens.list: must be an array of strings"),
    ('[operator.tokens]\nlist = ["has space"]\n', "token 1 is not printable ASCII"),
    ('[operator.tokens]\nlist = ["a"]\nfile = "/x"\n', "give list or file, not both"),
    ('[operator]\nmode = "pool"\n[operator.tokens]\nlist = ["a"]\n', "needs at least one [[operator.keys]]"),
    (f'[operator]\nmode = "pool"\n[[operator.keys]]\nhash = "{KEY_HASH}"\n', "needs Qwen accounts or tokens"),
])
def test_malformed_operator_section_is_rejected_with_line_and_field(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, expected: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(SystemExit) as exit_info:
        parse_config(["--config", path], {})
    assert exit_info.value.code == 2
    assert expected in capsys.readouterr().err


def test_token_file_readable_by_others_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tokens = token_file(tmp_path, "tok-a\n", mode=0o644)
    path = write(tmp_path, f'[operator.tokens]\nfile = "{tokens}"\n')
    with pytest.raises(SystemExit):
        parse_config(["--config", path], {})
    err = capsys.readouterr().err
    assert f"line 2, operator.tokens.file: {tokens} has mode 0644" in err
    assert "chmod 600" in err and "tok-a" not in err


def test_token_secret_is_not_quoted_in_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, '[operator.tokens]\nlist = ["secret\u00e9token"]\n')
    with pytest.raises(SystemExit):
        parse_config(["--config", path], {})
    err = capsys.readouterr().err
    assert "token 1 is not printable ASCII" in err and "secret\u00e9token" not in err


def test_load_operator_rejects_a_bad_file_whole(tmp_path: Path) -> None:
    """SIGHUP reload: a bad file raises (the server keeps the old config), a good one parses."""
    good = write(tmp_path, f'[operator]\nmode = "both"\n[[operator.keys]]\nhash = "{KEY_HASH}"\n'
                           '[operator.tokens]\nlist = ["t"]\n')
    assert load_operator(good, {}).mode == "both"
    bad = write(tmp_path, '[operator]\nmode = "both"\n[relay]\nport = "x"\nnope = 1\n', name="bad.toml")
    with pytest.raises(ConfigFileError, match="line 5, relay.nope"):
        load_operator(bad, {})


def test_hash_key_reads_stdin_and_prints_sha256() -> None:
    out = io.StringIO()
    assert hash_key_main([], io.StringIO("sk-relay-alice\n"), out) == 0
    assert out.getvalue() == KEY_HASH + "\n"
    assert KEY_HASH == "sha256:" + __import__("hashlib").sha256(b"sk-relay-alice").hexdigest()
    assert hash_key_main([], io.StringIO("\n"), io.StringIO()) == 2
    assert hash_key_main(["sk-on-the-command-line"], io.StringIO(""), io.StringIO()) == 2


def test_readme_example_parses(tmp_path: Path) -> None:
    """The README's complete example stays valid as the format evolves."""
    readme = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")
    block = next(b for b in re.findall(r"```toml\n(.*?)```", readme, re.DOTALL) if "[operator]" in b)
    tokens = token_file(tmp_path, "tok-a\ntok-b\n")
    operator = parse_config(["--config", write(tmp_path, block.replace("/etc/qwen-relay/tokens", tokens))],
                            {}).operator
    assert operator.mode == "pool" and [key.name for key in operator.keys] == ["alice", "translator"]
    assert len(operator.tokens) == 2
