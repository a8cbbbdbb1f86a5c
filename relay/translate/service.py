"""Translate a list of texts through the chat exchange, keeping every text on its own key.

The handler supplies ``exchange``: one non-stream chat completion under the
relay's admission rules (concurrency gate, upstream token, retries before the
first byte), the very path ``POST /v1/chat/completions`` takes. This module only
decides what to ask and what to make of the answers, so it needs no web server.

Flow for n texts: blank texts are answered as they are (nothing to translate);
the rest go out in batches (``batching``), each one upstream call; a batch's
answer is read by key (``prompt.read_answer``); whatever ``prompt.suspects``
distrusts is asked again alone, each text at most once more (so at most n more
calls). A text still unanswered after that fails the whole request with a 502:
the client gets exactly n translations in order, or an error, never a list that
slid by one.

Why one call at a time: translation clients already keep several requests in
flight (Immersive Translate about 6, Kiss Translator up to 10); one request
spreading over several gate slots at once would starve the others.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from ..config import Config
from ..dialects import ChatOptions, Completion
from ..errors import InvalidRequest, UpstreamProtocolError
from ..openai_wire import ChatRequest
from .batching import ItemTooLarge, plan_batches
from .languages import Language
from .prompt import build_prompt, item_bytes, prompt_bytes, read_answer, suspects

__all__ = ["UPSTREAM_ENVELOPE_BYTES", "Exchange", "TranslateLimits", "TranslationStats", "translate_texts"]

#: one non-stream chat completion (the gate, token and retry rules included).
Exchange = Callable[[ChatRequest, ChatOptions], Awaitable[Completion]]
#: the upstream body around the prompt (ids, feature_config, model names): ~800 bytes on
#: qwen-v2 today; 2 KB leaves room for the next field the web app adds.
UPSTREAM_ENVELOPE_BYTES = 2048


@dataclass(frozen=True, slots=True)
class TranslateLimits:
    #: ``--translate-batch-items``: texts per upstream call.
    max_items: int
    #: the bytes a prompt may take in the upstream body (``--max-upstream-body-bytes`` less the envelope).
    max_prompt_bytes: int

    @classmethod
    def from_config(cls, config: Config) -> TranslateLimits:
        return cls(config.translate_batch_items, config.max_upstream_body_bytes - UPSTREAM_ENVELOPE_BYTES)


@dataclass(slots=True)
class TranslationStats:
    """What one request cost upstream, for ``/metrics``."""

    texts: int = 0
    upstream_calls: int = 0
    reasked: int = 0


async def translate_texts(texts: Sequence[str], *, target: Language, source: Language | None,
                          options: ChatOptions, exchange: Exchange, limits: TranslateLimits,
                          stats: TranslationStats | None = None) -> list[str]:
    """``texts`` in ``target``, one translation per text, in order; or a ``RelayError``."""
    stats = stats if stats is not None else TranslationStats()
    stats.texts += len(texts)
    results: list[str | None] = [text if not text.strip() else None for text in texts]
    todo = [index for index, text in enumerate(texts) if text.strip()]
    budget = limits.max_prompt_bytes - prompt_bytes([], target, source)
    try:
        batches = plan_batches([item_bytes(position + 1, texts[index]) for position, index in enumerate(todo)],
                               budget=budget, max_items=limits.max_items)
    except ItemTooLarge as exc:
        raise InvalidRequest(
            f"Text {todo[exc.index] + 1} is too long to translate in one upstream call ({exc.size} bytes as "
            f"Qwen Chat would receive it; the limit is {max(budget, 0)}, set by --max-upstream-body-bytes). "
            "Split it into paragraphs.", param="text", code="context_length_exceeded") from None

    async def ask(indexes: Sequence[int]) -> list[str | None]:
        sources = [texts[index] for index in indexes]
        chat = _chat_request(build_prompt(sources, target, source), options.upstream_model)
        stats.upstream_calls += 1
        completion = await exchange(chat, options)
        return read_answer(completion.content, sources)

    again: list[int] = []
    for batch in batches:
        indexes = [todo[position] for position in batch]
        answers = await ask(indexes)
        distrusted = set(suspects([texts[index] for index in indexes], answers))
        for position, (index, answer) in enumerate(zip(indexes, answers, strict=True)):
            if position in distrusted:
                again.append(index)
            else:
                results[index] = _with_edges(texts[index], answer)
    stats.reasked += len(again)
    for index in again:  # alone, once each: at most n more calls
        (answer,) = await ask([index])
        if answer is None:
            raise UpstreamProtocolError(
                f"The model did not return a usable translation of text {index + 1}, even asked for it alone; "
                "no partial list is returned, so no translation can land on the wrong text.",
                code="translation_misaligned")
        results[index] = _with_edges(texts[index], answer)
    return [result if result is not None else "" for result in results]


def _chat_request(prompt: str, model: str) -> ChatRequest:
    messages = [{"role": "user", "content": prompt}]
    return ChatRequest(model=model, messages=messages, stream=False, include_usage=False,
                       body={"model": model, "messages": messages, "stream": False})


def _with_edges(source: str, answer: str | None) -> str:
    """The answer with the source's leading and trailing whitespace (models drop a final line break)."""
    if answer is None:  # only for texts suspects() let through: never None there
        raise AssertionError("an accepted answer is never None")
    core = answer.strip()
    lead = source[: len(source) - len(source.lstrip())]
    trail = source[len(source.rstrip()):]
    return lead + core + trail
