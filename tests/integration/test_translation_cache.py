"""The translation cache on real sockets (issue "Translation plugins first" §3).

What went upstream is read from the emulator's request log: every completion's
keyed object is the list of texts that call carried. A cached item never shows
up there again; a partly cached request shows only its other items.
"""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import aiohttp
import pytest

from relay.cli import load_operator, parse_config
from relay.emulator import RunningEmulator
from relay.operator.config import KeySpec, OperatorConfig, Secret, hash_key
from relay.translate.cache import MIB
from tests.conftest import TOKEN, RelayFactory, directive
from tests.integration.test_scale_out import RedisServer, redis_server  # noqa: F401  (the fixture)
from tests.integration.test_translate_endpoints import post, prompts
from tests.integration.web2026 import COMPLETIONS, calls, metric, metrics_text

KEY = "sk-no-cache-0123456789"


async def imme(session: aiohttp.ClientSession, relay: str, texts: list[str], token: str = TOKEN) -> list[str]:
    status, _, body = await post(session, f"{relay}/imme?token={token}", {"target_lang": "fr", "text_list": texts})
    assert status == 200, body
    return [item["text"] for item in body["translations"]]


def upstream_texts(emulator: RunningEmulator) -> list[list[str]]:
    return [list(items.values()) for items in prompts(emulator)]


async def test_a_second_identical_request_makes_no_upstream_call(relay_factory: RelayFactory,
                                                                 emulator: RunningEmulator) -> None:
    relay = await relay_factory(dialect="qwen-v2")
    texts = ["<p>Hello</p>", "World", ""]
    async with aiohttp.ClientSession() as session:
        first = await imme(session, relay, texts)
        second = await imme(session, relay, texts)
        text = await metrics_text(session, relay)
    assert first == second == ["[FR] <p>Hello</p>", "[FR] World", ""]
    assert upstream_texts(emulator) == [["<p>Hello</p>", "World"]]
    assert metric(text, "qwen_relay_translation_cache_hits_total") == 2
    assert metric(text, "qwen_relay_translation_cache_misses_total") == 2
    assert metric(text, "qwen_relay_translation_cache_items") == 2
    assert metric(text, "qwen_relay_translation_cache_bytes") == 2 * 32 + len("[FR] <p>Hello</p>[FR] World")
    assert metric(text, "qwen_relay_translation_cache_evictions_total") == 0


async def test_a_request_half_cached_sends_only_the_other_half(relay_factory: RelayFactory,
                                                               emulator: RunningEmulator) -> None:
    relay = await relay_factory(dialect="qwen-v2")
    texts = [f"Paragraph {index}." for index in range(10)]
    async with aiohttp.ClientSession() as session:
        await imme(session, relay, texts[::2])
        answer = await imme(session, relay, texts)
        # Another model, language or text is another item: nothing of it comes from the cache.
        await post(session, f"{relay}/imme?token={TOKEN}", {"target_lang": "de", "text_list": texts[:1]})
    assert answer == [f"[FR] {text}" for text in texts]
    assert upstream_texts(emulator) == [texts[::2], texts[1::2], texts[:1]]


async def test_a_hundred_identical_concurrent_requests_make_one_upstream_call(relay_factory: RelayFactory,
                                                                              emulator: RunningEmulator) -> None:
    relay = await relay_factory(dialect="qwen-v2", max_concurrency=100, queue_s=10.0)
    texts = ["Breaking news\n" + directive(ttfb_ms=300), "Same headline"]
    gate = asyncio.Semaphore(50)

    async def one(session: aiohttp.ClientSession) -> list[str]:
        async with gate:
            return await imme(session, relay, texts)

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=50)) as session:
        answers = await asyncio.gather(*(one(session) for _ in range(100)))
        text = await metrics_text(session, relay)
    assert answers == [["[FR] Breaking news", "[FR] Same headline"]] * 100
    assert len(calls(emulator, "POST", COMPLETIONS)) == 1
    assert metric(text, "qwen_relay_translation_upstream_calls_total") == 1


async def test_relays_sharing_redis_share_translations(relay_factory: RelayFactory, emulator: RunningEmulator,
                                                       redis_server: RedisServer) -> None:  # noqa: F811
    first = await relay_factory(dialect="qwen-v2", state=redis_server.url, translation_cache="redis")
    second = await relay_factory(dialect="qwen-v2", state=redis_server.url, translation_cache="redis")
    async with aiohttp.ClientSession() as session:
        assert await imme(session, first, ["Shared paragraph", "Only here"]) == ["[FR] Shared paragraph",
                                                                                 "[FR] Only here"]
        assert await imme(session, second, ["Shared paragraph", "New one"]) == ["[FR] Shared paragraph",
                                                                                "[FR] New one"]
        text = await metrics_text(session, second)
        # Redis gone: the cache fails open (a miss), the translation still comes.
        redis_server.process.send_signal(signal.SIGSTOP)
        assert await imme(session, second, ["Shared paragraph"]) == ["[FR] Shared paragraph"]
    assert upstream_texts(emulator) == [["Shared paragraph", "Only here"], ["New one"], ["Shared paragraph"]]
    assert metric(text, "qwen_relay_translation_cache_hits_total") == 1
    assert "qwen_relay_translation_cache_items" not in text  # Redis' own size, not ours to report


