"""The phase-tagged stream of qwen-phase and qwen-v2 (§4.3, §7.4), and request resolution (issue 4)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from relay.dialects.common import fold_messages, model_variants
from relay.dialects.options import resolve_options
from relay.dialects.phased import SummaryText, phase_frames
from relay.errors import (
    AuthenticationFailed,
    InvalidRequest,
    UpstreamChallenge,
    UpstreamError,
    UpstreamRateLimited,
    UpstreamUnavailable,
)
from relay.openai_wire import parse_chat_request
from relay.pipeline import parse_payloads
from relay.pipeline.frames import Frame, StreamStats
from tests.strategies import interleavings, splits, sse_texts, summary_lists


async def _payloads(*items: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
    for item in items:
        yield item


def frame(phase: Any, content: str = "", status: str = "typing", rid: str | None = "r1",
          **delta: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"content": content, "status": status, **delta}
    if phase is not None:
        body["phase"] = phase
    payload: dict[str, Any] = {"choices": [{"delta": body}]}
    if rid is not None:
        payload["response_id"] = rid
    return payload


def created(rid: str, index: str = "0") -> dict[str, Any]:
    return {"response.created": {"chat_id": "c1", "parent_id": "p0", "response_id": rid, "response_index": index}}


def content_of(frames: list[Frame]) -> str:
    return "".join(f.content for f in frames)


def reasoning_of(frames: list[Frame]) -> str:
    return "".join(f.reasoning for f in frames)


def finishes(frames: list[Frame]) -> list[str]:
    return [f.finish_reason for f in frames if f.finish_reason]


async def run(*items: dict[str, Any], stats: StreamStats | None = None) -> list[Frame]:
    return [f async for f in phase_frames(_payloads(*items), stats or StreamStats())]


async def test_think_and_answer_phases_map_to_reasoning_and_content() -> None:
    out = await run(frame("think", "Let me"), frame("think", " see"), frame("think", status="finished"),
                    frame("answer", "Hi"), frame("answer", "!"), frame("answer", status="finished"))
    assert "".join(f.reasoning for f in out) == "Let me see"
    assert "".join(f.content for f in out) == "Hi!"
    assert [f.finish_reason for f in out if f.finish_reason] == ["stop"]


async def test_finished_answer_ends_the_stream_even_without_done() -> None:
    """Frames after the finished answer frame are never read (v2 sends no [DONE])."""
    out = await run(frame("answer", "A"), frame("answer", status="finished"), frame("answer", "late"))
    assert "".join(f.content for f in out) == "A"


async def test_finished_thinking_does_not_end_the_stream() -> None:
    out = await run(frame("thinking_summary", extra={"summary_thought": {"content": ["p1"]}}),
                    frame("thinking_summary", status="finished"), frame("answer", "ok"),
                    frame("answer", status="finished"))
    assert "".join(f.content for f in out) == "ok"


async def test_response_created_and_keepalives_are_not_text() -> None:
    stats = StreamStats()
    out = await run({"response.created": {"chat_id": "c1", "response_id": "r9"}},
                    {"response.info": {"action": "keep_alive"}}, frame("answer", "x", rid="r9"), stats=stats)
    assert stats.response_id == "r9"
    assert [f.content for f in out] == ["x"]


async def test_running_usage_is_mapped_and_the_last_one_kept() -> None:
    usage = {"input_tokens": 10, "output_tokens": 3, "total_tokens": 13,
             "output_tokens_details": {"reasoning_tokens": 2}}
    out = await run({**frame("answer", "a"), "usage": usage})
    assert out[0].usage == {"prompt_tokens": 10, "completion_tokens": 3, "total_tokens": 13,
                            "completion_tokens_details": {"reasoning_tokens": 2}}


async def test_no_phase_key_is_answer_text() -> None:
    """qwen-phase without output_schema omits ``phase``: the text must not vanish (§3)."""
    out = await run(frame(None, "plain"), frame(None, " text"))
    assert "".join(f.content for f in out) == "plain text"


async def test_web_search_sources_follow_the_answer() -> None:
    info = {"web_search_info": [{"title": "Doc", "url": "https://d.example"}]}
    out = await run(frame("web_search", name="web_search", extra=info), frame("answer", "Answer"),
                    frame("answer", status="finished"))
    text = "".join(f.content for f in out)
    assert text.startswith("Answer") and "[Doc](https://d.example)" in text


@pytest.mark.parametrize(("code", "error"), [("Unauthorized", AuthenticationFailed),
                                              ("Too_Many_Requests", UpstreamRateLimited),
                                              ("RateLimited", UpstreamRateLimited)])
async def test_in_stream_error_codes_map_to_openai_errors(code: str, error: type[Exception]) -> None:
    with pytest.raises(error):
        await run(frame("answer", "a"), {"error": {"code": code, "details": "x"}, "response_id": "r1"})


@settings(max_examples=100, deadline=None)
@given(paragraphs=st.lists(st.text(min_size=1, max_size=20).filter(lambda p: "\n\n" not in p), max_size=6))
def test_cumulative_summary_lists_give_each_paragraph_once(paragraphs: list[str]) -> None:
    summary = SummaryText()
    out = "".join(summary.delta(paragraphs[:n]) for n in range(1, len(paragraphs) + 1))
    assert out == "\n\n".join(paragraphs)




def test_incremental_summary_pieces_are_joined_without_blank_lines() -> None:
    """A frame that does not extend the text so far switches to incremental: the
    pieces follow each other as sent, nothing inserted between them (§7.4)."""
    summary = SummaryText()
    assert summary.delta(["First."]) + summary.delta(["Second."]) + summary.delta([" Third", "."]) \
        == "First.Second. Third."


def test_a_repeated_cumulative_summary_adds_nothing() -> None:
    summary = SummaryText()
    parts = [summary.delta(["a"]), summary.delta(["a"]), summary.delta(["a", "b"]), summary.delta(["a", "b"])]
    assert "".join(parts) == "a\n\nb"


def test_an_empty_summary_list_does_not_switch_to_incremental() -> None:
    summary = SummaryText()
    assert [summary.delta(["ab"]), summary.delta([]), summary.delta([""]), summary.delta(["abc"])] \
        == ["ab", "", "", "c"]


def _summary_frame(paragraphs: list[str]) -> dict[str, Any]:
    return frame("thinking_summary", extra={"summary_title": {"content": ["Thought 1"]},
                                            "summary_thought": {"content": paragraphs}})


async def _summary_stream(lists: list[list[str]]) -> list[Frame]:
    return await run(*[_summary_frame(paragraphs) for paragraphs in lists],
                     frame("thinking_summary", status="finished"), frame("answer", "ok"),
                     frame("answer", status="finished"))


@settings(max_examples=200, deadline=None)
@given(st.data())
async def test_cumulative_summaries_give_exactly_the_thinking(data: st.DataObject) -> None:
    """Any thinking, split anywhere, sent as the whole paragraph list so far (the
    emulator's ``so_far.split("\\n\\n")``): the reasoning is that text, once (§7.4)."""
    text = data.draw(sse_texts)
    out = await _summary_stream(summary_lists(data.draw(splits(text))))
    assert reasoning_of(out) == text
    assert content_of(out) == "ok"


def _looks_cumulative(pieces: list[str]) -> bool:
    """An incremental stream whose second piece begins with its first (empty pieces
    aside) reads as cumulative: the one split no rule can tell apart (SummaryText)."""
    texts = [piece for piece in pieces if piece]
    return len(texts) > 1 and texts[1].startswith(texts[0])


@settings(max_examples=200, deadline=None)
@given(st.data())
async def test_incremental_summaries_give_exactly_the_thinking(data: st.DataObject) -> None:
    """Any thinking, split anywhere, sent one new piece per frame: the reasoning is
    that text, with no blank line inserted between pieces."""
    text = data.draw(sse_texts)
    pieces = data.draw(splits(text))
    assume(not _looks_cumulative(pieces))
    out = await _summary_stream([[piece] for piece in pieces])
    assert reasoning_of(out) == text


# ---- one response per stream (§7.4) ---------------------------------------------------


async def test_a_second_candidate_response_is_dropped_and_counted() -> None:
    stats = StreamStats()
    out = await run(created("r1"), created("r2", "1"), frame("answer", "Hi", rid="r1"),
                    frame("answer", "Yo", rid="r2"), frame("answer", "!", rid="r1"),
                    frame("answer", status="finished", rid="r2"), frame("answer", status="finished", rid="r1"),
                    stats=stats)
    assert content_of(out) == "Hi!"
    assert finishes(out) == ["stop"]
    assert stats.response_id == "r1"
    assert stats.foreign_frames == 2


async def test_frames_without_a_response_id_are_accepted() -> None:
    out = await run(created("r1"), frame("answer", "a", rid=None), frame("answer", "b", rid="r1"),
                    frame("answer", status="finished", rid=None))
    assert content_of(out) == "ab"
    assert finishes(out) == ["stop"]


async def test_without_response_created_the_first_id_seen_is_followed() -> None:
    stats = StreamStats()
    out = await run(frame("answer", "a", rid="r7"), frame("answer", "X", rid="r8"), frame("answer", "b", rid="r7"),
                    stats=stats)
    assert content_of(out) == "ab"
    assert (stats.response_id, stats.foreign_frames) == ("r7", 1)


async def test_a_foreign_candidates_usage_is_dropped_too() -> None:
    usage = {"input_tokens": 1, "output_tokens": 99, "total_tokens": 100}
    out = await run(created("r1"), created("r2", "1"), frame("answer", "a", rid="r1"),
                    {**frame("answer", "b", rid="r2"), "usage": usage})
    assert [f.usage for f in out] == [None]


def _candidate(rid: str, index: str, pieces: list[str]) -> list[dict[str, Any]]:
    return [created(rid, index), *(frame("answer", piece, rid=rid) for piece in pieces),
            frame("answer", status="finished", rid=rid)]


@settings(max_examples=200, deadline=None)
@given(st.data())
async def test_interleaved_candidates_yield_the_first_answer_once(data: st.DataObject) -> None:
    """Two candidates, each split anywhere, interleaved in any order (each keeping
    its own): the stage yields exactly the text of the one announced first, once,
    and one finish; every frame of the other read before then is counted."""
    first_text = data.draw(sse_texts, label="first")
    other_text = data.draw(sse_texts.filter(lambda t: t != first_text), label="other")
    a = _candidate("r1", "0", data.draw(splits(first_text)))
    b = _candidate("r2", "1", data.draw(splits(other_text)))
    stream = data.draw(interleavings(a, b))
    followed = stream[0]["response.created"]["response_id"]
    stats = StreamStats()
    out = await run(*stream, stats=stats)
    assert content_of(out) == (first_text if followed == "r1" else other_text)
    assert finishes(out) == ["stop"]
    assert stats.response_id == followed
    end = next(i for i, p in enumerate(stream)
               if p.get("response_id") == followed and p["choices"][0]["delta"]["status"] == "finished")
    assert stats.foreign_frames == sum(1 for p in stream[:end] if p.get("response_id") not in (None, followed))


# ---- phases (§7.4) -----------------------------------------------------------------


async def test_deep_research_answer_is_answer_text_and_its_finish_ends_it() -> None:
    out = await run(frame("deep_research_answer", "Report"), frame("deep_research_answer", status="finished"),
                    frame("answer", "late"))
    assert content_of(out) == "Report"
    assert finishes(out) == ["stop"]


@pytest.mark.parametrize("phase", ["image_gen", "image", "t2i"])
async def test_image_phases_stay_content(phase: str) -> None:
    out = await run(frame(phase, "![image](https://img.example/1.png)"), frame("answer", status="finished"))
    assert content_of(out) == "![image](https://img.example/1.png)"


@pytest.mark.parametrize("phase", ["think", "thinking", "reasoning"])
async def test_thinking_phases_are_reasoning(phase: str) -> None:
    out = await run(frame(phase, "hmm"), frame(phase, status="finished"), frame("answer", "A"),
                    frame("answer", status="finished"))
    assert (reasoning_of(out), content_of(out), finishes(out)) == ("hmm", "A", ["stop"])


async def test_unknown_phases_are_dropped_counted_and_logged_once_per_name(caplog: pytest.LogCaptureFixture) -> None:
    """An unknown phase never leaks into content or reasoning (§7.4); an operator
    sees it once per stream in the log, and its frames in the counter."""
    caplog.set_level(logging.INFO, logger="relay.upstream")
    long_name = "x" * 100
    stats = StreamStats()
    out = await run(frame("code_interpreter", "print(1)", status="running"), frame("mystery", "secret"),
                    frame("code_interpreter", "2", status="running"), frame(long_name, "?"),
                    frame("code_interpreter", status="finished"), frame("answer", "A"),
                    frame("answer", status="finished"), stats=stats)
    assert (content_of(out), reasoning_of(out), finishes(out)) == ("A", "", ["stop"])
    assert stats.dropped_phase_frames == 5
    dropped = [r for r in caplog.records if r.name == "relay.upstream" and r.getMessage() == "upstream_phase_dropped"]
    assert [r.levelno for r in dropped] == [logging.INFO] * 3
    assert [getattr(r, "fields", None) for r in dropped] == [{"phase": "code_interpreter"}, {"phase": "mystery"},
                                           {"phase": "x" * 40}]


async def test_a_dropped_phase_keeps_its_running_usage() -> None:
    usage = {"input_tokens": 5, "output_tokens": 7, "total_tokens": 12}
    out = await run({**frame("code_interpreter", "x = 1"), "usage": usage})
    assert [(f.content, f.reasoning) for f in out] == [("", "")]
    assert out[0].usage is not None and out[0].usage["completion_tokens"] == 7


@pytest.mark.parametrize("phase", [["answer"], {"name": "answer"}, 3, True])
async def test_a_phase_that_is_not_a_string_is_dropped(phase: Any) -> None:
    stats = StreamStats()
    out = await run(frame(phase, "leak"), frame("answer", "A"), frame("answer", status="finished"), stats=stats)
    assert content_of(out) == "A"
    assert stats.dropped_phase_frames == 1


async def test_web_search_function_call_frames_are_swallowed() -> None:
    call = {"name": "web_search", "arguments": '{"query":"x"}'}
    out = await run(frame("web_search", "", name="web_search", function_call=call,
                          extra={"display_position": "think"}),
                    frame("web_search", "", status="finished", name="web_search"),
                    frame("answer", "A"), frame("answer", status="finished"))
    assert (content_of(out), reasoning_of(out)) == ("A", "")


# ---- errors inside the stream (§4.3, §7.4, §7.5) ----------------------------------------


@pytest.mark.parametrize(("payload", "error"), [
    ({"error": "Internal error!"}, UpstreamUnavailable),
    ({"success": False, "request_id": "q", "data": {"code": "RateLimited", "num": 2}}, UpstreamRateLimited),
    ({"success": False, "data": {"code": "Unauthorized", "details": "x"}}, AuthenticationFailed),
    ({"error": {"code": "Bad_Request", "details": "internal error"}, "response_id": "r1"}, UpstreamError),
    ({"ret": ["FAIL_SYS_USER_VALIDATE", "RGV587_ERROR::SM::busy"],
      "data": {"url": "https://chat.qwen.ai/_____tmd_____/punish"}}, UpstreamChallenge),
], ids=["error_string", "success_false", "unauthorized", "bad_request", "risk_control"])
async def test_every_in_stream_error_shape_raises(payload: dict[str, Any], error: type[Exception]) -> None:
    with pytest.raises(error):
        await run(created("r1"), frame("answer", "a"), payload, frame("answer", "never"))


@pytest.mark.parametrize("payload", [{"error": {"code": "ContextLengthExceeded"}},
                                     {"success": False, "data": {"code": "context_length_exceeded"}}])
async def test_context_length_error_finishes_with_length(payload: dict[str, Any]) -> None:
    out = await run(frame("answer", "a"), payload, frame("answer", "never"))
    assert content_of(out) == "a"
    assert finishes(out) == ["length"]


async def test_a_bare_json_refusal_under_event_stream_raises_its_error() -> None:
    """§7.4: ``text/event-stream`` whose body is one JSON object, no ``data:``."""
    async def body() -> AsyncIterator[bytes]:
        yield b'{"success":false,"data":{"code":"RateLimited",'
        yield b'"num":2}}\n'

    stats = StreamStats()
    with pytest.raises(UpstreamRateLimited) as info:
        [f async for f in phase_frames(parse_payloads(body(), 1 << 20, stats), stats)]
    assert info.value.retry_after_s == 7200


# ---- options and history -----------------------------------------------------------

MODELS = [
    {"id": "qwen3-max", "info": {"meta": {"abilities": {"thinking": 1}, "chat_type": ["t2t", "search"]}}},
    {"id": "qwen-turbo", "info": {"meta": {"abilities": {"thinking": 0}, "chat_type": ["t2t", "search"]}}},
    {"id": "coder", "info": {"meta": {"chat_type": ["t2t"]}}},
]


def test_variants_exist_only_where_the_model_can() -> None:
    variants = model_variants(MODELS)
    assert set(variants) == {"qwen3-max-thinking", "qwen3-max-search", "qwen3-max-thinking-search",
                             "qwen-turbo-search"}
    assert variants["qwen3-max-thinking-search"] == ("qwen3-max", True, True)


def _chat(**body: Any) -> Any:
    return parse_chat_request({"model": "qwen3-max", "messages": [{"role": "user", "content": "hi"}], **body})


def test_resolve_synthetic_id_and_explicit_field() -> None:
    variants = model_variants(MODELS)
    options = resolve_options(_chat(model="qwen3-max-thinking"), variants)
    assert (options.upstream_model, options.thinking, options.search) == ("qwen3-max", True, False)
    off = resolve_options(_chat(model="qwen3-max-thinking", enable_thinking=False), variants)
    assert off.thinking is False
    kwargs = resolve_options(_chat(chat_template_kwargs={"enable_thinking": False}), variants)
    assert kwargs.thinking is False and kwargs.upstream_model == "qwen3-max"
    assert resolve_options(_chat(thinking_budget=1024), variants).thinking_budget == 1024
    with pytest.raises(InvalidRequest):
        resolve_options(_chat(enable_thinking="no"), variants)


def test_fold_messages_format() -> None:
    """The documented v2 history format: role-labelled blocks, blank-line separated."""
    assert fold_messages([{"role": "user", "content": "only"}]) == "only"
    folded = fold_messages([
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": [{"type": "text", "text": "Again"}]},
    ])
    assert folded == "System: Be brief.\n\nUser: Hi\n\nAssistant: Hello!\n\nUser: Again"
