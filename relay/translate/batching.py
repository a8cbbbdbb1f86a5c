"""Cut a request's texts into upstream calls that fit. Pure: sizes in, index ranges out.

Two limits: bytes, because a qwen-v2 completion body above ~128 KB draws risk
control (``--max-upstream-body-bytes``, docs/qwen-protocol.md §7.3), and items,
because a model keeps keys apart far more reliably in a list of 40 than of 400
(``--translate-batch-items``). Greedy and in order: texts are never reordered,
so a batch is a contiguous range, and each batch numbers its keys from 1.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["ItemTooLarge", "plan_batches"]


class ItemTooLarge(ValueError):
    """One text alone does not fit an upstream call."""

    def __init__(self, index: int, size: int, budget: int) -> None:
        super().__init__(f"item {index} takes {size} bytes; the budget is {budget}")
        self.index = index
        self.size = size
        self.budget = budget


def plan_batches(sizes: Sequence[int], *, budget: int, max_items: int) -> list[range]:
    """Contiguous ranges of ``sizes`` whose sums stay within ``budget``, at most ``max_items`` long.

    ``ItemTooLarge`` names the first item that exceeds the budget on its own.
    """
    if max_items < 1:
        raise ValueError("max_items must be at least 1")
    batches: list[range] = []
    start, used = 0, 0
    for index, size in enumerate(sizes):
        if size > budget:
            raise ItemTooLarge(index, size, budget)
        if index > start and (used + size > budget or index - start >= max_items):
            batches.append(range(start, index))
            start, used = index, 0
        used += size
    if start < len(sizes):
        batches.append(range(start, len(sizes)))
    return batches
