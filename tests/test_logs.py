"""Structured logging (relay/logs.py): one JSON object per line, and ``redact``
as the last line of defence — a token never reaches the log, whatever a bug
puts into a message.
"""

from __future__ import annotations

import asyncio
import calendar
import contextlib
import io
import json
import logging
import time
from collections.abc import Iterator
from typing import Any

import pytest

from relay import logs as logs_module
from relay.logs import BatchingStreamHandler, DeferredLog, JsonFormatter, redact, request_id_var

# A Qwen Chat token is a JWT; the second canary has no JWT shape, so only the
# key-based patterns (Bearer, token=, api_key=) can catch it.
JWT_CANARY = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJpZCI6ImNhbmFyeS11c2VyIn0.c2lnbmF0dXJlLWNhbmFyeQ"
PLAIN_CANARY = "canary7f3e9a1c5b2d4e6f"
LEVELS = ["debug", "info", "warning", "error", "critical", "exception"]


@contextlib.contextmanager
def logger_into(name: str, handler: logging.Handler) -> Iterator[logging.Logger]:
    """The logger ``name`` at DEBUG, writing JSON lines through ``handler`` only, for the block."""
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger(name)
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    try:
        yield logger
    finally:
        logger.removeHandler(handler)


@pytest.fixture
def captured(request: pytest.FixtureRequest) -> Iterator[tuple[logging.Logger, io.StringIO]]:
    """A logger (under ``relay.``) whose lines go through JsonFormatter into a buffer."""
    stream = io.StringIO()
    with logger_into(f"relay.test.{request.node.name}", logging.StreamHandler(stream)) as logger:
        yield logger, stream


def lines_of(stream: io.StringIO) -> list[dict[str, Any]]:
    text = stream.getvalue()
    assert text.endswith("\n")
    return [json.loads(line) for line in text.splitlines()]


def log_at(logger: logging.Logger, level: str, msg: str, *args: object, **kwargs: Any) -> None:
    if level == "exception":
        try:
            raise RuntimeError(msg % args if args else msg)
        except RuntimeError:
            logger.exception(msg, *args, **kwargs)
    else:
        getattr(logger, level)(msg, *args, **kwargs)


def test_each_record_is_one_json_object_per_line(captured: tuple[logging.Logger, io.StringIO]) -> None:
    """Every record is exactly one line of JSON, even with newlines in the message
    or a multi-line traceback; ``fields`` are merged into the object."""
    logger, stream = captured
    logger.info("upstream_retry", extra={"fields": {"attempt": 2, "status": 502, "path": "/api/x"}})
    logger.warning("multi\nline\r\nmessage ✓")
    try:
        raise ValueError("boom\nsecond line")
    except ValueError:
        logger.exception("request_failed", extra={"fields": {"obj": object()}})
    entries = lines_of(stream)
    assert len(entries) == 3
    first = entries[0]
    assert first["event"] == "upstream_retry" and first["level"] == "info"
    assert first["logger"] == logger.name
    assert (first["attempt"], first["status"], first["path"]) == (2, 502, "/api/x")
    assert first["ts"].endswith("Z") and "T" in first["ts"]
    assert entries[1]["event"] == "multi\nline\r\nmessage ✓"
    assert "ValueError: boom" in entries[2]["exception"]
    assert entries[2]["level"] == "error"
    assert entries[2]["obj"].startswith("<object")


def test_request_id_is_added_when_set(captured: tuple[logging.Logger, io.StringIO]) -> None:
    """Lines logged inside a request carry its id; others do not."""
    logger, stream = captured
    logger.info("outside")
    token = request_id_var.set("req-123")
    try:
        logger.info("inside")
    finally:
        request_id_var.reset(token)
    outside, inside = lines_of(stream)
    assert "request_id" not in outside
    assert inside["request_id"] == "req-123"


@pytest.mark.parametrize(("text", "secret"), [
    ("Authorization: Bearer xyz123abc", "xyz123abc"),
    ("authorization: bearer   xyz123abc", "xyz123abc"),
    ("GET /api/models?token=s3cr3tvalue&x=1", "s3cr3tvalue"),
    ("token: s3cr3tvalue", "s3cr3tvalue"),
    ("api_key=s3cr3tvalue", "s3cr3tvalue"),
    ("x-api-key: s3cr3tvalue", "s3cr3tvalue"),
    ("{'token': 's3cr3tvalue'}", "s3cr3tvalue"),
    (f"cookie jwt {JWT_CANARY} end", JWT_CANARY),
    (f"jwt={JWT_CANARY}", JWT_CANARY),
])
def test_redact_masks_secrets(text: str, secret: str) -> None:
    """Bearer tokens, ``token=``/``api_key=`` values and JWTs become ``***``."""
    masked = redact(text)
    assert secret not in masked
    assert "***" in masked


