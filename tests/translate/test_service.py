"""translate_texts against a model that misbehaves: n translations in order, or an error.

The exchange is a fake at the network edge (what the upstream answers), not a
mock of relay code: it reads the real prompt and answers like a model would.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.dialects import ChatOptions, Completion
from relay.errors import InvalidRequest, UpstreamProtocolError
from relay.openai_wire import ChatRequest
from relay.translate import Language, TranslateLimits, TranslationStats, parse_language, translate_texts
from relay.translate.prompt import item_bytes, prompt_bytes
from tests.strategies import translation_texts


def _language(code: str) -> Language:
    language = parse_language(code, param="to", allow_auto=False)
    assert language is not None
    return language


GERMAN = _language("de")
OPTIONS = ChatOptions(upstream_model="qwen-turbo-latest", thinking=False)
LIMITS = TranslateLimits(max_items=40, max_prompt_bytes=100_000)

#: what one call answers, given the texts it carries and whether it was a batch.
Model = Callable[[list[str], int], str]


def _items(chat: ChatRequest) -> list[str]:
    prompt = chat.messages[0]["content"]
    items = json.loads(prompt[prompt.rindex('{\n "1"'):]) if '{\n "1"' in prompt else {}
    return [items[str(key)] for key in range(1, len(items) + 1)]


class FakeModel:
    """Answers each prompt through ``behave``; keeps the texts of every call it got."""

    def __init__(self, behave: Model) -> None:
        self.behave = behave
        self.calls: list[list[str]] = []

    async def __call__(self, chat: ChatRequest, options: ChatOptions) -> Completion:
        assert options.thinking is False
        texts = _items(chat)
        self.calls.append(texts)
        return Completion(self.behave(texts, len(self.calls)), "", "stop", None)


def good(texts: list[str], _call: int) -> str:
    return json.dumps({str(key): f"T({text.strip()})" for key, text in enumerate(texts, 1)}, ensure_ascii=False)


def expected(texts: list[str]) -> list[str]:
    out = []
    for text in texts:
        if not text.strip():
            out.append(text)
            continue
        lead, trail = text[: len(text) - len(text.lstrip())], text[len(text.rstrip()):]
        out.append(f"{lead}T({text.strip()}){trail}")
    return out


def run(texts: list[str], model: FakeModel, limits: TranslateLimits = LIMITS,
        stats: TranslationStats | None = None) -> list[str]:
    return asyncio.run(translate_texts(texts, target=GERMAN, source=None, options=OPTIONS, exchange=model,
                                       limits=limits, stats=stats))


def test_a_good_model_answers_in_one_call() -> None:
    model = FakeModel(good)
    texts = ["Hello", "<b>World</b>\n", "  {name}  "]
    assert run(texts, model) == expected(texts)
    assert model.calls == [texts]


def test_blank_texts_never_go_upstream() -> None:
    model = FakeModel(good)
    assert run(["", "  ", "\n"], model) == ["", "  ", "\n"]
    assert model.calls == []


def test_a_dropped_key_is_asked_again_alone_with_its_neighbours() -> None:
    def drop_second(texts: list[str], call: int) -> str:
        answer = json.loads(good(texts, call))
        if len(texts) > 1:
            del answer["2"]
        return json.dumps(answer)

    model = FakeModel(drop_second)
    stats = TranslationStats()
    texts = ["a", "b", "c", "d"]
    assert run(texts, model, stats=stats) == expected(texts)
    assert model.calls == [texts, ["a"], ["b"], ["c"]]
    assert (stats.upstream_calls, stats.reasked) == (4, 3)


def test_a_text_unanswered_even_alone_is_an_error_not_a_shorter_list() -> None:
    model = FakeModel(lambda texts, call: "I cannot translate this.")
    with pytest.raises(UpstreamProtocolError) as caught:
        run(["a", "b"], model)
    assert caught.value.instance_code == "translation_misaligned"
    assert len(model.calls) == 2  # the batch, then the first text alone: no more after a failure


def test_batches_respect_the_item_cap_and_number_keys_from_one() -> None:
    model = FakeModel(good)
    texts = [f"t{i}" for i in range(7)]
    assert run(texts, model, TranslateLimits(max_items=3, max_prompt_bytes=100_000)) == expected(texts)
    assert model.calls == [texts[0:3], texts[3:6], texts[6:7]]


def test_batches_respect_the_byte_budget() -> None:
    model = FakeModel(good)
    texts = ["x" * 500 for _ in range(6)]
    budget = prompt_bytes([], GERMAN, None) + 2 * item_bytes(1, texts[0]) + 10
    assert run(texts, model, TranslateLimits(max_items=40, max_prompt_bytes=budget)) == expected(texts)
    assert [len(call) for call in model.calls] == [2, 2, 2]


def test_a_text_too_large_for_one_call_is_a_400_before_any_call() -> None:
    model = FakeModel(good)
    with pytest.raises(InvalidRequest) as caught:
        run(["short", "y" * 5000], model, TranslateLimits(max_items=40, max_prompt_bytes=3000))
    assert caught.value.instance_code == "context_length_exceeded" and "Text 2" in caught.value.message
    assert model.calls == []


# --- the property --------------------------------------------------------------------------------------

_FAULTS = st.sampled_from(["drop", "empty", "merge", "duplicate", "reorder", "prose", "fence", "garbage"])


def _spoiled(faults: list[tuple[int, str]], single_fails: bool) -> Model:
    """A model that spoils each batch answer with the drawn faults (and single ones if asked).

    Each fault touches keys no other fault touched: a chain of copies (4 takes 3's
    translation, then 3 takes 2's) is a shift, which no reader can see in the values;
    the keyed prompt is what makes a model unlikely to write one.
    """
    def behave(texts: list[str], call: int) -> str:
        answer: dict[str, str] = json.loads(good(texts, call))
        if len(texts) == 1 and not single_fails:
            return json.dumps(answer)
        touched: set[str] = set()
        for at, fault in faults:
            key = str(at % len(texts) + 1)
            other = str(at % len(texts)) if key != "1" else "2"
            if key not in answer or key in touched or other in touched:
                continue
            touched.update((key, other))
            if fault == "drop":
                del answer[key]
            elif fault == "empty":
                answer[key] = ""
            elif fault == "merge" and other in answer and other != key:
                answer[other] += " " + answer.pop(key)
            elif fault == "duplicate" and other in answer:
                answer[key] = answer[other]
            elif fault == "reorder":
                answer = dict(reversed(answer.items()))
            elif fault == "prose":
                return "\n".join(answer.values())
            elif fault == "fence":
                return f"```json\n{json.dumps(answer)}\n```"
            elif fault == "garbage":
                return "{{{ not json"
        return json.dumps(answer, ensure_ascii=False)

    return behave


@settings(max_examples=150, deadline=None)
@given(translation_texts, st.lists(st.tuples(st.integers(0, 20), _FAULTS), max_size=4), st.booleans(),
       st.integers(1, 5))
def test_never_a_shifted_list(texts: list[str], faults: list[tuple[int, str]], single_fails: bool,
                              max_items: int) -> None:
    """n texts in → exactly the n right translations in order, or an error; and at most n more calls."""
    model = FakeModel(_spoiled(faults, single_fails))
    try:
        result = run(texts, model, TranslateLimits(max_items=max_items, max_prompt_bytes=100_000))
    except UpstreamProtocolError:
        assert faults and single_fails
        return
    assert result == expected(texts)
    batches = -(-sum(1 for text in texts if text.strip()) // max_items)
    assert len(model.calls) <= batches + len(texts)
