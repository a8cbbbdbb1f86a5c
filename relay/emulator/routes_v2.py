"""``POST /api/v2/chat/completions?chat_id=…``: the qwen-v2 completion (§4.2, §4.3, §7).

Every error here is a v2 envelope on HTTP 200 with the real status in
``x-actual-status-code`` (§4.5 [C]); the injected HTTP faults (``http_5xx``,
``waf``, ``risk_control``…) keep their own status, as a gateway in front would.
Admission (token, ``version``, body shape) is shared with the chat endpoints
(``routes_chats.py``); rules 1-5 of ``strict.py`` already ran in the gateway.

[I] choices where the notes are silent: the body shape is checked before the chat
is looked up, and the chat before the messages (an unknown chat wins over a bad
message list); ``chat_id`` comes from the query and falls back to the body (when
lenient: strict requires the query); an unknown model is ``Not_Found``/404;
``files[]`` and the image chat types are planned by ``images.plan_media`` after the
faults (an unusable attachment is refused in-stream, like a thinking skip);
``response.created.parent_id`` is the user message's ``fid`` (a fresh id if it has
none); a second candidate (directive ``candidates: 2``) can be stopped by either id.
"""

from __future__ import annotations

import time
import uuid

from aiohttp import web

from relay.emulator.catalogue import capabilities
from relay.emulator.faults import error_event
from relay.emulator.framing import Frame, Step, plan_events, to_json
from relay.emulator.handling import (
    EMULATOR_CONFIG,
    EMULATOR_RECORD,
    EMULATOR_STATE,
    applied_fault,
    delay_s,
    pre_stream,
    search_sources,
    v2_error,
)
from relay.emulator.images import plan_media
from relay.emulator.phase import build_reply
from relay.emulator.playback import SSE_HEADERS, play_stream
from relay.emulator.request import BadRequest, V2Request, parse_v2_request
from relay.emulator.routes_chats import read_v2_body
from relay.emulator.state import LiveResponse, RequestRecord
from relay.emulator.v2 import (
    CANNOT_SKIP_DETAILS,
    V2Stream,
    cannot_skip_thinking,
    input_tokens,
    is_thinking_on,
    think_phase_for,
    v2_error_event,
    v2_frames,
    v2_padded,
    v2_refusal,
)

__all__ = ["chat_completions_v2"]


async def chat_completions_v2(request: web.Request) -> web.StreamResponse:
    """Answer a v2 completion: always an SSE stream unless refused or faulted (§4.2, §4.3)."""
    state, config = request.app[EMULATOR_STATE], request.app[EMULATOR_CONFIG]
    record = request[EMULATOR_RECORD]
    body = await read_v2_body(request, record, "completions")
    if isinstance(body, web.Response):
        return body
    body_chat_id = body.get("chat_id")
    chat_id = request.query.get("chat_id") or (body_chat_id if isinstance(body_chat_id, str) else None)
    record.chat_id = chat_id
    stream = body.get("stream")
    record.stream = stream if isinstance(stream, bool) else None
    if not chat_id:
        return v2_error(record, 400, "Bad_Request", "chat_id is required")
    chat = state.chats.get(chat_id)
    if chat is None:
        return v2_error(record, 404, "CHAT_NOT_FOUND", "chat not found")
    try:
        v2 = parse_v2_request(body)
    except BadRequest as exc:
        return v2_error(record, exc.status, exc.code, exc.detail)
    record.model, record.user_message, record.parent_id = v2.model, v2.user_message, v2.parent_id
    record.feature_config, record.chat_type = v2.features.feature_config, v2.features.chat_type
    if v2.model not in config.models:
        return v2_error(record, 404, "Not_Found", "Model not found")
    chat.completions += 1
    fault = applied_fault(state, record, v2.directive, v2.has_directive)
    early = await pre_stream(request, state, record, v2.directive, fault, stream=True)
    if early is not None:
        return early
    if fault == "in_stream_error" and v2.directive.stream_error_form == "bare_json":
        return _bare_json(record, v2)
    media = plan_media(request, body, v2, _stream_spec(v2, chat_id, config.default_chunks))
    spec, record.rejected = media.spec, media.rejected
    record.response_id = spec.response_id
    ids = [spec.response_id] + ([spec.alt_response_id] if spec.alt_response_id else [])
    chat.responses.extend(ids)
    live = LiveResponse(chat_id)
    for response_id in ids:
        state.live_responses[response_id] = live
    try:
        steps = _plan(v2, spec, record, fault, delay_s(v2.directive, fault, config), media.frames)
        return await play_stream(request, state, record, steps, v2.directive.split, stop=live.stop)
    finally:
        for response_id in ids:
            del state.live_responses[response_id]


def _bare_json(record: RequestRecord, v2: V2Request) -> web.Response:
    """The whole body is one ``success: false`` JSON, no ``data:`` (§7.4 [C]), yet SSE-typed."""
    record.status = 200
    return web.Response(status=200, body=to_json(error_event(v2.directive)).encode(), headers=SSE_HEADERS)


def _plan(v2: V2Request, spec: V2Stream, record: RequestRecord, fault: str | None, delay: float,
          media: list[Frame] | None) -> list[Step]:
    """Plan the stream: the answer with its fault, an image stream, or an in-stream refusal (§7.3, images.py)."""
    if media is not None:  # an attachment refusal ignores faults, as the thinking one does
        is_refusal = record.rejected is not None
        return plan_events(media, v2.directive, fault=None if is_refusal else fault, delay_s=delay,
                           error={} if is_refusal else v2_error_event(v2.directive, spec.response_id),
                           padded=v2_padded(spec.response_id))
    if cannot_skip_thinking(v2.features, capabilities(v2.model)):
        record.rejected = "think_skip"
        frames = v2_refusal(spec, "invalid_input", CANNOT_SKIP_DETAILS)
        return plan_events(frames, v2.directive, fault=None, delay_s=delay, error={},
                           padded=v2_padded(spec.response_id))
    return plan_events(
        v2_frames(spec),
        v2.directive,
        fault=fault,
        delay_s=delay,
        error=v2_error_event(v2.directive, spec.response_id),
        padded=v2_padded(spec.response_id),
    )


def _stream_spec(v2: V2Request, chat_id: str, default_chunks: int) -> V2Stream:
    directive = v2.directive
    caps = capabilities(v2.model)
    reply = build_reply(
        directive,
        v2.user_text,
        default_chunks,
        thinking=is_thinking_on(v2.features, directive, caps),
        model_thinks=caps.can_think,
    )
    return V2Stream(
        chat_id=chat_id,
        response_id=str(uuid.uuid4()),
        parent_id=v2.user_fid or str(uuid.uuid4()),
        reply=reply,
        think_phase=think_phase_for(v2.features, directive),
        summary_mode=directive.summary_mode,
        sources=search_sources(v2.features, directive, caps),
        input_tokens=None if directive.usage is False else input_tokens(v2.user_message),
        keepalives=directive.keepalive_info,
        done=directive.done is True,
        timestamp=int(time.time()),
        alt_response_id=str(uuid.uuid4()) if directive.candidates == 2 else None,
        extra_phases=directive.extra_phases,
    )
