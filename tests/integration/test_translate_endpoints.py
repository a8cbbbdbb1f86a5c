"""The translation endpoints as the plugins call them (issue "Translation plugins first" §2).

Replays of what pot / Bob (DeepLX), Immersive Translate's custom API and Kiss
Translator's custom API send, against the relay (qwen-v2) in front of the strict
emulator, which answers a keyed translation prompt with ``"[<TAG>] " + text`` per
key, or badly on purpose (``translate_fault``). The invariant: exactly as many
translations as texts, each the translation of its own text, or a clean error.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import aiohttp
import pytest

from relay.emulator import RunningEmulator
from relay.emulator.directive import TRANSLATE_FAULTS
from relay.jsonio import dumps
from relay.logs import JsonFormatter
from relay.operator.config import KeySpec, OperatorConfig, Secret, hash_key
from tests.conftest import TOKEN, RelayFactory, auth, directive
from tests.integration.web2026 import COMPLETIONS, calls, metric, metrics_text

IMMERSIVE_ORIGIN = "chrome-extension://bpoadfkcbjbfhfodiogcnhhhpibjhbnh"
KEY = "sk-translate-0123456789"


async def post(session: aiohttp.ClientSession, url: str, body: Any,
               headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], Any]:
    async with session.post(url, data=json.dumps(body), headers={"Content-Type": "application/json",
                                                                 **(headers or {})}) as response:
        return response.status, dict(response.headers), json.loads(await response.text())


def prompts(emulator: RunningEmulator) -> list[dict[str, str]]:
    """The keyed objects of every completion the emulator got, in order."""
    found = []
    for record in calls(emulator, "POST", COMPLETIONS):
        content = record.user_message or ""
        found.append(json.loads(content[content.rindex('{\n "1"'):]))
    return found


def gears(emulator: RunningEmulator) -> set[str]:
    return {record.feature_config["thinking_mode"]  # type: ignore[index]
            for record in calls(emulator, "POST", COMPLETIONS)}


# --- the three surfaces, as the plugins send -------------------------------------------------------------

async def test_pot_deeplx_plugin_with_the_token_in_the_url(relay_factory: RelayFactory,
                                                            emulator: RunningEmulator) -> None:
    """pot's DeepLX plugin sends no auth header: the Qwen token rides in ``?token=``."""
    relay = await relay_factory(dialect="qwen-v2")
    async with aiohttp.ClientSession() as session:
        status, _, body = await post(session, f"{relay}/translate?token={TOKEN}",
                                     {"text": "Hello <b>world</b>", "source_lang": "auto", "target_lang": "ZH"})
    assert status == 200, body
    assert body["code"] == 200 and isinstance(body["id"], int)
    assert body["data"] == "[ZH-HANS] Hello <b>world</b>"
    assert (body["alternatives"], body["source_lang"], body["target_lang"], body["method"]) == (
        [], "AUTO", "ZH", "qwen-relay")
    assert gears(emulator) == {"Fast"}
    assert calls(emulator, "POST", COMPLETIONS)[-1].model == "qwen-max-latest"  # first listed, can skip thinking


async def test_bob_deeplx_with_bearer_and_a_list_of_texts(relay_factory: RelayFactory,
                                                          emulator: RunningEmulator) -> None:
    relay = await relay_factory(dialect="qwen-v2")
    texts = ["First paragraph.", "Second, with {placeholder} and %s.", "Line one\nLine two\n"]
    async with aiohttp.ClientSession() as session:
        status, _, body = await post(session, f"{relay}/translate",
                                     {"text": texts, "source_lang": "EN", "target_lang": "DE"}, auth())
    assert status == 200, body
    assert body["data"] == [f"[DE] {texts[0]}", f"[DE] {texts[1]}", "[DE] Line one\nLine two\n"]
    assert body["source_lang"] == "EN"
    assert prompts(emulator) == [{"1": texts[0], "2": texts[1], "3": texts[2]}]  # one upstream call


