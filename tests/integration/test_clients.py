"""Real client request shapes replayed against the relay (issue 5, CLIENTS.md §6)."""

from __future__ import annotations

import base64
import json

import aiohttp
import pytest

from relay.emulator import RunningEmulator
from tests.conftest import TOKEN, RelayFactory, directive

IMMERSIVE_ORIGIN = "chrome-extension://bpoadfkcbjbfhfodiogcnhhhpibjhbnh"
IMMERSIVE_SYSTEM = ("You are a professional Simplified Chinese native translator who needs to fluently "
                    "translate text into Simplified Chinese.")


def immersive_headers() -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKEN}", "api-key": TOKEN, "Origin": IMMERSIVE_ORIGIN,
            "Content-Type": "application/json"}


@pytest.mark.parametrize("dialect", ["qwen-v1", "qwen-v2"])
@pytest.mark.parametrize("stream_field", [None, False])
async def test_immersive_batch_round_trips_separators_byte_exact(
        relay_factory: RelayFactory, dialect: str, stream_field: bool | None) -> None:
    """T1/T2: the %% separators and blank lines of a batch come back exactly, as JSON."""
    translated = "段落 A\n\n%%\n\n段落 B\n\n%%\n\n  段落 C  \n"
    body: dict[str, object] = {"model": "qwen-max-latest", "temperature": 0, "messages": [
        {"role": "system", "content": IMMERSIVE_SYSTEM},
        {"role": "user", "content": "Translate to Simplified Chinese:\n\nParagraph A\n\n%%\n\nParagraph B\n\n%%\n\n"
                                    "Paragraph C\n" + directive(reply=translated, chunks=4)}]}
    if stream_field is not None:
        body["stream"] = stream_field
    relay = await relay_factory(dialect=dialect)
    async with aiohttp.ClientSession() as session, session.post(
            relay + "/v1/chat/completions", data=json.dumps(body), headers=immersive_headers()) as response:
        assert response.status == 200
        assert response.content_type == "application/json"
        assert response.headers["Access-Control-Allow-Origin"] in ("*", IMMERSIVE_ORIGIN)
        assert "Origin" in response.headers.get("Vary", "")
        reply = await response.json()
    assert reply["object"] == "chat.completion"
    choice = reply["choices"][0]
    assert choice["message"]["role"] == "assistant" and choice["finish_reason"] == "stop"
    assert choice["message"]["content"] == translated
    assert all(isinstance(reply["usage"][k], int) for k in ("prompt_tokens", "completion_tokens", "total_tokens"))


async def test_immersive_thinking_off_fields_are_accepted(relay_factory: RelayFactory) -> None:
    """T3: enable_thinking and chat_template_kwargs are no 400; nothing of thinking in content."""
    relay = await relay_factory(dialect="qwen-v2")
    body = {"model": "qwen3-max", "temperature": 0, "enable_thinking": False,
            "chat_template_kwargs": {"enable_thinking": False},
            "messages": [{"role": "system", "content": IMMERSIVE_SYSTEM},
                         {"role": "user", "content": "Translate:\n" + directive(reply="译文", think="hmm")}]}
    async with aiohttp.ClientSession() as session, session.post(
            relay + "/v1/chat/completions", json=body, headers=immersive_headers()) as response:
        assert response.status == 200
        message = (await response.json())["choices"][0]["message"]
    assert message["content"] == "译文" and "reasoning_content" not in message


async def test_five_mib_body_with_a_base64_image_part_is_accepted(
        relay_factory: RelayFactory, emulator: RunningEmulator) -> None:
    """T10: a 5 MiB body (data-URL image, cache_control parts, unknown fields) is accepted."""
    relay = await relay_factory(dialect="qwen-v1")
    image = base64.b64encode(b"\x89PNG" + bytes(range(256)) * 15_500).decode()
    body = {"model": "qwen-max-latest", "unknown_top_level": {"x": 1}, "messages": [
        {"role": "user", "content": [
            {"type": "text", "text": "What is this?", "cache_control": {"type": "ephemeral"}},
            {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{image}"}},
            {"type": "text", "text": directive(reply="A picture.")}]}]}
    raw = json.dumps(body)
    assert len(raw) > 5 * 1024 * 1024
    async with aiohttp.ClientSession() as session, session.post(
            relay + "/v1/chat/completions", data=raw, headers=immersive_headers()) as response:
        assert response.status == 200, await response.text()
        assert (await response.json())["choices"][0]["message"]["content"] == "A picture."


async def test_empty_upstream_answer_is_an_error_not_a_silent_200(relay_factory: RelayFactory) -> None:
    """T12: no text and no tool call → 502 JSON, for a stream too (nothing was sent yet)."""
    relay = await relay_factory(dialect="qwen-v2")
    for stream in (False, True):
        async with aiohttp.ClientSession() as session, session.post(
                relay + "/v1/chat/completions", headers=immersive_headers(), json={
                    "model": "qwen-max-latest", "stream": stream,
                    "messages": [{"role": "user", "content": directive(pieces=[""])}]}) as response:
            assert response.status == 502
            assert (await response.json())["error"]["code"] == "upstream_empty_answer"
