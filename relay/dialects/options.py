"""Resolve what a request asks of Qwen: upstream model, thinking, search (issue 4).

Thinking and search are switched on by a synthetic model id from ``/v1/models``
(``<id>-thinking``, ``<id>-search``, ``<id>-thinking-search``, listed only
where the model can) or by request fields: ``enable_thinking`` (also inside
``chat_template_kwargs``, as Immersive Translate sends it) and
``thinking_budget``. An explicit ``enable_thinking`` wins over the id.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..errors import InvalidRequest
from ..openai_wire import ChatRequest
from . import ChatOptions

__all__ = ["resolve_options"]


def _enable_thinking(body: dict[str, Any]) -> bool | None:
    value = body.get("enable_thinking")
    kwargs = body.get("chat_template_kwargs")
    if value is None and isinstance(kwargs, dict):
        value = kwargs.get("enable_thinking")
    if value is not None and not isinstance(value, bool):
        raise InvalidRequest("'enable_thinking' must be a boolean.", param="enable_thinking", code="invalid_type")
    return value


def resolve_options(request: ChatRequest, variants: Mapping[str, tuple[str, bool, bool]],
                    must_think: frozenset[str] = frozenset()) -> ChatOptions:
    """The upstream model and switches for this request (``must_think``: models that cannot skip thinking)."""
    model, thinking, search = request.model, None, False
    variant = variants.get(model)
    if variant is not None:
        model, by_id, search = variant
        thinking = True if by_id else None
    explicit = _enable_thinking(request.body)
    if explicit is not None:
        thinking = explicit
    budget = request.body.get("thinking_budget")
    if budget is not None and (isinstance(budget, bool) or not isinstance(budget, int) or budget < 0):
        raise InvalidRequest("'thinking_budget' must be a non-negative integer.", param="thinking_budget",
                             code="invalid_type")
    return ChatOptions(upstream_model=model, thinking=thinking, thinking_budget=budget, search=search,
                       can_skip_thinking=model not in must_think)
