"""Helpers shared by stages."""

from __future__ import annotations

from collections.abc import AsyncIterable
from types import TracebackType
from typing import Any

__all__ = ["closing_source"]


class closing_source:  # lower-case: used like contextlib.aclosing
    """Close ``source`` however the stage ends.

    Closing an outer async generator does not close the ones it iterates, so a
    stage that stops early (``[DONE]``, an error, the client gone) must close its
    source itself, or the upstream response would stay open until garbage collection.

    A class, not ``@asynccontextmanager``: every stage of every stream holds one,
    and the generator-based form costs another async generator (~1 KiB, and a
    slot in the loop's async-generator registry) per stage per stream.
    """

    __slots__ = ("_source",)

    def __init__(self, source: AsyncIterable[Any]) -> None:
        self._source = source

    async def __aenter__(self) -> None:
        return None

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        traceback: TracebackType | None) -> None:
        aclose = getattr(self._source, "aclose", None)
        if aclose is not None:
            await aclose()
