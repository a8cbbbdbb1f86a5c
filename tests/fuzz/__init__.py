"""Hypothesis fuzz tests of issue 6: the stream pipeline and the request parser.

Bounded by ``max_examples`` per test so the whole directory runs in well under a
minute; run with ``--hypothesis-show-statistics`` to see how many examples ran.
"""
