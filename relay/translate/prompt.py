"""The translation prompt, and a tolerant reader of the model's answer. Pure functions.

Strategy: the texts of one upstream call travel as one JSON object whose keys are
their positions, ``{"1": "<text 1>", "2": "<text 2>", …}``, and the model is asked
to answer the same keys. Alignment then hangs on keys, never on positions in a
list: a model that drops, merges or reorders paragraphs cannot shift the others
onto the wrong text, it can only leave a key out, which the reader sees.

The reader (``read_answer``) is lenient about the wrapping (a code fence, prose
before or after, a trailing comma, raw line breaks inside strings, the object
nested one level down) and strict about the content: a key is answered only by
a non-empty string (or number) under that very key. ``suspects`` then names what
must be asked again alone: every key left unanswered, the answered neighbours of
such a gap (a model that merges two paragraphs writes both into one key and
leaves the other empty, and which neighbour took it is unknowable), and keys that
got one identical translation for different texts.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Sequence

from ..jsonio import dumps
from .languages import Language

__all__ = ["PROMPT_VERSION", "build_prompt", "item_bytes", "prompt_bytes", "read_answer", "suspects"]

#: part of every translation cache key: bump it whenever ``_RULES`` or the items' layout
#: changes, so translations made under the old prompt are no longer served.
PROMPT_VERSION = 1

_RULES = """\
You are a translation engine. Translate the value of every key of the JSON object \
below {source} into {target}.
Rules:
- Answer with one JSON object and nothing else: the same keys ("1" to "{last}"), each \
holding the translation of its own value. No explanations, no code fence.
- Translate each value on its own. Never merge, split, skip or reorder values, and never \
move text from one key to another.
- Keep every HTML tag and attribute, placeholder ({{name}}, {{{{name}}}}, %s, %1$s, $1, \
<0>…</0>), URL, e-mail address, code span and line break of a value exactly where it is; \
translate only the human-readable text.
- A value that needs no translation (a name, a number, code) is answered unchanged.
Target language: {target} ({tag})

"""
_FENCE = re.compile(r"```[a-zA-Z0-9_-]*[ \t]*\n?(.*?)```", re.DOTALL)
_THINK = re.compile(r"^\s*<think>.*?</think>", re.DOTALL)
#: ``{`` positions tried per answer: bounds the work a brace-heavy answer can cause.
_MAX_STARTS = 64


def _items_json(texts: Sequence[str]) -> str:
    return json.dumps({str(key): text for key, text in enumerate(texts, start=1)}, ensure_ascii=False, indent=1)


def build_prompt(texts: Sequence[str], target: Language, source: Language | None) -> str:
    """The one user message that asks for ``texts`` in ``target``: rules, then the JSON object last."""
    where = f"from {source.name} ({source.tag})" if source is not None else "from the language it is written in"
    rules = _RULES.format(source=where, target=target.name, tag=target.tag, last=len(texts))
    return rules + _items_json(texts)


def prompt_bytes(texts: Sequence[str], target: Language, source: Language | None) -> int:
    """The bytes the prompt takes inside the upstream's JSON body (escapes included)."""
    return len(dumps(build_prompt(texts, target, source)))


def item_bytes(key: int, text: str) -> int:
    """The bytes one item adds to ``prompt_bytes``: its line of the object, JSON in JSON.

    Additive because the body escapes each character on its own: the whole
    prompt's size is the empty prompt's plus its items' (give or take a comma).
    """
    line = f'\n "{key}": {json.dumps(text, ensure_ascii=False)},'
    return len(dumps(line)) - 2  # minus the quotes dumps puts around a string


def read_answer(answer: str, sources: Sequence[str]) -> list[str | None]:
    """The translation under each key ``"1"`` … ``"n"`` of ``sources``, None where the answer has none.

    The object with most of the expected keys wins; fenced blocks are tried first.
    An object that also stands in a source text is the model repeating its input
    (a paragraph that quotes ``{"1": …}``), never its answer.
    """
    count = len(sources)
    quoted = [found for source in sources if "{" in source for found in _objects(source)]
    best: dict[int, str] = {}
    for found in _candidates(_THINK.sub("", answer, count=1)):
        if found in quoted:
            continue
        picked = _answered(found, count)
        if len(picked) > len(best):
            best = picked
            if len(best) == count:
                break
    return [best.get(key) for key in range(1, count + 1)]


def suspects(sources: Sequence[str], answers: Sequence[str | None]) -> list[int]:
    """Indexes (0-based, in order) whose answer cannot be trusted and must be asked again alone."""
    count = len(answers)
    bad = {index for index, answer in enumerate(answers) if answer is None}
    for index in list(bad):
        bad.update(neighbour for neighbour in (index - 1, index + 1) if 0 <= neighbour < count)
    seen: dict[str, int] = {}
    for index, answer in enumerate(answers):
        if answer is None:
            continue
        first = seen.setdefault(answer.strip(), index)
        if first != index and sources[first].strip() != sources[index].strip():
            bad.update((first, index))  # two texts, one translation: something slid
    return sorted(bad)


def _answered(found: dict[object, object], count: int) -> dict[int, str]:
    picked: dict[int, str] = {}
    for raw_key, value in found.items():
        key = _key_number(raw_key)
        if key is None or not 1 <= key <= count or key in picked:
            continue
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            continue
        text = value if isinstance(value, str) else json.dumps(value)
        if text.strip():
            picked[key] = text
    return picked


def _key_number(raw: object) -> int | None:
    text = str(raw).strip().strip('"').rstrip(".:")
    return int(text) if text.isdigit() and len(text) <= 6 else None


def _candidates(answer: str) -> Iterator[dict[object, object]]:
    """Every JSON object in the answer: in fenced blocks first, then anywhere, outermost first."""
    for block in _FENCE.findall(answer):
        yield from _objects(block)
    yield from _objects(answer)


def _objects(text: str) -> Iterator[dict[object, object]]:
    decoder = json.JSONDecoder(strict=False)  # strict=False: raw line breaks inside strings
    position = 0
    for _ in range(_MAX_STARTS):
        start = text.find("{", position)
        if start < 0:
            return
        found, end = _decode(decoder, text, start)
        if found is None:
            position = start + 1
            continue
        yield found
        for value in found.values():  # {"translations": {"1": …}}: one level down
            if isinstance(value, dict):
                yield value
        position = end


def _decode(decoder: json.JSONDecoder, text: str, start: int) -> tuple[dict[object, object] | None, int]:
    try:
        found, end = decoder.raw_decode(text, start)
    except ValueError:
        repaired = _without_trailing_commas(text, start)
        if repaired is None:
            return None, start
        try:
            found, _ = decoder.raw_decode(repaired)
        except ValueError:
            return None, start
        end = start + 1  # offsets moved: look on from just after this brace
    return (found, end) if isinstance(found, dict) else (None, start)


def _without_trailing_commas(text: str, start: int) -> str | None:
    """``text[start:]`` with commas before ``}`` / ``]`` (outside strings) dropped; None if there were none."""
    out: list[str] = []
    in_string = escaped = changed = False
    index, size = start, len(text)
    while index < size:
        char = text[index]
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char == ",":
            ahead = index + 1
            while ahead < size and text[ahead] in " \t\r\n":
                ahead += 1
            if ahead < size and text[ahead] in "}]":
                changed = True
                index += 1
                continue
        out.append(char)
        index += 1
    return "".join(out) if changed else None
