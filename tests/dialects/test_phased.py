"""The phase-tagged stream of qwen-phase and qwen-v2, and request resolution (issue 4)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.dialects.common import fold_messages, model_variants
from relay.dialects.options import resolve_options
from relay.dialects.phased import SummaryText, phase_frames
from relay.errors import AuthenticationFailed, InvalidRequest, UpstreamRateLimited
from relay.openai_wire import parse_chat_request
from relay.pipeline.frames import Frame, StreamStats


async def _payloads(*items: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
    for item in items:
        yield item


def frame(phase: str | None, content: str = "", status: str = "typing", **delta: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"content": content, "status": status, **delta}
    if phase is not None:
        body["phase"] = phase
    return {"choices": [{"delta": body}], "response_id": "r1"}


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
                    {"response.info": {"action": "keep_alive"}}, frame("answer", "x"), stats=stats)
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


async def test_context_length_error_finishes_with_length() -> None:
    out = await run(frame("answer", "a"), {"error": {"code": "ContextLengthExceeded"}})
    assert out[-1].finish_reason == "length"


@settings(max_examples=100, deadline=None)
@given(paragraphs=st.lists(st.text(min_size=1, max_size=20).filter(lambda p: "\n\n" not in p), max_size=6))
def test_cumulative_summary_lists_give_each_paragraph_once(paragraphs: list[str]) -> None:
    summary = SummaryText()
    out = "".join(summary.delta(paragraphs[:n]) for n in range(1, len(paragraphs) + 1))
    assert out == "\n\n".join(paragraphs)


def test_incremental_summary_lists_are_joined() -> None:
    summary = SummaryText()
    assert summary.delta(["First."]) + summary.delta(["Second."]) == "First.\n\nSecond."


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
