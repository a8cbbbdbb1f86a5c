"""GET /metrics of a real relay (issue 21 §1): what a request leaves there, one process or ``--workers 2``.

The one-process tests run the app in the test's loop; the ``--workers`` ones run
``python -m relay --workers 2`` and tell its workers apart by the access log's
``pid``, matched to each scrape by its ``X-Request-Id``. Every wait is a poll
with a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import AsyncIterator

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from relay.operator import hash_key
from relay.operator.config import KeySpec, OperatorConfig, Secret
from tests.conftest import MODEL, RelayFactory, auth, chat_body, directive
from tests.integration.accounts_support import WAIT_S, Relay, poll, start_relay

CHAT = "/v1/chat/completions"
KEY = "sk-metrics-alice-0123456789"
POOL_TOKEN = "pool-token-metrics-0123456789"


def scrape_values(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {(sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def value(text: str, name: str, **labels: str) -> float | None:
    return scrape_values(text).get((name, frozenset(labels.items())))


async def scrape(session: aiohttp.ClientSession, url: str, request_id: str | None = None) -> str:
    headers = {"X-Request-Id": request_id} if request_id else {}
    async with session.get(url + "/metrics", headers=headers) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        return await response.text()


async def test_an_open_stream_shows_then_its_time_to_first_byte_and_duration(relay_factory: RelayFactory) -> None:
    """``qwen_relay_streams_open`` is 1 while a stream is sent; then its TTFB (the head) is before its end."""
    url = await relay_factory()
    body = chat_body(stream=True, text=directive(reply="one two three four", chunks=4, delay_ms=300))
    async with aiohttp.ClientSession() as session:
        async with session.post(url + CHAT, json=body, headers=auth()) as stream:
            assert stream.status == 200
            await stream.content.readany()  # the head and the first event are here: the stream is open
            assert value(await scrape(session, url), "qwen_relay_streams_open") == 1
            await stream.read()
        text = await scrape(session, url)
    assert value(text, "qwen_relay_streams_open") == 0
    first_byte_s = value(text, "qwen_relay_time_to_first_byte_seconds_sum", route=CHAT)
    duration_s = value(text, "qwen_relay_request_duration_seconds_sum", route=CHAT)
    assert first_byte_s is not None and duration_s is not None
    # The head went out with the first event; three more 300 ms waits came after it (load only adds).
    assert duration_s - first_byte_s >= 0.85, (first_byte_s, duration_s)
    assert value(text, "qwen_relay_request_duration_seconds_count", route=CHAT) == 1


async def test_errors_are_counted_by_route_and_code(relay_factory: RelayFactory) -> None:
    url = await relay_factory()
    async with aiohttp.ClientSession() as session:
        async with session.get(url + "/no/such/path") as response:
            assert response.status == 404
        async with session.post(url + CHAT, json=chat_body(), headers={"Authorization": "Basic x"}) as response:
            assert response.status == 401
        async with session.post(url + CHAT, json=chat_body(text=directive(fault="http_500", fail_times=9,
                                                                          key="metrics-502")),
                                headers=auth()) as response:
            assert response.status == 502
            code = (await response.json())["error"]["code"]
        text = await scrape(session, url)
    assert value(text, "qwen_relay_errors_total", route="unmatched", code="not_found") == 1
    assert value(text, "qwen_relay_errors_total", route=CHAT, code="invalid_api_key") == 1
    assert value(text, "qwen_relay_errors_total", route=CHAT, code=code) == 1
    assert value(text, "qwen_relay_requests_total", method="POST", route=CHAT, status="502") == 1


async def test_tokens_are_counted_per_relay_key_name_and_no_key_or_token_is_exported(
        relay_factory: RelayFactory) -> None:
    operator = OperatorConfig(mode="pool", keys=(KeySpec("alice", bytes.fromhex(hash_key(KEY)[7:])),),
                              tokens=(Secret(POOL_TOKEN),))
    url = await relay_factory(operator=operator)
    async with aiohttp.ClientSession() as session:
        for stream in (False, True):
            body = chat_body(stream=stream, text=directive(reply="five words of an answer"),
                             stream_options={"include_usage": True} if stream else None)
            if not stream:
                del body["stream_options"]
            async with session.post(url + CHAT, json=body, headers=auth(KEY)) as response:
                assert response.status == 200
                await response.read()
        text = await scrape(session, url)
    assert value(text, "qwen_relay_key_requests_total", key="alice") == 2
    prompt = value(text, "qwen_relay_key_prompt_tokens_total", key="alice")
    completion = value(text, "qwen_relay_key_completion_tokens_total", key="alice")
    assert prompt is not None and prompt > 0 and completion is not None and completion > 0, (prompt, completion)
    assert KEY not in text and POOL_TOKEN not in text and MODEL not in text


# -- --workers 2 ---------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def two_workers(*args: str) -> AsyncIterator[Relay]:
    relay = await start_relay("--workers", "2", "--upstream", "emulator", *args)
    try:
        await poll(lambda: len(relay.events("listening")) == 2, "both workers listen")
        yield relay
    finally:
        await relay.close()


def answered_by(relay: Relay, request_id: str) -> int | None:
    """The worker pid whose access line has ``request_id``; None until that line is read."""
    for entry in relay.log:
        if entry.get("logger") == "relay.access" and entry.get("request_id") == request_id:
            return int(entry["pid"])
    return None


async def worker_of_scrape(session: aiohttp.ClientSession, relay: Relay, request_id: str) -> tuple[int, str]:
    """Scrape on a new connection; the pid that answered, and the text."""
    text = await scrape(session, relay.url, request_id)
    await poll(lambda: answered_by(relay, request_id) is not None, f"the access line of {request_id}")
    pid = answered_by(relay, request_id)
    assert pid is not None
    return pid, text


def chat_count(text: str) -> float | None:
    return value(text, "qwen_relay_requests_total", method="POST", route=CHAT, status="200")


async def send_spread(session: aiohttp.ClientSession, relay: Relay, rounds: int, per_round: int) -> None:
    """``rounds`` x ``per_round`` chat completions, each round at once on new connections (both workers take some)."""
    async def one() -> int:
        body = chat_body(text=directive(reply="spread", delay_ms=20))
        async with session.post(relay.url + CHAT, json=body, headers=auth()) as response:
            await response.read()
            return response.status

    for _ in range(rounds):
        assert await asyncio.gather(*(one() for _ in range(per_round))) == [200] * per_round


def chat_pids(relay: Relay) -> set[int]:
    return {int(entry["pid"]) for entry in relay.log if entry.get("logger") == "relay.access"
            and entry.get("path") == CHAT}


async def test_under_two_workers_the_request_counter_equals_the_requests_sent_whichever_worker_answers() -> None:
    """40 requests served by two workers; every scrape, by either worker, then says 40: never a part."""
    sent = 40
    connector = aiohttp.TCPConnector(force_close=True)  # a new connection each time: the kernel picks a worker
    async with two_workers() as relay, aiohttp.ClientSession(connector=connector) as session:
        await send_spread(session, relay, rounds=5, per_round=8)
        await poll(lambda: len([e for e in relay.log if e.get("path") == CHAT]) == sent, "the access lines")
        assert len(chat_pids(relay)) == 2, chat_pids(relay)  # both served some

        async def all_counted() -> bool:
            return chat_count(await scrape(session, relay.url)) == sent

        await poll(all_counted, f"/metrics counts {sent} chat completions")  # each worker published
        answering: set[int] = set()
        for number in range(40):  # bounded: each scrape lands on either worker at random
            pid, text = await worker_of_scrape(session, relay, f"scrape-{number}")
            answering.add(pid)
            assert chat_count(text) == sent, (pid, number)
            if len(answering) == 2:
                break
        assert answering == chat_pids(relay), "both workers answered a scrape"


async def test_a_killed_workers_counts_stay_and_its_gauges_go() -> None:
    """SIGKILL a worker: the sum of requests does not drop; the capacity gauge counts its replacement, not it."""
    sent = 16
    connector = aiohttp.TCPConnector(force_close=True)
    async with two_workers("--max-concurrency", "7") as relay, aiohttp.ClientSession(connector=connector) as session:
        await send_spread(session, relay, rounds=2, per_round=8)

        async def all_counted() -> bool:
            text = await scrape(session, relay.url)
            return chat_count(text) == sent and value(text, "qwen_relay_max_concurrency") == 14

        await poll(all_counted, f"/metrics counts {sent} completions and two workers' capacity")
        victim = int(relay.events("worker_started")[0]["worker_pid"])
        os.kill(victim, signal.SIGKILL)
        await poll(lambda: len(relay.events("listening")) == 3, "a replacement worker listens")
        replacement = int(relay.events("worker_started")[-1]["worker_pid"])
        assert replacement != victim
        for number in range(60):  # until the replacement answers: it published its own numbers first
            pid, text = await worker_of_scrape(session, relay, f"after-kill-{number}")
            assert chat_count(text) == sent  # the victim's counts are still in the sum
            if pid == replacement:
                assert value(text, "qwen_relay_max_concurrency") == 14  # not 21: the victim's gauges are gone
                break
        else:
            raise AssertionError(f"the replacement never answered a scrape within {WAIT_S} polls")