async def test_redis_keys_hold_digests_never_text(relay_factory: RelayFactory,
                                                  redis_server: RedisServer) -> None:  # noqa: F811
    import redis.asyncio as aioredis

    relay = await relay_factory(dialect="qwen-v2", state=redis_server.url, translation_cache="redis",
                                translation_cache_ttl_s=30.0)
    async with aiohttp.ClientSession() as session:
        await imme(session, relay, ["Secret memo"])
    client = aioredis.Redis.from_url(redis_server.url)
    try:
        keys = [key async for key in client.scan_iter("qwen-relay:tr:*")]
        assert len(keys) == 1 and len(keys[0]) == len("qwen-relay:tr:") + 64 and b"Secret" not in keys[0]
        assert 0 < await client.pttl(keys[0]) <= 30_000
    finally:
        await client.aclose()


async def test_cached_translations_expire_after_the_ttl(relay_factory: RelayFactory,
                                                        emulator: RunningEmulator) -> None:
    relay = await relay_factory(dialect="qwen-v2", translation_cache_ttl_s=0.3)
    async with aiohttp.ClientSession() as session:
        await imme(session, relay, ["Fleeting"])
        await imme(session, relay, ["Fleeting"])
        assert len(prompts(emulator)) == 1
        async with asyncio.timeout(5):
            while len(prompts(emulator)) == 1:  # each try before the TTL is a hit: no call
                await asyncio.sleep(0.05)
                await imme(session, relay, ["Fleeting"])
    assert upstream_texts(emulator) == [["Fleeting"], ["Fleeting"]]


async def test_the_memory_bound_evicts_the_least_recently_used(relay_factory: RelayFactory,
                                                               emulator: RunningEmulator) -> None:
    entry = 32 + len("[FR] Alpha")  # a key and a translation: all five texts are this size
    relay = await relay_factory(dialect="qwen-v2", translation_cache_mb=(2 * entry + 16) / MIB)  # room for two
    async with aiohttp.ClientSession() as session:
        for texts in (["Alpha"], ["Bravo"], ["Alpha"], ["Delta"], ["Alpha", "Bravo"]):
            await imme(session, relay, texts)
        text = await metrics_text(session, relay)
    # Alpha was used after Bravo, so Delta pushed Bravo out; then Bravo pushed Delta out.
    assert upstream_texts(emulator) == [["Alpha"], ["Bravo"], ["Delta"], ["Bravo"]]
    assert metric(text, "qwen_relay_translation_cache_evictions_total") == 2
    assert metric(text, "qwen_relay_translation_cache_items") == 2
    assert metric(text, "qwen_relay_translation_cache_bytes") == 2 * entry


async def test_a_key_with_cache_false_bypasses_the_cache(relay_factory: RelayFactory,
                                                         emulator: RunningEmulator) -> None:
    digest = bytes.fromhex(hash_key(KEY)[7:])
    operator = OperatorConfig(mode="both", keys=(KeySpec(name="private", digest=digest, cache=False),),
                              tokens=(Secret("pool-token-1"),))
    relay = await relay_factory(dialect="qwen-v2", operator=operator)
    async with aiohttp.ClientSession() as session:
        await imme(session, relay, ["Confidential"], token=KEY)
        await imme(session, relay, ["Confidential"], token=KEY)  # not read: asked again
        await imme(session, relay, ["Confidential"])  # not filled either: the passthrough caller misses
        await imme(session, relay, ["Confidential"])  # and now hits what it stored itself
        text = await metrics_text(session, relay)
    assert upstream_texts(emulator) == [["Confidential"]] * 3
    assert metric(text, "qwen_relay_translation_cache_hits_total") == 1


async def test_off_never_caches(relay_factory: RelayFactory, emulator: RunningEmulator) -> None:
    relay = await relay_factory(dialect="qwen-v2", translation_cache="off")
    async with aiohttp.ClientSession() as session:
        for _ in range(3):
            assert await imme(session, relay, ["Again", "Again"]) == ["[FR] Again", "[FR] Again"]
        text = await metrics_text(session, relay)
    assert upstream_texts(emulator) == [["Again", "Again"]] * 3
    assert "qwen_relay_translation_cache" not in text


def test_redis_cache_without_redis_state_is_refused_at_start(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        parse_config(["--translation-cache", "redis"], environ={})
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "--translation-cache redis" in err and "--state is memory" in err
    config = parse_config([], environ={"QWEN_RELAY_TRANSLATION_CACHE": "off",
                                       "QWEN_RELAY_TRANSLATION_CACHE_TTL": "60",
                                       "QWEN_RELAY_TRANSLATION_CACHE_MB": "0.5"})
    assert (config.translation_cache, config.translation_cache_ttl_s, config.translation_cache_mb) == ("off", 60, 0.5)
    defaults = parse_config([], environ={})
    assert (defaults.translation_cache, defaults.translation_cache_ttl_s, defaults.translation_cache_mb) == (
        "memory", 604800, 256)


def test_cache_false_is_read_from_the_keys_table(tmp_path: Path) -> None:
    path = tmp_path / "relay.toml"
    path.write_text(f'[operator]\nmode = "both"\ntokens = {{list = ["t-1"]}}\n\n'
                    f'[[operator.keys]]\nname = "a"\nhash = "{hash_key("ka")}"\ncache = false\n\n'
                    f'[[operator.keys]]\nname = "b"\nhash = "{hash_key("kb")}"\n')
    assert [key.cache for key in load_operator(str(path), {}).keys] == [False, True]
    path.write_text(f'[operator]\n[[operator.keys]]\nname = "a"\nhash = "{hash_key("ka")}"\ncache = "no"\n')
    with pytest.raises(ValueError, match="cache"):
        load_operator(str(path), {})
