"""Resolve what a request asks of Qwen: upstream model, thinking, search.

Thinking is switched by a synthetic model id from ``/v1/models`` (``<id>-thinking``,
``<id>-search``, ``<id>-thinking-search``, listed only where the model can) or by
any of the fields clients send, each honoured as its author means it:

- ``enable_thinking``, ``chat_template_kwargs.enable_thinking`` (Qwen / vLLM style;
  Immersive Translate);
- ``thinking: {"type": "enabled"|"disabled"|"adaptive", "budget_tokens"}`` (DeepSeek and
  Anthropic style; Kiss Translator's default is ``disabled``);
- ``reasoning_effort``: ``none``/``minimal`` off, ``low``/``medium``/``high`` on (OpenAI);
- ``reasoning: {"effort", "enabled", "exclude", "max_tokens"}`` (OpenRouter):
  ``exclude: true`` lets thinking run but none of it reaches the client;
- ``thinking_budget`` (and ``budget_tokens``, ``reasoning.max_tokens``) → the upstream's
  ``thinking_budget``.

Search is switched by the ``-search`` id or by ``enable_search`` (DashScope's field;
the Responses surface sets it for a ``web_search`` tool): true turns search on
where the model can search (its ``<id>-search`` is listed), and is ignored
where it cannot, since a search tool only offers the model a way to look
things up; false turns a ``-search`` id's search off.

A field wins over the model id. Two fields that disagree (one on, one off; or two
different budgets) are a 400 naming both. A request with no switch gets the
default: the relay key's ``thinking``, else ``--default-thinking`` (``auto``: the
web app's Auto gear, where the model decides).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..errors import InvalidRequest
from ..openai_wire import ChatRequest
from . import ChatOptions

__all__ = ["THINKING_DEFAULTS", "resolve_options", "thinking_default"]

#: ``--default-thinking`` and a relay key's ``thinking``.
THINKING_DEFAULTS = ("auto", "off", "on")
_EFFORT_ON = frozenset({"low", "medium", "high"})
_EFFORT_OFF = frozenset({"none", "minimal"})


def thinking_default(name: str) -> bool | None:
    """``auto`` → None (the model decides), ``on`` → True, ``off`` → False."""
    return None if name == "auto" else name == "on"


def _invalid(message: str, param: str) -> InvalidRequest:
    return InvalidRequest(message, param=param, code="invalid_value")


def _switch_of_effort(value: Any, param: str) -> bool:
    if isinstance(value, str) and value in _EFFORT_OFF:
        return False
    if isinstance(value, str) and value in _EFFORT_ON:
        return True
    raise _invalid(f"'{param}' must be one of none, minimal, low, medium, high.", param)


def _budget(value: Any, param: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidRequest(f"'{param}' must be a non-negative integer.", param=param, code="invalid_type")
    return value


class _Switches:
    """The thinking switches found in one body: (field, on/off) and (field, budget) pairs."""

    def __init__(self) -> None:
        self.onoff: list[tuple[str, bool]] = []
        self.budgets: list[tuple[str, int]] = []
        self.hide = False

    def read(self, body: Mapping[str, Any]) -> None:
        for param, value in (("enable_thinking", body.get("enable_thinking")),
                             ("chat_template_kwargs.enable_thinking", _nested(body, "chat_template_kwargs",
                                                                               "enable_thinking"))):
            if value is None:
                continue
            if not isinstance(value, bool):
                raise InvalidRequest(f"'{param}' must be a boolean.", param=param, code="invalid_type")
            self.onoff.append((param, value))
        if body.get("thinking_budget") is not None:
            self.budgets.append(("thinking_budget", _budget(body["thinking_budget"], "thinking_budget")))
        self._read_thinking(body.get("thinking"))
        if body.get("reasoning_effort") is not None:
            self.onoff.append(("reasoning_effort", _switch_of_effort(body["reasoning_effort"], "reasoning_effort")))
        self._read_reasoning(body.get("reasoning"))

    def _read_thinking(self, thinking: Any) -> None:
        if thinking is None:
            return
        if isinstance(thinking, bool):  # a bare switch, as some chat apps send it
            self.onoff.append(("thinking", thinking))
            return
        if not isinstance(thinking, dict):
            raise _invalid("'thinking' must be an object such as {\"type\": \"disabled\"}.", "thinking")
        kind = thinking.get("type")
        if kind is not None and not isinstance(kind, str):
            raise _invalid("'thinking.type' must be enabled, disabled or adaptive.", "thinking.type")
        if kind == "enabled":
            self.onoff.append(("thinking.type", True))
        elif kind == "disabled":
            self.onoff.append(("thinking.type", False))
        elif kind not in ("adaptive", "auto", None):
            raise _invalid("'thinking.type' must be enabled, disabled or adaptive.", "thinking.type")
        if thinking.get("budget_tokens") is not None:
            self.budgets.append(("thinking.budget_tokens", _budget(thinking["budget_tokens"],
                                                                   "thinking.budget_tokens")))

    def _read_reasoning(self, reasoning: Any) -> None:
        if reasoning is None:
            return
        if not isinstance(reasoning, dict):
            raise _invalid("'reasoning' must be an object such as {\"effort\": \"low\"}.", "reasoning")
        if reasoning.get("effort") is not None:
            self.onoff.append(("reasoning.effort", _switch_of_effort(reasoning["effort"], "reasoning.effort")))
        enabled = reasoning.get("enabled")
        if enabled is not None:
            if not isinstance(enabled, bool):
                raise InvalidRequest("'reasoning.enabled' must be a boolean.", param="reasoning.enabled",
                                     code="invalid_type")
            self.onoff.append(("reasoning.enabled", enabled))
        exclude = reasoning.get("exclude")
        if exclude is not None and not isinstance(exclude, bool):
            raise InvalidRequest("'reasoning.exclude' must be a boolean.", param="reasoning.exclude",
                                 code="invalid_type")
        self.hide = exclude is True
        if reasoning.get("max_tokens") is not None:
            self.budgets.append(("reasoning.max_tokens", _budget(reasoning["max_tokens"], "reasoning.max_tokens")))

    def thinking(self) -> bool | None:
        """The one on/off the fields agree on, None when they say nothing; 400 when they disagree."""
        if not self.onoff:
            return None
        first_param, first = self.onoff[0]
        for param, value in self.onoff[1:]:
            if value != first:
                raise _invalid(f"Conflicting thinking switches: '{first_param}' turns thinking "
                               f"{'on' if first else 'off'} but '{param}' turns it {'on' if value else 'off'}.",
                               param)
        return first

    def budget(self) -> int | None:
        if not self.budgets:
            return None
        first_param, first = self.budgets[0]
        for param, value in self.budgets[1:]:
            if value != first:
                raise _invalid(f"Conflicting thinking budgets: '{first_param}' is {first} but '{param}' is {value}.",
                               param)
        return first


def _nested(body: Mapping[str, Any], outer: str, inner: str) -> Any:
    table = body.get(outer)
    return table.get(inner) if isinstance(table, dict) else None


def resolve_options(request: ChatRequest, variants: Mapping[str, tuple[str, bool, bool]],
                    must_think: frozenset[str] = frozenset(), default: bool | None = None) -> ChatOptions:
    """The upstream model and switches for this request.

    ``must_think``: models that cannot skip thinking; ``default``: thinking when the
    request has no switch (the key's, else ``--default-thinking``; None = Auto).
    """
    model, thinking, search = request.model, None, False
    variant = variants.get(model)
    switches = _Switches()
    switches.read(request.body)
    explicit = switches.thinking()
    if variant is not None:
        model, by_id, search = variant
        thinking = True if by_id else None
    wants_search = request.body.get("enable_search")
    if wants_search is not None:
        if not isinstance(wants_search, bool):
            raise InvalidRequest("'enable_search' must be a boolean.", param="enable_search", code="invalid_type")
        search = wants_search and (search or f"{model}-search" in variants)
    if explicit is not None:
        thinking = explicit
    elif thinking is None:
        thinking = default
    return ChatOptions(upstream_model=model, thinking=thinking, thinking_budget=switches.budget(), search=search,
                       can_skip_thinking=model not in must_think, hide_reasoning=switches.hide)
