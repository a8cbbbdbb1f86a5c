"""Helpers shared by stages."""

from __future__ import annotations

import sys
from collections.abc import AsyncGenerator, AsyncIterable, Callable
from types import CodeType
from typing import Any, TypeVar

__all__ = ["close_source", "stage", "untrack_stages"]

F = TypeVar("F", bound=Callable[..., Any])

#: the code objects of the functions marked ``@stage``.
_STAGES: set[CodeType] = set()


async def close_source(source: AsyncIterable[Any]) -> None:
    """Close a stage's ``source``: every stage calls it in a ``finally``, however it ends.

    Closing an outer async generator does not close the ones it iterates, so a
    stage that stops early (``[DONE]``, an error, the client gone) must close its
    source itself, or the upstream response would stay open until garbage collection.

    A ``finally``, not ``async with`` a closing context manager: the manager and
    its bound ``__aexit__`` lived on every stage's frame for the whole stream
    (104 B per stage per stream, ~1 KiB per open stream).
    """
    aclose = getattr(source, "aclose", None)
    if aclose is not None:
        await aclose()


def stage(function: F) -> F:
    """Mark an async-generator stage: closed by its consumer, it needs no tracking (``untrack_stages``)."""
    _STAGES.add(function.__code__)
    return function


def untrack_stages() -> None:
    """Keep ``@stage`` generators out of the running event loop's async-generator registry.

    Why: a loop records every async generator on its first iteration, in a
    WeakSet, so that ``shutdown_asyncgens`` can close those left open at exit: a
    weak reference and a set slot each, ~145 B. A relayed stream runs about
    seven stages that live as long as it does, each closed by its consumer
    (``close_source`` in a ``finally``), so the record is never used: 1.3 KiB per
    open stream, about 5 % of what the relay keeps for one.

    Only the first-iteration hook changes. The finalizer hook is taken by each
    generator at that moment anyway, so a stage dropped unclosed (a bug) is
    still closed by the loop when collected. The loop restores its own hooks
    when ``run_forever`` returns; call this once the loop runs (server start).
    """
    firstiter, finalizer = sys.get_asyncgen_hooks()
    if firstiter is None or getattr(firstiter, "_skips_stages", False):
        return
    loop_firstiter = firstiter

    def first_iteration(agen: AsyncGenerator[Any, Any]) -> None:
        if getattr(agen, "ag_code", None) not in _STAGES:
            loop_firstiter(agen)

    first_iteration._skips_stages = True  # type: ignore[attr-defined]
    sys.set_asyncgen_hooks(firstiter=first_iteration, finalizer=finalizer)
