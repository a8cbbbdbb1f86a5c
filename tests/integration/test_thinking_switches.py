"""Every thinking switch, as the upstream receives it and as the client sees it (issue 19 §1).

Real sockets: the relay (qwen-v2) in front of the strict emulator. The gear is read
from the emulator's log of the completion it received; "no reasoning reached the
client" is checked on a model that thinks in every gear it is asked (qwen3.8-plus
cannot skip thinking) and with a directive that makes any model think.
"""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest

from relay.emulator import RunningEmulator
from relay.operator.config import KeySpec, OperatorConfig, Secret, hash_key
from tests.conftest import RelayFactory, chat_body, directive
from tests.integration.web2026 import COMPLETIONS, calls, post_json, stream_answer

KEY = "sk-translator-0123456789"
THINKS = directive(reply="Bonjour.", think="Let me translate.", chunks=2)
GEARS = {"Auto": (True, True), "Thinking": (True, False), "Fast": (False, False)}


def gear_of(emulator: RunningEmulator) -> str:
    """The thinking_mode of the last completion the emulator received, checked against the §7.3 table."""
    config = calls(emulator, "POST", COMPLETIONS)[-1].feature_config
    assert config is not None
    mode = config["thinking_mode"]
    assert (config["thinking_enabled"], config["auto_thinking"]) == GEARS[mode], config
    assert ("thinking_format" in config) == (mode != "Fast")
    return str(mode)


@pytest.mark.parametrize(("fields", "gear"), [
    ({}, "Auto"),
    ({"thinking": {"type": "disabled"}}, "Fast"),
    ({"thinking": {"type": "enabled", "budget_tokens": 1024}}, "Thinking"),
    ({"reasoning_effort": "minimal"}, "Fast"),
    ({"reasoning_effort": "medium"}, "Thinking"),
    ({"reasoning": {"effort": "none"}}, "Fast"),
    ({"reasoning": {"enabled": True}}, "Thinking"),
    ({"chat_template_kwargs": {"enable_thinking": False}}, "Fast"),
])
async def test_each_switch_reaches_the_upstream_as_its_gear(
        relay_factory: RelayFactory, emulator: RunningEmulator, fields: dict[str, Any], gear: str) -> None:
    relay = await relay_factory(dialect="qwen-v2")
    async with aiohttp.ClientSession() as session:
        answer = await post_json(session, relay, {**chat_body(text=THINKS), **fields})
    assert answer.status == 200, answer.body
    assert gear_of(emulator) == gear
    if gear == "Fast":
        assert answer.reasoning == ""
    if "thinking" in fields and "budget_tokens" in fields["thinking"]:
        assert calls(emulator, "POST", COMPLETIONS)[-1].feature_config["thinking_budget"] == 1024  # type: ignore[index]


@pytest.mark.parametrize("stream", [True, False])
async def test_kiss_translators_disabled_thinking_never_reaches_the_client(
        relay_factory: RelayFactory, emulator: RunningEmulator, stream: bool) -> None:
    """Kiss Translator's chat mode: thinking {"type": "disabled"}, stream true, on a model that must think."""
    relay = await relay_factory(dialect="qwen-v2")
    body = {**chat_body(text="Translate to French: hello", model="qwen3.8-plus"), "thinking": {"type": "disabled"}}
    async with aiohttp.ClientSession() as session:
        answer = await (stream_answer if stream else post_json)(session, relay, body)
    assert answer.status == 200, answer.body
    assert answer.content and answer.reasoning == ""
    assert gear_of(emulator) == "Auto"  # never Fast: this model refuses it
    assert not any("reasoning_content" in event for event in answer.events)


async def test_reasoning_exclude_lets_the_model_think_but_hides_it(
        relay_factory: RelayFactory, emulator: RunningEmulator) -> None:
    relay = await relay_factory(dialect="qwen-v2")
    body = {**chat_body(text=THINKS), "reasoning": {"effort": "high", "exclude": True}}
    async with aiohttp.ClientSession() as session:
        answer = await stream_answer(session, relay, body)
        shown = await stream_answer(session, relay, {**chat_body(text=THINKS), "reasoning": {"effort": "high"}})
    assert gear_of(emulator) == "Thinking"
    assert answer.content == "Bonjour." and answer.reasoning == ""
    assert shown.reasoning == "Let me translate."  # the same request without exclude: it did think


async def test_conflicting_switches_are_a_400_and_nothing_goes_upstream(
        relay_factory: RelayFactory, emulator: RunningEmulator) -> None:
    relay = await relay_factory(dialect="qwen-v2")
    body = {**chat_body(text="hi"), "enable_thinking": True, "thinking": {"type": "disabled"}}
    async with aiohttp.ClientSession() as session:
        answer = await post_json(session, relay, body)
    assert answer.status == 400
    message = answer.body["error"]["message"]
    assert "enable_thinking" in message and "thinking.type" in message
    assert not calls(emulator, "POST", COMPLETIONS)


async def test_default_thinking_off_and_a_keys_own_default(
        relay_factory: RelayFactory, emulator: RunningEmulator) -> None:
    """--default-thinking off applies without a switch; a relay key's `thinking = "on"` wins over it."""
    operator = OperatorConfig(mode="both", keys=(KeySpec(name="translator", digest=bytes.fromhex(hash_key(KEY)[7:]),
                                                         thinking="on"),),
                              tokens=(Secret("pool-token-1"),))
    relay = await relay_factory(dialect="qwen-v2", default_thinking="off", operator=operator)
    async with aiohttp.ClientSession() as session:
        plain = await post_json(session, relay, chat_body(text=THINKS))
        assert plain.status == 200 and plain.reasoning == ""
        assert gear_of(emulator) == "Fast"
        keyed = await post_json(session, relay, chat_body(text=THINKS), token=KEY)
        assert keyed.status == 200, keyed.body
        assert gear_of(emulator) == "Thinking" and keyed.reasoning == "Let me translate."
        asked = await post_json(session, relay, {**chat_body(text=THINKS), "reasoning_effort": "low"})
        assert gear_of(emulator) == "Thinking" and asked.reasoning
