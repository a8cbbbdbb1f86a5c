"""How the emulator answers a translation prompt, well or (on request) badly.

A translation prompt is recognised by what the relay's translation endpoints put
in it (``relay/translate/prompt.py``) and what any keyed batch prompt has: a JSON
object whose keys are ``"1"`` … ``"n"`` with string values. The emulator answers
it like an obliging model: one JSON object, the same keys, each value
"translated" as ``"[<TAG>] " + text``, where TAG is the upper-cased tag of the
prompt's ``Target language: <name> (<tag>)`` line (``[FR]``), or ``[TR]``
without one. Directive lines in a text are dropped from its translation.

Directives may sit inside a text: the relay sends each text as a JSON string, so
a ``#emulator {...}`` line there never starts a line of the message. The
request parser also looks for directives in the values of this object
(``translation_texts``), which lets a test steer a single text.

``translate_fault`` makes the answer bad in one way, at ``translate_key`` (by
default the key whose text holds the directive, else "1"):

- ``drop_key``: the key is missing; ``empty_key``: its value is ``""``;
- ``merge_keys``: its translation is appended to the previous key's (the next
  one's for "1") and the key is left out, as a model that joins paragraphs does;
- ``duplicate``: it gets the previous key's translation (the next one's for "1");
- ``extra_key``: a key n+1 is added;
- ``reorder``: the keys come in reverse order (each still with its own text);
- ``commentary``: prose before and after the JSON; ``code_fence``: in a
  ```` ```json ```` fence; ``trailing_comma``: a comma before the closing brace;
- ``prose``: no JSON at all, one translation per line; ``list``: a JSON array.

A prompt of one key is answered well unless ``translate_fault_all`` is true, as a
model that garbles a long list usually manages a single text; that lets a relay
that asks again alone recover, and ``translate_fault_all`` tests when it cannot.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator

from relay.emulator.directive import DIRECTIVE_LINE, TRANSLATE_FAULTS, Directive, strip_directives

__all__ = ["TRANSLATE_FAULTS", "find_items", "translation_reply", "translation_texts"]

_TARGET = re.compile(r"^Target language: .*\(([A-Za-z0-9-]+)\)\s*$", re.MULTILINE)
#: ``{`` positions tried per text: a prompt has few outside its object.
_MAX_STARTS = 256


def find_items(text: str) -> dict[str, str] | None:
    """The last ``{"1": …, "n": …}`` object of string values in ``text``, or None."""
    found: dict[str, str] | None = None
    for candidate in _objects(text):
        keys = list(candidate)
        if keys and keys == [str(k) for k in range(1, len(keys) + 1)]:
            values = {key: value for key, value in candidate.items() if isinstance(value, str)}
            if len(values) == len(keys):
                found = values
    return found


def translation_texts(texts: Iterable[str]) -> list[str]:
    """The values of every translation object in ``texts``: where directives may also hide."""
    values: list[str] = []
    for text in texts:
        if '"1"' in text:
            items = find_items(text)
            if items is not None:
                values.extend(items.values())
    return values


def translation_reply(user_text: str, directive: Directive) -> str | None:
    """The answer to a translation prompt, or None when ``user_text`` is not one."""
    items = find_items(user_text)
    if items is None:
        return None
    match = _TARGET.search(user_text)
    tag = match.group(1).upper() if match is not None else "TR"
    answer = {key: f"[{tag}] {strip_directives(text)}" for key, text in items.items()}
    fault = directive.translate_fault
    if fault is None or (len(items) == 1 and not directive.translate_fault_all):
        return _dump(answer)
    return _spoil(answer, fault, directive.translate_key or _directive_key(items))


def _directive_key(items: dict[str, str]) -> str:
    for key, text in items.items():
        if any(DIRECTIVE_LINE.match(line) for line in text.splitlines()):
            return key
    return "1"


def _spoil(answer: dict[str, str], fault: str, key: str) -> str:
    keys = list(answer)
    if key not in answer:
        key = keys[0]
    other = keys[keys.index(key) - 1] if key != keys[0] else (keys[1] if len(keys) > 1 else key)
    if fault == "drop_key":
        del answer[key]
    elif fault == "empty_key":
        answer[key] = ""
    elif fault == "merge_keys":
        if other != key:
            answer[other] = f"{answer[other]} {answer.pop(key)}"
    elif fault == "duplicate":
        answer[key] = answer[other]
    elif fault == "extra_key":
        answer[str(len(keys) + 1)] = "[EXTRA] a paragraph nobody asked for"
    elif fault == "reorder":
        answer = dict(reversed(answer.items()))
    elif fault == "commentary":
        return f"Sure! Here are the translations:\n\n{_dump(answer)}\n\nLet me know if you need anything else."
    elif fault == "code_fence":
        return f"```json\n{_dump(answer)}\n```"
    elif fault == "trailing_comma":
        return _dump(answer)[:-2] + ",\n}"
    elif fault == "prose":
        return "\n".join(answer.values())
    elif fault == "list":
        return json.dumps(list(answer.values()), ensure_ascii=False)
    return _dump(answer)


def _dump(answer: dict[str, str]) -> str:
    return json.dumps(answer, ensure_ascii=False, indent=1)


def _objects(text: str) -> Iterator[dict[str, object]]:
    decoder = json.JSONDecoder()
    position = 0
    for _ in range(_MAX_STARTS):
        start = text.find("{", position)
        if start < 0:
            return
        try:
            found, end = decoder.raw_decode(text, start)
        except ValueError:
            position = start + 1
            continue
        if isinstance(found, dict):
            yield found
        position = end
