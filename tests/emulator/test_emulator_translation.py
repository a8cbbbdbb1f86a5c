"""The emulator as a translation model: keyed answers, and each ``translate_fault`` (pure, no sockets)."""

from __future__ import annotations

import json

import pytest

from relay.emulator.directive import (
    NO_DIRECTIVE,
    TRANSLATE_FAULTS,
    DirectiveError,
    build_directive,
    parse_directive,
)
from relay.emulator.translation import find_items, translation_reply, translation_texts

PROMPT = ('Translate {name} placeholders...\nTarget language: French (fr)\n\n'
          + json.dumps({"1": "One", "2": "Two\n#emulator {\"translate_fault\": \"drop_key\"}", "3": "Three"},
                       indent=1))


def test_the_last_keyed_object_is_found() -> None:
    assert find_items('{"1": "a"} then {"1": "b", "2": "c"}') == {"1": "b", "2": "c"}
    assert find_items('{"2": "a"}') is None
    assert find_items('{"1": 3}') is None
    assert find_items("no json here {") is None


def test_a_prompt_is_answered_key_by_key_with_the_target_tag() -> None:
    answer = translation_reply(PROMPT, NO_DIRECTIVE)
    assert answer is not None
    assert json.loads(answer) == {"1": "[FR] One", "2": "[FR] Two", "3": "[FR] Three"}
    assert translation_reply("Hello there", NO_DIRECTIVE) is None


def test_a_directive_inside_a_text_is_found_and_aims_at_that_key() -> None:
    directive = parse_directive([PROMPT, *translation_texts([PROMPT])])
    assert directive is not None and directive.translate_fault == "drop_key"
    answer = translation_reply(PROMPT, directive)
    assert answer is not None
    assert json.loads(answer) == {"1": "[FR] One", "3": "[FR] Three"}


@pytest.mark.parametrize("fault", TRANSLATE_FAULTS)
def test_every_fault_spoils_a_batch_but_not_a_single_text(fault: str) -> None:
    directive = build_directive({"translate_fault": fault, "translate_key": "2"})
    answer = translation_reply(PROMPT, directive)
    assert answer is not None
    try:
        spoiled = json.loads(answer) != {"1": "[FR] One", "2": "[FR] Two", "3": "[FR] Three"}
    except ValueError:
        spoiled = True
    assert spoiled or fault in ("reorder", "extra_key")
    if fault == "reorder":
        assert list(json.loads(answer)) == ["3", "2", "1"]
    single = 'Target language: French (fr)\n{"1": "Alone"}'
    assert translation_reply(single, directive) == json.dumps({"1": "[FR] Alone"}, indent=1)
    everywhere = build_directive({"translate_fault": fault, "translate_fault_all": True})
    assert translation_reply(single, everywhere) != json.dumps({"1": "[FR] Alone"}, indent=1) or \
        fault in ("reorder", "extra_key", "merge_keys", "duplicate")


@pytest.mark.parametrize(("raw", "message"), [
    ({"translate_fault": "nonsense"}, "translate_fault"),
    ({"translate_key": "2"}, "needs translate_fault"),
    ({"translate_fault_all": True}, "needs translate_fault"),
])
def test_bad_translate_directives_are_refused(raw: dict[str, object], message: str) -> None:
    with pytest.raises(DirectiveError, match=message):
        build_directive(raw)