async def test_deeplx_errors_are_code_and_message_with_the_http_status(relay_factory: RelayFactory) -> None:
    relay = await relay_factory(dialect="qwen-v2")
    async with aiohttp.ClientSession() as session:
        no_auth = await post(session, f"{relay}/translate", {"text": "x", "target_lang": "FR"})
        bad_lang = await post(session, f"{relay}/translate", {"text": "x", "target_lang": "Klingon"}, auth())
        no_text = await post(session, f"{relay}/translate", {"target_lang": "FR"}, auth())
    assert no_auth[0] == 401 and no_auth[2]["code"] == 401 and "token" in no_auth[2]["message"].lower()
    assert bad_lang[0] == 400 and bad_lang[2] == {"code": 400, "message": bad_lang[2]["message"]}
    assert "Klingon" in bad_lang[2]["message"]
    assert no_text[0] == 400 and no_text[2]["code"] == 400


async def test_immersive_custom_api_from_the_extension(relay_factory: RelayFactory) -> None:
    """Immersive's custom API: ``?token=``, ``text_list``, an extension Origin; CORS answered."""
    relay = await relay_factory(dialect="qwen-v2")
    body = {"source_lang": "auto", "target_lang": "zh-CN",
            "text_list": ["<p>Paragraph A</p>", "Paragraph B", "", "Paragraph C"]}
    async with aiohttp.ClientSession() as session:
        async with session.options(f"{relay}/imme?token={TOKEN}", headers={
                "Origin": IMMERSIVE_ORIGIN, "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "content-type"}) as preflight:
            assert preflight.status == 204
        status, headers, answer = await post(session, f"{relay}/imme?token={TOKEN}", body,
                                             {"Origin": IMMERSIVE_ORIGIN})
    assert status == 200, answer
    assert answer == {"translations": [
        {"detected_source_lang": "auto", "text": "[ZH-HANS] <p>Paragraph A</p>"},
        {"detected_source_lang": "auto", "text": "[ZH-HANS] Paragraph B"},
        {"detected_source_lang": "auto", "text": ""},
        {"detected_source_lang": "auto", "text": "[ZH-HANS] Paragraph C"}]}
    assert headers["Access-Control-Allow-Origin"] == "*"


async def test_kiss_custom_api_single_and_batch(relay_factory: RelayFactory) -> None:
    relay = await relay_factory(dialect="qwen-v2")
    async with aiohttp.ClientSession() as session:
        single = await post(session, f"{relay}/kiss", {"text": "hello", "from": "en", "to": "zh-CN"}, auth())
        batch = await post(session, f"{relay}/kiss", {"texts": ["hello", "world"], "from": "auto", "to": "ja"},
                           auth())
        empty_key = await post(session, f"{relay}/kiss", {"text": "hello", "from": "en", "to": "ja"},
                               {"Authorization": "Bearer "})
    assert single[0] == 200 and single[2] == {"text": "[ZH-HANS] hello", "src": "en"}
    assert batch[0] == 200 and batch[2] == {"translations": [{"text": "[JA] hello", "src": "auto"},
                                                              {"text": "[JA] world", "src": "auto"}]}
    assert empty_key[0] == 401 and empty_key[2]["error"]["code"] == "invalid_api_key"


# --- alignment against a model that misbehaves ------------------------------------------------------------

@pytest.mark.parametrize("fault", TRANSLATE_FAULTS)
async def test_every_bad_answer_still_gives_each_text_its_own_translation(
        relay_factory: RelayFactory, emulator: RunningEmulator, fault: str) -> None:
    relay = await relay_factory(dialect="qwen-v2")
    texts = ["Alpha", "Beta\n" + directive(translate_fault=fault), "Gamma", "Delta", "Epsilon"]
    async with aiohttp.ClientSession() as session:
        status, _, body = await post(session, f"{relay}/imme?token={TOKEN}",
                                     {"source_lang": "en", "target_lang": "fr", "text_list": texts})
    assert status == 200, body
    assert [item["text"] for item in body["translations"]] == ["[FR] Alpha", "[FR] Beta", "[FR] Gamma",
                                                               "[FR] Delta", "[FR] Epsilon"]
    asked = prompts(emulator)
    assert len(asked) <= 1 + len(texts)
    assert all(len(items) == 1 for items in asked[1:])  # whatever was asked again went alone


async def test_a_text_the_model_never_answers_is_a_clean_502(relay_factory: RelayFactory) -> None:
    relay = await relay_factory(dialect="qwen-v2")
    texts = ["Alpha", "Beta\n" + directive(translate_fault="prose", translate_fault_all=True)]
    async with aiohttp.ClientSession() as session:
        imme = await post(session, f"{relay}/imme?token={TOKEN}", {"target_lang": "fr", "text_list": texts})
        deeplx = await post(session, f"{relay}/translate", {"text": texts, "target_lang": "FR"}, auth())
    assert imme[0] == 502 and imme[2]["error"]["code"] == "translation_misaligned"
    assert deeplx[0] == 502 and deeplx[2]["code"] == 502 and "translation" in deeplx[2]["message"]


async def test_an_upstream_failure_fails_the_request(relay_factory: RelayFactory) -> None:
    relay = await relay_factory(dialect="qwen-v2", retries=1)
    async with aiohttp.ClientSession() as session:
        status, _, body = await post(session, f"{relay}/kiss",
                                     {"texts": ["a", "b\n" + directive(fault="http_500")], "to": "fr"}, auth())
    assert status == 502 and body["error"]["type"] == "upstream_error"


# --- batching ---------------------------------------------------------------------------------------------

async def test_long_requests_are_split_by_items_and_by_bytes(relay_factory: RelayFactory,
                                                              emulator: RunningEmulator) -> None:
    relay = await relay_factory(dialect="qwen-v2", translate_batch_items=2)
    texts = [f"Sentence {index}." for index in range(5)]
    async with aiohttp.ClientSession() as session:
        status, _, body = await post(session, f"{relay}/kiss", {"texts": texts, "to": "fr"}, auth())
    assert status == 200
    assert [item["text"] for item in body["translations"]] == [f"[FR] {text}" for text in texts]
    assert [list(items.values()) for items in prompts(emulator)] == [texts[0:2], texts[2:4], texts[4:5]]


async def test_batches_stay_under_the_upstream_body_limit(relay_factory: RelayFactory,
                                                          emulator: RunningEmulator) -> None:
    relay = await relay_factory(dialect="qwen-v2", max_upstream_body_bytes=8000)
    texts = [f"{index} " + "lorem ipsum " * 200 for index in range(6)]  # ~2.4 KB each
    async with aiohttp.ClientSession() as session:
        status, _, body = await post(session, f"{relay}/translate", {"text": texts, "target_lang": "IT"}, auth())
        too_big = await post(session, f"{relay}/translate", {"text": ["x" * 9000], "target_lang": "IT"}, auth())
    assert status == 200, body
    assert body["data"] == [f"[IT] {text.strip()} " for text in texts]
    assert len(prompts(emulator)) > 1
    assert all(len(dumps(record.body)) <= 8000 for record in calls(emulator, "POST", COMPLETIONS))
    assert too_big[0] == 400 and "max-upstream-body-bytes" in too_big[2]["message"]


# --- the one admission path: model, keys, gate, deadline, metrics, log ------------------------------------

async def test_the_translate_model_flag_picks_the_model(relay_factory: RelayFactory,
                                                        emulator: RunningEmulator) -> None:
    relay = await relay_factory(dialect="qwen-v2", translate_model="qwen-turbo-latest")
    async with aiohttp.ClientSession() as session:
        status, _, _ = await post(session, f"{relay}/kiss", {"text": "hi", "to": "fr"}, auth())
    assert status == 200
    assert calls(emulator, "POST", COMPLETIONS)[-1].model == "qwen-turbo-latest"
    assert gears(emulator) == {"Fast"}


async def test_relay_keys_limit_translations_as_they_limit_chat(relay_factory: RelayFactory,
                                                                emulator: RunningEmulator) -> None:
    digest = bytes.fromhex(hash_key(KEY)[7:])
    operator = OperatorConfig(mode="pool", keys=(KeySpec(name="t", digest=digest, models=frozenset({"qwen3-max"})),),
                              tokens=(Secret("pool-token-1"),))
    relay = await relay_factory(dialect="qwen-v2", operator=operator)
    async with aiohttp.ClientSession() as session:
        refused = await post(session, f"{relay}/imme?token={KEY}", {"target_lang": "fr", "text_list": ["a"]})
        stranger = await post(session, f"{relay}/imme?token=not-a-key", {"target_lang": "fr", "text_list": ["a"]})
    assert refused[0] == 403 and refused[2]["error"]["code"] == "model_not_allowed"
    assert stranger[0] == 401
    assert not calls(emulator, "POST", COMPLETIONS)


async def test_a_full_relay_answers_429_with_retry_after(relay_factory: RelayFactory,
                                                         emulator: RunningEmulator) -> None:
    relay = await relay_factory(dialect="qwen-v2", max_concurrency=1)
    slow = {"text": ["slow\n" + directive(ttfb_ms=600)], "target_lang": "FR"}
    async with aiohttp.ClientSession() as session:
        first = asyncio.create_task(post(session, f"{relay}/translate", slow, auth()))
        async with asyncio.timeout(10):  # its completion reached the upstream: it holds the one slot
            await emulator.state.wait_until(lambda: bool(calls(emulator, "POST", COMPLETIONS)))
        status, headers, body = await post(session, f"{relay}/translate", {"text": "x", "target_lang": "FR"},
                                           auth())
        assert (await first)[0] == 200
        text = await metrics_text(session, relay)
    assert status == 429 and body["code"] == 429 and "Retry-After" in headers
    assert metric(text, "qwen_relay_in_flight") == 0


async def test_the_nonstream_deadline_bounds_a_translation(relay_factory: RelayFactory) -> None:
    relay = await relay_factory(dialect="qwen-v2", nonstream_deadline_s=0.3)
    async with aiohttp.ClientSession() as session:
        status, _, body = await post(session, f"{relay}/kiss",
                                     {"text": "late\n" + directive(ttfb_ms=3000), "to": "fr"}, auth())
    assert status == 504 and body["error"]["code"] == "nonstream_deadline"


async def test_metrics_and_the_access_log_count_translations(relay_factory: RelayFactory,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="relay")
    caplog.handler.setFormatter(JsonFormatter())
    relay = await relay_factory(dialect="qwen-v2")
    texts = ["One", "Two\n" + directive(translate_fault="drop_key"), "Three"]
    async with aiohttp.ClientSession() as session:
        status, _, _ = await post(session, f"{relay}/imme?token={TOKEN}", {"target_lang": "fr", "text_list": texts})
        text = await metrics_text(session, relay)
    assert status == 200
    assert metric(text, "qwen_relay_translated_texts_total") == 3
    assert metric(text, "qwen_relay_translation_upstream_calls_total") == 4  # the batch, then 1, 2, 3 alone
    assert metric(text, "qwen_relay_translation_reasked_total") == 3
    assert metric(text, 'qwen_relay_requests_total{method="POST",route="/imme",status="200"}') == 1
    lines = [json.loads(line) for line in caplog.text.splitlines() if '"path": "/imme"' in line
             or '"path":"/imme"' in line]
    assert lines and lines[-1]["status"] == 200 and lines[-1]["model"] == "qwen-max-latest"
    assert TOKEN not in caplog.text


@pytest.mark.parametrize("dialect", ["qwen-v1", "qwen-phase"])
async def test_older_dialects_translate_alike(relay_factory: RelayFactory, dialect: str) -> None:
    relay = await relay_factory(dialect=dialect)
    texts = ["One", "Two\n" + directive(translate_fault="merge_keys"), "Three"]
    async with aiohttp.ClientSession() as session:
        status, _, body = await post(session, f"{relay}/kiss", {"texts": texts, "from": "en", "to": "fr"}, auth())
    assert status == 200, body
    assert [item["text"] for item in body["translations"]] == ["[FR] One", "[FR] Two", "[FR] Three"]