def test_redact_keeps_ordinary_text() -> None:
    """Text without secrets is unchanged."""
    text = "upstream_retry attempt=2 status=502 tokens_out=15 eyJ-not-a-jwt"
    assert redact(text) == text


@pytest.mark.parametrize("level", LEVELS)
def test_canary_token_never_appears_at_any_level(level: str, captured: tuple[logging.Logger, io.StringIO]) -> None:
    """Logged through every level, in the message, in %-args, in fields and in
    the exception text, neither canary token reaches the output."""
    logger, stream = captured
    for canary in (JWT_CANARY, PLAIN_CANARY):
        log_at(logger, level, f"auth header Authorization: Bearer {canary}")
        log_at(logger, level, "request to %s", f"https://chat.qwenlm.ai/api/models?token={canary}")
        log_at(logger, level, "headers %r", {"Authorization": f"Bearer {canary}"})
        log_at(logger, level, "event", extra={"fields": {"token": canary, "auth": f"Bearer {canary}"}})
    log_at(logger, level, f"bare jwt {JWT_CANARY}")
    log_at(logger, level, "fields", extra={"fields": {"upstream_token": JWT_CANARY}})
    output = stream.getvalue()
    assert output.count("\n") == 10
    assert JWT_CANARY not in output
    assert PLAIN_CANARY not in output


def test_quoted_token_in_message_is_masked(captured: tuple[logging.Logger, io.StringIO]) -> None:
    """A token in double quotes — ``token="…"`` or a JSON body dumped into a
    message — is masked too. redact runs on the JSON line, where those quotes
    have become ``\\"``, so the patterns must still match there."""
    logger, stream = captured
    for level in LEVELS:
        log_at(logger, level, f'sending token="{PLAIN_CANARY}"')
        log_at(logger, level, "upstream body %s", json.dumps({"token": PLAIN_CANARY}))
        log_at(logger, level, "upstream body %s", json.dumps({"api_key": PLAIN_CANARY}))
    assert PLAIN_CANARY not in stream.getvalue()


@pytest.mark.parametrize("text", [
    f"Authorization: Bearer\t{PLAIN_CANARY}",
    f"Authorization: Bearer\n{PLAIN_CANARY}",
    f"token:\t{PLAIN_CANARY}",
    f"api_key =\r\n{PLAIN_CANARY}",
], ids=["bearer_tab", "bearer_newline", "token_tab", "api_key_crlf"])
def test_formatter_masks_whatever_redact_masks(text: str, captured: tuple[logging.Logger, io.StringIO]) -> None:
    """redact(text) masks these (``\\s`` matches a tab or newline), so logging
    them must mask them too — but in the rendered JSON line that whitespace has
    become ``\\t``/``\\n``, which the patterns must also accept."""
    assert PLAIN_CANARY not in redact(text)
    logger, stream = captured
    logger.warning(text)
    assert PLAIN_CANARY not in stream.getvalue()


def busy_wait(seconds: float) -> None:
    """Hold the event loop, as a burst of requests would."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


async def test_deferred_lines_are_handled_at_the_end_of_the_iteration(
        captured: tuple[logging.Logger, io.StringIO]) -> None:
    """Lines added during requests are written, in order, once the loop gets back
    to its callbacks: each with the time it was added and its own request id, not
    the id of whichever request's context the batch might have run in."""
    logger, stream = captured
    deferred = DeferredLog(logger, "request")
    token = request_id_var.set("adding-request")
    try:
        deferred.add({"request_id": "one", "status": 200})
        added_s = time.time()
        busy_wait(0.05)
        deferred.add({"request_id": "two", "status": 404})
    finally:
        request_id_var.reset(token)
    assert stream.getvalue() == ""
    await asyncio.sleep(0)
    first, second = lines_of(stream)
    assert [(e["request_id"], e["status"], e["event"]) for e in (first, second)] == [
        ("one", 200, "request"), ("two", 404, "request")]
    assert list(first)[:5] == ["ts", "level", "logger", "event", "request_id"]
    written_s = calendar.timegm(time.strptime(first["ts"][:19], "%Y-%m-%dT%H:%M:%S")) + int(first["ts"][20:23]) / 1000
    assert abs(written_s - added_s) < 0.02
    assert first["ts"] < second["ts"]


