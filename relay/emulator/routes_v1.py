"""``POST /api/chat/completions``: the qwen-v1 and qwen-phase dialects (§2, §3).

One path, two dialects told apart by the body (§3 [C]): ``incremental_output`` and
``feature_config.output_schema: "phase"``. Request flow: check the token → validate
the body → read the directive → decide whether its fault applies (``fail_times``)
→ answer: an error response, a JSON completion, or a planned SSE stream.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

from aiohttp import web

from relay.emulator.catalogue import capabilities
from relay.emulator.faults import IN_STREAM_ERROR, error_event
from relay.emulator.framing import Step, plan_events
from relay.emulator.handling import (
    EMULATOR_CONFIG,
    EMULATOR_RECORD,
    EMULATOR_STATE,
    applied_fault,
    delay_s,
    detail,
    judge_access,
    pre_stream,
    read_json,
    respond,
    search_sources,
    token,
    unauthorized_v1,
)
from relay.emulator.phase import build_reply, phase_frames, phase_padded
from relay.emulator.playback import abort, play_stream
from relay.emulator.request import BadRequest, ChatRequest, parse_chat_request
from relay.emulator.script import build_answer, completion_body, event_texts, plan_stream, usage_counts
from relay.emulator.state import RequestRecord

__all__ = ["chat_v1"]


async def chat_v1(request: web.Request) -> web.StreamResponse:
    """Answer a v1-path completion: v1 cumulative, incremental, or phase-tagged."""
    state, config = request.app[EMULATOR_STATE], request.app[EMULATOR_CONFIG]
    record = request[EMULATOR_RECORD]
    if not judge_access(request, token(request)).ok:
        return unauthorized_v1(record)
    try:
        body = await read_json(request)
    except ValueError:
        return detail(record, 400, "Request body is not valid JSON")
    try:
        chat = parse_chat_request(body)
    except BadRequest as exc:
        return detail(record, exc.status, exc.detail)
    record.model, record.stream, record.dialect = chat.model, chat.stream, chat.dialect
    record.feature_config, record.chat_type = chat.features.feature_config, chat.features.chat_type
    if chat.model not in config.models:
        return detail(record, 404, "Model not found")
    directive = chat.directive
    fault = applied_fault(state, record, directive, chat.has_directive)
    early = await pre_stream(request, state, record, directive, fault, stream=chat.stream)
    if early is not None:
        return early
    if not chat.stream:
        return await _complete(request, record, fault, chat)
    steps = _plan(chat, fault, request.app[EMULATOR_CONFIG].default_chunks, delay_s(directive, fault, config))
    return await play_stream(request, state, record, steps, directive.split)


def _thinking(chat: ChatRequest) -> bool:
    """Phase thinking needs ``feature_config.thinking_enabled: true`` (§3 [C])."""
    return chat.features.flag("thinking_enabled") is True


def _inline_thinking(chat: ChatRequest) -> bool:
    """v1 inline thinking is off only when the request says so (§2.3: ``thinking_enabled``)."""
    return chat.features.flag("thinking_enabled") is not False


def _plan(chat: ChatRequest, fault: str | None, default_chunks: int, delay: float) -> list[Step]:
    directive = chat.directive
    caps = capabilities(chat.model)
    sources = search_sources(chat.features, directive, caps)
    prompt = "\n".join(chat.texts)
    if chat.is_phase:
        reply = build_reply(
            directive, chat.user_text, default_chunks, thinking=_thinking(chat), model_thinks=caps.can_think
        )
        usage = usage_counts(prompt, reply.answer_text) if directive.usage is True else None
        frames = phase_frames(
            reply, incremental=chat.incremental, sources=sources, usage=usage, done=directive.done is not False
        )
        error = error_event(directive)
        return plan_events(frames, directive, fault=fault, delay_s=delay, error=error, padded=phase_padded)
    answer = build_answer(directive, chat.user_text, default_chunks, thinking=_inline_thinking(chat))
    texts = event_texts(
        answer,
        incremental=chat.incremental,
        repeat_identical=directive.repeat_identical,
        rewrite=directive.rewrite,
    )
    # Usage in stream chunks is unconfirmed for v1 (§2.3): sent only on request.
    usage = usage_counts(prompt, answer.text) if directive.usage is True else None
    return plan_stream(
        texts, directive, fault=fault, delay_s=delay, incremental=chat.incremental, usage=usage, sources=sources
    )


async def _complete(
    request: web.Request, record: RequestRecord, fault: str | None, chat: ChatRequest
) -> web.StreamResponse:
    """Answer ``stream:false``; stream faults map to their nearest non-stream form.

    [I] In phase mode the thinking stays inline as ``<think>…</think>`` (the only
    non-stream shape the notes know, §2.4), and only when thinking is enabled.
    Search results are not part of a non-stream answer.
    """
    if fault == "reset_mid":
        await abort(request)
        return web.Response(status=204)  # never delivered: the connection is gone
    if fault == "in_stream_error":
        error = IN_STREAM_ERROR if chat.directive.stream_error is None else error_event(chat.directive)
        return respond(record, 200, error)
    config = request.app[EMULATOR_CONFIG]
    if chat.is_phase:
        caps = capabilities(chat.model)
        reply = build_reply(
            chat.directive, chat.user_text, config.default_chunks, thinking=_thinking(chat),
            model_thinks=caps.can_think,
        )
        think = reply.think_text
        text = (f"<think>{think}</think>" if think is not None else "") + reply.answer_text
    else:
        text = build_answer(chat.directive, chat.user_text, config.default_chunks, thinking=_inline_thinking(chat)).text
    usage: Mapping[str, int] | None = None
    if chat.directive.usage is not False:
        usage = usage_counts("\n".join(chat.texts), text)
    body = completion_body(text, chat.model, record.number, int(time.time()), usage)
    return respond(record, 200, body)
