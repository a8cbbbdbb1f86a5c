"""relay/jsonio.py: orjson's speed, the stdlib's answers.

Each edge case below is one where orjson alone would answer differently from
``json`` (a float for a big int, an error for ``"\\ud800"``, success at depth
1010, its own error messages); that the stdlib's answer comes back proves the
fallback ran. The property tests hold both libraries to the same output.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import math
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.jsonio import dumps, has_lone_surrogate, loads
from tests.strategies import sse_texts


def stdlib_dumps(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8", "replace")


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


#: JSON values as the relay meets them, with what orjson treats differently:
#: ints past 64 bits, lone surrogates, control characters, U+2028, emoji.
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | sse_texts | st.text(st.characters(categories=["Cs"]), max_size=2),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(sse_texts, inner, max_size=4),
    max_leaves=12,
)


@settings(max_examples=400)
@given(value=json_values, ensure_ascii=st.booleans())
def test_loads_returns_what_the_stdlib_returns(value: Any, ensure_ascii: bool) -> None:
    """Same values and types (int stays int) for any text the stdlib writes."""
    text = json.dumps(value, ensure_ascii=ensure_ascii)
    expected = json.loads(text)
    assert repr(loads(text)) == repr(expected)
    if ensure_ascii:  # ensure_ascii=False may write a lone surrogate raw: not UTF-8 bytes
        assert repr(loads(text.encode())) == repr(expected)


@settings(max_examples=400)
@given(value=json_values)
def test_dumps_writes_the_stdlibs_bytes(value: Any) -> None:
    """Byte for byte, lone surrogates as "?" included. Floats below 1e-4 are
    spelt differently (1e-7 vs 1e-07), so the strategy's floats are compared
    by value only."""
    out = dumps(value)
    assert json.loads(out) == json.loads(stdlib_dumps(value))
    if not _has_small_float(value):
        assert out == stdlib_dumps(value)


def _has_small_float(value: Any) -> bool:
    if isinstance(value, float):
        return value != 0 and abs(value) < 1e-4
    if isinstance(value, list):
        return any(_has_small_float(item) for item in value)
    if isinstance(value, dict):
        return any(_has_small_float(item) for item in value.values())
    return False


@pytest.mark.parametrize("text", ["18446744073709551616", "-9223372036854775809", "[1, 99999999999999999999999]",
                                  '{"seed": 123456789012345678901234567890}'])
def test_integers_past_64_bits_stay_exact_ints(text: str) -> None:
    """orjson returns these as floats; a client's ``"seed"`` would then fail the
    integer check with a 400 it does not get today."""
    assert repr(orjson.loads(text)) != repr(json.loads(text))
    assert repr(loads(text)) == repr(json.loads(text))
    assert dumps(json.loads(text)) == stdlib_dumps(json.loads(text))


@pytest.mark.parametrize(("text", "expected"), [
    ('"\\ud800"', "\ud800"), ('{"\\udfff": 1}', {"\udfff": 1}), ('"\\ud83d\\ude00"', "😀"), ('"x\ud800"', "x\ud800"),
])
def test_surrogate_escapes_decode_as_the_stdlib_decodes_them(text: str, expected: Any) -> None:
    assert loads(text) == expected
    if "\ud800" not in text:
        assert loads(text.encode()) == expected


def test_lone_surrogates_are_written_as_question_marks() -> None:
    assert dumps({"a": "x\ud800y", "\udfff": 1}) == b'{"a":"x?y","?":1}'


def test_non_ascii_is_written_raw_as_utf8() -> None:
    assert dumps({"é": "中😀\u2028\x85", "c": "\x00\x1f\"\\"}) == (
        '{"é":"中😀\u2028\x85","c":"\\u0000\\u001f\\"\\\\"}'.encode())


@pytest.mark.parametrize("text", ["NaN", "Infinity", "-Infinity", "[1e999]", '{"t": -1e400}'])
def test_non_finite_numbers_reach_the_callers_hooks(text: str) -> None:
    """parse.py maps them to None, openai_wire rejects the literals: hooks that
    orjson (which refuses all five) never calls."""
    def finite(number: str) -> float | None:
        value = float(number)
        return value if math.isfinite(value) else None

    expected = json.loads(text, parse_constant=lambda name: None, parse_float=finite)
    assert loads(text, parse_constant=lambda name: None, parse_float=finite) == expected
    assert repr(loads(text)) == repr(json.loads(text))  # no hooks: nan/inf as the stdlib gives them


def test_finite_floats_match_the_stdlib_so_hooks_may_be_skipped() -> None:
    for text in ["0.1", "-0.0", "5e-324", "1.7976931348623157e308", "3.141592653589793", "-2.5e-7"]:
        assert repr(loads(text, parse_float=lambda _: pytest.fail("hook on the orjson path"))) == repr(json.loads(text))


@pytest.mark.parametrize("text", ["", "[1,]", "{'a': 1}", "\ufeff{}", "01", "[1] x", '"\x00"'])
def test_invalid_json_raises_the_stdlibs_error_and_message(text: str) -> None:
    """The 400 a client gets quotes the parser's message: it must not change."""
    with pytest.raises(json.JSONDecodeError) as expected:
        json.loads(text)
    with pytest.raises(json.JSONDecodeError) as got:
        loads(text)
    assert str(got.value) == str(expected.value)


