"""RequestInfo.note_usage: what a surface reports of an answer's usage, in any API's spelling (issue 21 §3)."""

from __future__ import annotations

from relay.middleware import RequestInfo


def test_note_usage_reads_openai_and_anthropic_spellings_and_adds_up() -> None:
    info = RequestInfo("id")
    info.note_usage({"prompt_tokens": 12, "completion_tokens": 30, "total_tokens": 42})  # chat completions
    info.note_usage({"input_tokens": 5, "output_tokens": 7})  # /v1/messages, /v1/responses
    info.note_usage(None)  # an answer without usage
    info.note_usage({"prompt_tokens": None, "completion_tokens": True})  # nonsense is ignored
    assert (info.prompt_tokens, info.completion_tokens) == (17, 37)
