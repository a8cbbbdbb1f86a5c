"""``relay.upstream.redaction`` (a pure function) and ``recording`` (the recorder's bounds and failures).

The integration test (tests/integration/test_record_replay.py) checks a whole
recording for canaries; these pin each rule of ``redact_exchange`` on literals.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import shutil
import stat
from pathlib import Path

import pytest

from relay.emulator.replay import matches
from relay.upstream import recording
from relay.upstream.recording import Recorder
from relay.upstream.redaction import RawExchange, hash_id, redact_exchange, redact_path, redact_text

CHAT_ID = "0f8fad5b-d9cb-469f-a165-70867728950e"
JWT = "eyJhbGciOiJIUzI1NiJ9.eyJpZCI6IngifQ.c2lnbmF0dXJl"


def _raw(**fields: object) -> RawExchange:
    base: dict[str, object] = {"seq": 1, "origin": "https://user:pw@chat.example", "method": "POST",
                               "path": "/x", "request_headers": [], "request_body": None,
                               "started_at": 0.0, "started": 0.0}
    return RawExchange(**(base | fields))  # type: ignore[arg-type]


def test_header_secrets_keep_names_and_schemes_but_never_values() -> None:
    record = redact_exchange(_raw(request_headers=[
        ("Authorization", "Bearer tok-123456"), ("Cookie", "token=tok-123456; acw_tc=jar-value-1"),
        ("bx-ua", "231!ua-value"), ("bx-umidtoken", "umid-value"), ("bx-v", "2.5.31"),
    ], status=200, response_headers=[("Set-Cookie", "refresh_token=rt-secret; Path=/; HttpOnly; Max-Age=9")]))
    headers = dict(map(tuple, record["request"]["headers"]))
    assert headers["Authorization"].startswith("Bearer <redacted:") and "tok-123456" not in headers["Authorization"]
    assert headers["Cookie"].startswith("token=<redacted:") and "; acw_tc=<redacted:" in headers["Cookie"]
    assert headers["bx-ua"].startswith("<redacted:") and headers["bx-umidtoken"].startswith("<redacted:")
    assert headers["bx-v"] == "2.5.31"
    set_cookie = record["response"]["headers"][0][1]
    assert set_cookie.startswith("refresh_token=<redacted:") and set_cookie.endswith("; Path=/; HttpOnly; Max-Age=9")
    assert "rt-secret" not in json.dumps(record) and "pw@" not in record["origin"]


def test_json_secrets_are_replaced_at_any_depth_and_ids_hash_consistently() -> None:
    body = {"email": "a@b.example", "password": "digest", "chat_id": CHAT_ID,
            "messages": [{"fid": "f-1", "parentId": None, "childrenIds": ["c-1", "c-2"], "id": "m-1",
                          "content": f"mail x.y@z.example, key {JWT}"}],
            "data": {"access_token": JWT, "refresh_token": "opaque", "token": "t"}}
    record = redact_exchange(_raw(path=f"/api/v2/chat/completions?chat_id={CHAT_ID}",
                                  request_body=json.dumps(body).encode()))
    sent = record["request"]["body"]
    assert sent["email"] == "<redacted:email>" and sent["password"] == "<redacted>"
    assert sent["chat_id"] == hash_id(CHAT_ID) and record["request"]["path"].endswith("chat_id=" + hash_id(CHAT_ID))
    message = sent["messages"][0]
    assert message["fid"] == hash_id("f-1") and message["id"] == hash_id("m-1") and message["parentId"] is None
    assert message["childrenIds"] == [hash_id("c-1"), hash_id("c-2")]
    assert message["content"] == f"mail <redacted:email>, key {redact_text(JWT)}" and "eyJ" not in message["content"]
    assert all(value.startswith("<redacted:") for value in sent["data"].values())


def test_ids_of_a_model_list_are_kept_and_every_other_id_is_hashed() -> None:
    models = json.dumps({"data": [{"id": "qwen-max-latest", "info": {"id": "qwen-max-latest"}}]}).encode()
    kept = redact_exchange(_raw(method="GET", path="/api/models", status=200, chunks=[models]))
    assert json.loads(kept["response"]["text"])["data"][0]["id"] == "qwen-max-latest"
    other = redact_exchange(_raw(path="/api/v2/chats/new", status=200,
                                 chunks=[json.dumps({"data": {"id": CHAT_ID}}).encode()]))
    assert json.loads(other["response"]["text"])["data"]["id"] == hash_id(CHAT_ID)


def test_sse_bodies_are_redacted_event_by_event_and_base64_is_of_the_redacted_bytes() -> None:
    stream = (f'data: {{"response.created":{{"chat_id":"{CHAT_ID}","response_id":"r-9"}}}}\n\n'
              'data: {"choices":[{"delta":{"content":"write to q@r.example"}}]}\n\n'
              'data: not json q@r.example\n\n').encode()
    record = redact_exchange(_raw(status=200, chunks=[stream[:17], stream[17:]]))
    text = record["response"]["text"]
    assert base64.b64decode(record["response"]["body_base64"]).decode() == text
    assert hash_id(CHAT_ID) in text and hash_id("r-9") in text and CHAT_ID not in text
    assert "q@r.example" not in text and text.count("<redacted:email>") == 2


def test_paths_hash_id_segments_and_hashing_is_idempotent() -> None:
    assert redact_path(f"/api/v2/chats/{CHAT_ID}") == f"/api/v2/chats/{hash_id(CHAT_ID)}"
    assert redact_path(f"/api/v2/chats/{hash_id(CHAT_ID)}") == f"/api/v2/chats/{hash_id(CHAT_ID)}"
    assert redact_path("/api/v2/auths/refresh?token=abc&x=1") == "/api/v2/auths/refresh?token=<redacted:ba7816bf>&x=1"
    assert hash_id(hash_id("x")) == hash_id("x")


def test_undecodable_bodies_are_base64_without_text() -> None:
    record = redact_exchange(_raw(status=200, chunks=[b"\xff\xfe\x00binary"]))
    assert base64.b64decode(record["response"]["body_base64"]) == b"\xff\xfe\x00binary"
    assert "text" not in record["response"]


def test_replay_matches_hashed_segments_to_any_segment_and_nothing_else() -> None:
    recorded = f"/api/v2/chats/{hash_id(CHAT_ID)}"
    assert matches(recorded, f"/api/v2/chats/{CHAT_ID}") and matches(recorded, "/api/v2/chats/h:0123456789ab")
    assert not matches(recorded, "/api/v2/chats") and not matches(recorded, "/api/v2/other/x")
    assert matches("/api/v2/chats/new", "/api/v2/chats/new") and not matches("/api/v2/chats/new", "/api/v2/chats/old")


async def test_a_body_past_the_bound_is_truncated_and_never_complete(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(recording, "MAX_BODY_BYTES", 10)
    recorder = Recorder(str(tmp_path / "rec"))
    capture = recorder.open("http://o", "POST", "/x", [], None)
    capture._raw.status = 200  # type: ignore[union-attr]  # a head, without a socket
    for chunk in (b"abcdef", b"ghijkl", b"mnop"):
        capture.feed(chunk)
    capture.close(complete=True)
    capture.close(complete=True)  # idempotent: one file
    await recorder.close()
    [path] = (tmp_path / "rec").iterdir()
    record = json.loads(path.read_text())
    assert record["truncated"] is True and record["complete"] is False
    assert base64.b64decode(record["response"]["body_base64"]) == b"abcdefghij"
    assert path.name == "000001-POST-x.json" and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "rec").stat().st_mode) == 0o700
    assert Recorder(str(tmp_path / "rec")).open("http://o", "GET", "/", [], None)._raw.seq == 2  # type: ignore[union-attr]


async def test_a_failed_write_is_logged_once_and_never_raises(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    recorder = Recorder(str(tmp_path / "rec"))
    shutil.rmtree(tmp_path / "rec")
    with caplog.at_level(logging.WARNING, logger="relay.upstream"):
        for _ in range(3):
            recorder.open("http://o", "GET", "/x", [], None).close(complete=True)
        await recorder.close()
    assert [r.getMessage() for r in caplog.records].count("upstream_record_failed") == 1
    assert not os.path.exists(tmp_path / "rec")


def test_record_is_a_flag_and_an_env_var_and_needs_one_worker(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    from relay.cli import parse_config

    assert parse_config(["--record", str(tmp_path / "a")], {}).record_dir == str(tmp_path / "a")
    assert parse_config([], {"QWEN_RELAY_RECORD": str(tmp_path / "b")}).record_dir == str(tmp_path / "b")
    assert parse_config([], {}).record_dir is None
    (tmp_path / "file").write_text("")
    for argv in (["--record", str(tmp_path / "a"), "--workers", "2"], ["--record", str(tmp_path / "file")]):
        with pytest.raises(SystemExit):
            parse_config(argv, {})
        assert "--record" in capsys.readouterr().err
