"""The keyed JSON prompt and its tolerant reader (issue "Translation plugins first" §2).

The invariant: whatever a model writes, ``read_answer`` gives every key only what
the answer put under that very key, so no translation can land on another text.
"""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from relay.jsonio import dumps
from relay.translate.languages import Language, parse_language
from relay.translate.prompt import build_prompt, item_bytes, prompt_bytes, read_answer, suspects
from tests.strategies import translation_texts


def _language(code: str) -> Language:
    language = parse_language(code, param="target_lang", allow_auto=False)
    assert language is not None
    return language


FRENCH = _language("FR")


def _answer(values: dict[str, str]) -> str:
    return json.dumps(values, ensure_ascii=False, indent=1)


def test_the_prompt_carries_the_texts_as_one_keyed_object_last() -> None:
    texts = ['<a href="x">Link</a>', "Line\nbreak", "{name} and %s"]
    prompt = build_prompt(texts, FRENCH, None)
    start = prompt.index('{\n "1"')
    assert json.loads(prompt[start:]) == {"1": texts[0], "2": texts[1], "3": texts[2]}
    assert "Target language: French (fr)" in prompt
    assert '("1" to "3")' in prompt


@given(translation_texts)
def test_prompt_bytes_is_the_empty_prompt_plus_its_items(texts: list[str]) -> None:
    """Batching relies on it: the size of a batch is known without building its prompt."""
    estimate = prompt_bytes([], FRENCH, None) + sum(item_bytes(key, text) for key, text in enumerate(texts, 1))
    exact = len(dumps(build_prompt(texts, FRENCH, None)))
    assert abs(exact - estimate) <= 8  # the "1 to n" digits and the missing last comma


def test_a_clean_answer_is_read_key_by_key() -> None:
    assert read_answer(_answer({"1": "Un", "2": "Deux"}), ["One", "Two"]) == ["Un", "Deux"]


def test_wrappings_models_add_are_tolerated() -> None:
    body = '{\n "1": "Un",\n "2": "Deux",\n}'
    for answer in (f"```json\n{body}\n```", f"Here you go:\n{body}\nHope it helps!", body,
                   '<think>hmm {"1": "x"}</think>' + body, '{"translations": {"1": "Un", "2": "Deux"}}',
                   '{"2": "Deux", "1": "Un"}', '{"1": "Un", "2": "Deux", "3": "Trois"}'):
        assert read_answer(answer, ["One", "Two"]) == ["Un", "Deux"], answer


def test_raw_line_breaks_inside_a_string_are_kept() -> None:
    assert read_answer('{"1": "Ligne\nsuivante"}', ["Line\nnext"]) == ["Ligne\nsuivante"]


def test_what_is_not_an_answer_reads_as_missing() -> None:
    for answer in ("", "Un\nDeux", '["Un", "Deux"]', '{"1": "", "2": null}', '{"1": ["Un"], "2": {"x": 1}}'):
        assert read_answer(answer, ["One", "Two"]) == [None, None], answer


def test_an_object_quoted_from_a_source_is_not_the_answer() -> None:
    """A paragraph about JSON, answered in prose, must not make its example the translation of key 1."""
    sources = ['Write {"1": "x"} to the file.', "Done."]
    assert read_answer('Schreibe {"1": "x"} in die Datei.\nFertig.', sources) == [None, None]


def test_suspects_are_gaps_their_neighbours_and_doubles() -> None:
    sources = ["a", "b", "c", "d", "e"]
    assert suspects(sources, ["A", "B", "C", "D", "E"]) == []
    assert suspects(sources, ["A", "B", None, "D", "E"]) == [1, 2, 3]
    assert suspects(sources, [None, "B", "C", "D", "E"]) == [0, 1]
    assert suspects(sources, ["A", "B", "B", "D", "E"]) == [1, 2]
    assert suspects(["x", "x"], ["X", "X"]) == []  # the same text twice: the same translation is right


# --- the property: never an answer from another key -------------------------------------------------

_BEHAVIOURS = st.sampled_from(["ok", "ok", "ok", "drop", "empty", "merge", "duplicate", "number"])
_WRAPPINGS = st.sampled_from(["plain", "fence", "commentary", "trailing_comma", "reversed", "nested", "list"])


def _misbehave(texts: list[str], behaviours: list[str], wrapping: str) -> tuple[str, dict[int, str]]:
    """A model's answer, and what it put under each key (what the reader may return)."""
    values: dict[str, object] = {}
    for key, (text, behaviour) in enumerate(zip(texts, behaviours, strict=True), start=1):
        translation = f"T({text})"
        previous = str(key - 1)
        if behaviour == "drop":
            continue
        if behaviour == "empty":
            values[str(key)] = ""
        elif behaviour == "merge" and previous in values:
            values[previous] = f"{values[previous]} {translation}"
        elif behaviour == "duplicate" and previous in values:
            values[str(key)] = values[previous]
        elif behaviour == "number":
            values[str(key)] = key * 10
        else:
            values[str(key)] = translation
    if wrapping == "reversed":
        values = dict(reversed(values.items()))
    body = json.dumps({"translations": values} if wrapping == "nested" else values, ensure_ascii=False, indent=1)
    if wrapping == "fence":
        body = f"```json\n{body}\n```"
    elif wrapping == "commentary":
        body = f"Sure! {{these}} are the translations:\n{body}\nDone."
    elif wrapping == "trailing_comma" and values:
        body = body[:-2] + ",\n}"
    elif wrapping == "list":
        body = json.dumps(list(values.values()))
    under = {int(key): value if isinstance(value, str) else json.dumps(value) for key, value in values.items()}
    return body, {key: value for key, value in under.items() if value.strip()}


@given(translation_texts.flatmap(lambda texts: st.tuples(
    st.just(texts), st.lists(_BEHAVIOURS, min_size=len(texts), max_size=len(texts)), _WRAPPINGS)))
def test_read_answer_never_returns_another_keys_value(case: tuple[list[str], list[str], str]) -> None:
    texts, behaviours, wrapping = case
    answer, under = _misbehave(texts, behaviours, wrapping)
    read = read_answer(answer, texts)
    assert len(read) == len(texts)
    for index, value in enumerate(read):
        assert value is None or value == under.get(index + 1), (index, value, answer)
    if wrapping != "list":
        assert {index + 1 for index, value in enumerate(read) if value is not None} == set(under)
