"""plan_batches: contiguous, in order, within bytes and items."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relay.translate.batching import ItemTooLarge, plan_batches


def test_greedy_contiguous_batches() -> None:
    assert plan_batches([3, 3, 3, 3], budget=7, max_items=10) == [range(2), range(2, 4)]
    assert plan_batches([1] * 5, budget=100, max_items=2) == [range(2), range(2, 4), range(4, 5)]
    assert plan_batches([], budget=10, max_items=3) == []


def test_an_item_over_the_budget_is_named() -> None:
    with pytest.raises(ItemTooLarge) as caught:
        plan_batches([1, 11, 1], budget=10, max_items=3)
    assert (caught.value.index, caught.value.size) == (1, 11)


@given(st.lists(st.integers(0, 50), max_size=60), st.integers(50, 200), st.integers(1, 10))
def test_batches_cover_every_item_once_within_limits(sizes: list[int], budget: int, max_items: int) -> None:
    batches = plan_batches(sizes, budget=budget, max_items=max_items)
    assert [index for batch in batches for index in batch] == list(range(len(sizes)))
    for batch in batches:
        assert 1 <= len(batch) <= max_items
        assert sum(sizes[index] for index in batch) <= budget
