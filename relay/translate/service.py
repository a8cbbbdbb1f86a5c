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

With the translation cache (``cache.ItemCache``) the texts it holds are answered
from it and only the others are batched; identical texts are sent once, and an
item another request is translating right now is waited for, not asked again.

Why one call at a time: translation clients already keep several requests in
flight (Immersive Translate about 6, Kiss Translator up to 10); one request
spreading over several gate slots at once would starve the others.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from contextlib import aclosing
from dataclasses import dataclass

from ..config import Config
from ..dialects import ChatOptions
from ..errors import InvalidRequest, UpstreamProtocolError
from ..openai_wire import ChatRequest
from ..pipeline.aggregate import Aggregate
from .batching import ItemTooLarge, plan_batches
from .cache import ItemCache, item_key
from .languages import Language
from .prompt import build_prompt, item_bytes, prompt_bytes, read_answer, suspects

__all__ = ["UPSTREAM_ENVELOPE_BYTES", "Exchange", "TranslateLimits", "TranslationStats", "translate_texts"]

#: one non-stream chat completion (the gate, token and retry rules included).
Exchange = Callable[[ChatRequest, ChatOptions], Awaitable[Aggregate]]
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
                          stats: TranslationStats | None = None, cache: ItemCache | None = None) -> list[str]:
    """``texts`` in ``target``, one translation per text, in order; or a ``RelayError``.

    With a ``cache``, only the texts it does not hold go upstream (each distinct
    text once), and what comes back is stored for the next request.
    """
    stats = stats if stats is not None else TranslationStats()
    stats.texts += len(texts)
    results: list[str | None] = [text if not text.strip() else None for text in texts]
    todo = [index for index, text in enumerate(texts) if text.strip()]
    ask = _Asker(texts, target, source, options, exchange, limits, stats)
    if cache is None:
        async with aclosing(ask.answers(todo)) as answers:
            async for answered in answers:
                for index, translation in answered:
                    results[index] = translation
    else:
        keys = {index: item_key(options.upstream_model, source, target, texts[index]) for index in todo}
        known = await _cached(ask, cache, todo, keys)
        for index in todo:
            results[index] = known[keys[index]]
    return [result if result is not None else "" for result in results]


async def _cached(ask: _Asker, cache: ItemCache, todo: Sequence[int], keys: dict[int, bytes]) -> dict[bytes, str]:
    """The translation of every key of ``todo``: stored, led upstream by us, or shared with a flight.

    Leads first, then waits on the flights: a request never waits while holding an
    item someone else waits for, so two requests following each other cannot deadlock.
    """
    known = await cache.lookup([keys[index] for index in todo])
    lead: list[int] = []
    follow: dict[bytes, tuple[int, asyncio.Future[str | None]]] = {}
    taken = set(known)
    for index in todo:
        key = keys[index]
        if key in taken:
            continue  # stored, or this request already carries an identical text
        taken.add(key)
        flight = cache.join(key)
        if flight is None:
            lead.append(index)
        else:
            follow[key] = (index, flight)
    await _lead(ask, cache, lead, keys, known, flights=True)
    again: list[int] = []
    for key, (index, flight) in follow.items():
        # shield: a follower cancelled (its client gone) must not cancel the flight others share.
        translation = await asyncio.shield(flight)
        if translation is None:
            again.append(index)  # its leader failed or left: ask ourselves
        else:
            known[key] = translation
    await _lead(ask, cache, again, keys, known, flights=False)
    return known


async def _lead(ask: _Asker, cache: ItemCache, indexes: Sequence[int], keys: dict[int, bytes],
                known: dict[bytes, str], *, flights: bool) -> None:
    """Translate ``indexes`` upstream, storing each call's answers as it returns."""
    if not indexes:
        return
    try:
        async with aclosing(ask.answers(indexes)) as answers:
            async for answered in answers:
                translations = {keys[index]: translation for index, translation in answered}
                known.update(translations)
                await cache.settle(translations)
    finally:
        if flights:
            cache.abandon([keys[index] for index in indexes])  # only those not settled are still in flight


class _Asker:
    """Batches, asks, reads and asks again: the upstream half of ``translate_texts``."""

    def __init__(self, texts: Sequence[str], target: Language, source: Language | None, options: ChatOptions,
                 exchange: Exchange, limits: TranslateLimits, stats: TranslationStats) -> None:
        self.texts, self.target, self.source = texts, target, source
        self.options, self.exchange, self.limits, self.stats = options, exchange, limits, stats

    async def answers(self, todo: Sequence[int]) -> AsyncGenerator[list[tuple[int, str]], None]:
        """``(index, translation)`` pairs of ``todo``, one list per upstream call, in order."""
        texts, limits = self.texts, self.limits
        budget = limits.max_prompt_bytes - prompt_bytes([], self.target, self.source)
        try:
            batches = plan_batches([item_bytes(position + 1, texts[index]) for position, index in enumerate(todo)],
                                   budget=budget, max_items=limits.max_items)
        except ItemTooLarge as exc:
            raise InvalidRequest(
                f"Text {todo[exc.index] + 1} is too long to translate in one upstream call ({exc.size} bytes as "
                f"Qwen Chat would receive it; the limit is {max(budget, 0)}, set by --max-upstream-body-bytes). "
                "Split it into paragraphs.", param="text", code="context_length_exceeded") from None
        again: list[int] = []
        for batch in batches:
            indexes = [todo[position] for position in batch]
            answers = await self._ask(indexes)
            distrusted = set(suspects([texts[index] for index in indexes], answers))
            accepted = []
            for position, (index, answer) in enumerate(zip(indexes, answers, strict=True)):
                if position in distrusted:
                    again.append(index)
                else:
                    accepted.append((index, _with_edges(texts[index], answer)))
            yield accepted
        self.stats.reasked += len(again)
        for index in again:  # alone, once each: at most n more calls
            (answer,) = await self._ask([index])
            if answer is None:
                raise UpstreamProtocolError(
                    f"The model did not return a usable translation of text {index + 1}, even asked for it "
                    "alone; no partial list is returned, so no translation can land on the wrong text.",
                    code="translation_misaligned")
            yield [(index, _with_edges(texts[index], answer))]

    async def _ask(self, indexes: Sequence[int]) -> list[str | None]:
        sources = [self.texts[index] for index in indexes]
        chat = _chat_request(build_prompt(sources, self.target, self.source), self.options.upstream_model)
        self.stats.upstream_calls += 1
        completion = await self.exchange(chat, self.options)
        return read_answer(completion.content, sources)


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
