"""Every thinking switch clients send, resolved (issue 19 §1)."""

from __future__ import annotations

from typing import Any

import pytest

from relay.dialects.options import resolve_options, thinking_default
from relay.errors import InvalidRequest
from relay.openai_wire import parse_chat_request

VARIANTS = {"qwen3-max-thinking": ("qwen3-max", True, False), "qwen3-max-search": ("qwen3-max", False, True)}


def resolve(default: bool | None = None, model: str = "qwen3-max", **fields: Any) -> tuple[bool | None, int | None,
                                                                                          bool]:
    request = parse_chat_request({"model": model, "messages": [{"role": "user", "content": "hi"}], **fields})
    options = resolve_options(request, VARIANTS, default=default)
    return options.thinking, options.thinking_budget, options.hide_reasoning


@pytest.mark.parametrize(("fields", "expected"), [
    ({}, None),
    ({"enable_thinking": False}, False),
    ({"chat_template_kwargs": {"enable_thinking": True}}, True),
    ({"thinking": {"type": "disabled"}}, False),
    ({"thinking": {"type": "enabled", "budget_tokens": 2048}}, True),
    ({"thinking": {"type": "adaptive"}}, None),
    ({"reasoning_effort": "none"}, False),
    ({"reasoning_effort": "minimal"}, False),
    ({"reasoning_effort": "low"}, True),
    ({"reasoning_effort": "high"}, True),
    ({"reasoning": {"effort": "medium"}}, True),
    ({"reasoning": {"enabled": False}}, False),
    ({"reasoning": {"exclude": True}}, None),
    ({"enable_thinking": False, "thinking": {"type": "disabled"}, "reasoning_effort": "none"}, False),
])
def test_each_switch_turns_thinking_as_its_author_means(fields: dict[str, Any], expected: bool | None) -> None:
    assert resolve(**fields)[0] is expected


def test_budgets_from_every_style() -> None:
    assert resolve(thinking={"type": "enabled", "budget_tokens": 2048})[1] == 2048
    assert resolve(reasoning={"max_tokens": 512})[1] == 512
    assert resolve(thinking_budget=100, thinking={"type": "enabled", "budget_tokens": 100})[1] == 100


def test_exclude_lets_thinking_run_but_hides_it() -> None:
    assert resolve(reasoning={"effort": "high", "exclude": True}) == (True, None, True)


@pytest.mark.parametrize("fields", [
    {"enable_thinking": True, "thinking": {"type": "disabled"}},
    {"reasoning_effort": "none", "reasoning": {"enabled": True}},
    {"chat_template_kwargs": {"enable_thinking": False}, "reasoning_effort": "high"},
    {"thinking_budget": 100, "reasoning": {"max_tokens": 200}},
])
def test_conflicting_switches_are_a_400_naming_both(fields: dict[str, Any]) -> None:
    with pytest.raises(InvalidRequest) as caught:
        resolve(**fields)
    named = [name for name in ("enable_thinking", "thinking", "reasoning_effort", "reasoning", "thinking_budget")
             if name in caught.value.message]
    assert len(named) >= 2 and caught.value.status == 400


@pytest.mark.parametrize("fields", [
    {"reasoning_effort": "extreme"}, {"thinking": {"type": "sometimes"}}, {"thinking": "yes"},
    {"reasoning": {"enabled": "yes"}}, {"thinking": {"type": "enabled", "budget_tokens": -1}},
    {"reasoning_effort": ["low"]}, {"reasoning": {"effort": {"x": 1}}}, {"thinking": {"type": ["enabled"]}},
])
def test_malformed_switches_are_a_400(fields: dict[str, Any]) -> None:
    with pytest.raises(InvalidRequest):
        resolve(**fields)


def test_default_applies_only_without_a_switch_and_a_field_wins_over_the_id() -> None:
    assert resolve(default=False)[0] is False
    assert resolve(default=False, enable_thinking=True)[0] is True
    assert resolve(default=False, model="qwen3-max-thinking")[0] is True  # the id is a switch too
    assert resolve(default=True, model="qwen3-max-search")[0] is True
    assert resolve(model="qwen3-max-thinking", thinking={"type": "disabled"})[0] is False


def test_thinking_default_names() -> None:
    assert (thinking_default("auto"), thinking_default("on"), thinking_default("off")) == (None, True, False)


@pytest.mark.parametrize(("model", "enable_search", "expected"), [
    ("qwen3-max", True, (True, "qwen3-max")),           # the model can search: its -search id is listed
    ("qwen3-max-thinking", True, (True, "qwen3-max")),  # on the base of a variant id too
    ("qwen3-coder", True, (False, "qwen3-coder")),      # cannot search: ignored, not refused
    ("qwen3-max-search", False, (False, "qwen3-max")),  # a field wins over the id
    ("qwen3-max-search", None, (True, "qwen3-max")),
])
def test_enable_search_switches_search_where_the_model_can(model: str, enable_search: bool | None,
                                                             expected: tuple[bool, str]) -> None:
    """``enable_search`` (the Responses surface's ``web_search`` tool) resolves like a ``-search`` id."""
    fields = {} if enable_search is None else {"enable_search": enable_search}
    request = parse_chat_request({"model": model, "messages": [{"role": "user", "content": "hi"}], **fields})
    options = resolve_options(request, VARIANTS)
    assert (options.search, options.upstream_model) == expected
    with pytest.raises(InvalidRequest):
        resolve_options(parse_chat_request({"model": model, "messages": [{"role": "user", "content": "hi"}],
                                            "enable_search": "yes"}), VARIANTS)