def test_bytes_get_the_stdlibs_encoding_detection() -> None:
    assert loads(b"\xef\xbb\xbf{}") == {}
    assert loads('{"a":1}'.encode("utf-16")) == {"a": 1}
    with pytest.raises(UnicodeDecodeError):
        loads(b'"\xff"')


@pytest.mark.parametrize("depth", [1010, 2000])
def test_nesting_past_the_stdlibs_limit_is_a_recursion_error(depth: int) -> None:
    """orjson parses up to 1024 levels, the stdlib gives up near 1000: callers
    answer RecursionError with 400 "nested too deeply", so that stays the error."""
    with pytest.raises(RecursionError):
        json.loads(nested(depth))
    with pytest.raises(RecursionError):
        loads(nested(depth))


def test_long_flat_text_with_many_containers_still_decodes() -> None:
    text = json.dumps([{"role": "user", "content": [1]}] * 600)
    assert loads(text) == json.loads(text)


def test_deep_values_past_orjsons_limit_are_encoded() -> None:
    value: list[Any] = []
    for _ in range(300):  # orjson stops at 254 levels
        value = [value]
    assert dumps(value) == stdlib_dumps(value)


@pytest.mark.parametrize(("value", "expected"), [
    ({1: 2, None: 3}, b'{"1":2,"null":3}'), (2**70, b"1180591620717411303424"), ((1, "a"), b'[1,"a"]'),
])
def test_values_orjson_refuses_are_encoded_by_the_stdlib(value: Any, expected: bytes) -> None:
    assert dumps(value) == expected


def test_types_the_stdlib_refuses_are_still_refused() -> None:
    @dataclasses.dataclass
    class Point:
        x: int

    for value in (Point(1), datetime.date(2024, 1, 1), {1, 2}, b"x"):
        with pytest.raises(TypeError):
            dumps({"v": value})


@pytest.mark.parametrize(("value", "expected"), [
    ({"a": ["x", "😀"]}, False), ({"a": "x\ud800"}, True), ({"\udfff": 1}, True),
    ({"n": 2**70}, False), ({"n": 2**70, "s": "\ud800"}, True),
])
def test_has_lone_surrogate(value: Any, expected: bool) -> None:
    assert has_lone_surrogate(value) is expected


def test_non_finite_floats_are_written_as_null() -> None:
    """The one deliberate difference (see the module notes): the stdlib would
    write NaN/Infinity, which no JSON parser a client uses accepts."""
    assert dumps([math.nan, math.inf, -math.inf]) == b"[null,null,null]"