def test_deferred_lines_of_a_stopped_loop_are_written_by_the_next(
        captured: tuple[logging.Logger, io.StringIO]) -> None:
    """A loop that stopped before its callback ran (a test's loop) leaves no line behind."""
    logger, stream = captured
    deferred = DeferredLog(logger, "request")
    first = asyncio.new_event_loop()

    def add_then_stop() -> None:
        deferred.add({"request_id": "first"})
        first.stop()  # this iteration ends the loop: the flush it scheduled never runs

    first.call_soon(add_then_stop)
    first.run_forever()
    first.close()
    assert stream.getvalue() == ""

    async def add_second() -> None:
        deferred.add({"request_id": "second"})

    asyncio.run(add_second())
    assert [entry["request_id"] for entry in lines_of(stream)] == ["first", "second"]


class CountingStream(io.StringIO):
    """A stream that counts its writes."""

    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, text: str) -> int:
        self.writes += 1
        return super().write(text)


@pytest.fixture
def batching(request: pytest.FixtureRequest) -> Iterator[tuple[logging.Logger, CountingStream]]:
    """A logger whose lines go through a BatchingStreamHandler into a counting buffer."""
    stream = CountingStream()
    name = f"relay.test.{request.node.name}"
    with logger_into(name, BatchingStreamHandler(stream, batched_logger=name)) as logger:
        yield logger, stream


async def test_batching_handler_writes_an_iterations_lines_at_once(
        batching: tuple[logging.Logger, CountingStream]) -> None:
    """INFO lines wait for the end of the loop iteration, then go out in one write
    (the first line on a new loop is written at once: an older loop may never
    have run its callback)."""
    logger, stream = batching
    logger.info("first")
    assert [e["event"] for e in lines_of(stream)] == ["first"]
    before = stream.writes
    for n in range(3):
        logger.info("line", extra={"fields": {"n": n}})
    assert stream.writes == before
    await asyncio.sleep(0)
    assert stream.writes == before + 1
    assert [e.get("n") for e in lines_of(stream)] == [None, 0, 1, 2]


async def test_batching_handler_writes_warnings_at_once(batching: tuple[logging.Logger, CountingStream]) -> None:
    """A warning or error is written as soon as it is logged, after the lines before it."""
    logger, stream = batching
    logger.info("first")
    logger.info("pending")
    logger.error("failed")
    assert [e["event"] for e in lines_of(stream)] == ["first", "pending", "failed"]


async def test_batching_handler_writes_other_loggers_lines_at_once(
        batching: tuple[logging.Logger, CountingStream]) -> None:
    """Only the batched logger waits: a lifecycle line (``listening``) is written
    at once, after the access lines pending before it, because a worker signals
    its supervisor right after logging it."""
    logger, stream = batching
    logger.info("first")
    logger.info("access")
    lifecycle = logging.getLogger(logger.name + ".lifecycle")  # another name, same handler (propagation)
    lifecycle.info("listening")
    assert [e["event"] for e in lines_of(stream)] == ["first", "access", "listening"]


def test_batching_handler_without_a_loop_writes_each_line(batching: tuple[logging.Logger, CountingStream]) -> None:
    logger, stream = batching
    logger.info("one")
    logger.debug("two")
    assert [e["event"] for e in lines_of(stream)] == ["one", "two"]
    assert stream.writes == 2


async def test_deferred_lines_skip_the_record_path_and_write_the_same_json(request: pytest.FixtureRequest) -> None:
    """Under the relay's own handler the access lines are rendered without LogRecords;
    they must read exactly as the record path writes them: masked, non-ASCII, odd text."""
    fields = {"request_id": "one", "status": 200, "model": "通义 é", "note": f"Bearer {PLAIN_CANARY}",
              "odd": "\ud800", "stream": False, "error_code": None}
    fast_stream, slow_stream = io.StringIO(), io.StringIO()
    fast_name, slow_name = f"relay.test.{request.node.name}.fast", f"relay.test.{request.node.name}.slow"
    with logger_into(fast_name, BatchingStreamHandler(fast_stream, batched_logger=fast_name)) as fast_logger:
        assert logs_module._plain_json_handler(fast_logger) is not None  # the path under test is taken
        DeferredLog(fast_logger, "request").add(dict(fields))
        await asyncio.sleep(0)
    with logger_into(slow_name, logging.StreamHandler(slow_stream)) as slow_logger:
        assert logs_module._plain_json_handler(slow_logger) is None
        DeferredLog(slow_logger, "request").add(dict(fields))
        await asyncio.sleep(0)
    fast, = lines_of(fast_stream)
    slow, = lines_of(slow_stream)
    assert PLAIN_CANARY not in fast_stream.getvalue()
    assert list(fast) == list(slow)  # same fields, same order
    for entry in (fast, slow):
        del entry["ts"], entry["logger"]
    assert fast == slow
    assert fast["model"] == "通义 é" and fast["odd"] == "\ud800"
