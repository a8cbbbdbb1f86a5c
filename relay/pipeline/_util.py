"""Helpers shared by stages."""

from __future__ import annotations

from collections.abc import AsyncIterable
from typing import Any

__all__ = ["close_source"]


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
