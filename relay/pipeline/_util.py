"""Helpers shared by stages."""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

__all__ = ["closing_source"]


@asynccontextmanager
async def closing_source(source: AsyncIterable[Any]) -> AsyncIterator[None]:
    """Close ``source`` however the stage ends.

    Closing an outer async generator does not close the ones it iterates, so a
    stage that stops early (``[DONE]``, an error, the client gone) must close its
    source itself, or the upstream response would stay open until garbage collection.
    """
    try:
        yield
    finally:
        aclose = getattr(source, "aclose", None)
        if aclose is not None:
            await aclose()
