"""The official openai SDK talks to the relay unchanged (issue 3)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from openai import AsyncOpenAI, AuthenticationError, NotFoundError

from tests.conftest import MODEL, TOKEN, directive


@pytest.fixture
async def client(relay: str) -> AsyncIterator[AsyncOpenAI]:
    async with AsyncOpenAI(base_url=relay + "/v1", api_key=TOKEN, max_retries=0, timeout=20) as sdk:
        yield sdk


async def test_sdk_lists_models_with_ids_usable_as_model(client: AsyncOpenAI) -> None:
    """Every id in /v1/models works verbatim as ``model``."""
    models = await client.models.list()
    ids = [m.id for m in models.data]
    assert MODEL in ids
    assert all(m.object == "model" and isinstance(m.created, int) and m.owned_by for m in models.data)
    reply = await client.chat.completions.create(
        model=ids[-1], messages=[{"role": "user", "content": directive(reply="ok")}])
    assert reply.choices[0].message.content == "ok"


async def test_sdk_non_stream_completion_has_openai_shape(client: AsyncOpenAI) -> None:
    reply = await client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": directive(reply="Bonjour, le monde")}])
    assert reply.object == "chat.completion"
    assert reply.id.startswith("chatcmpl-")
    assert reply.model == MODEL
    choice = reply.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content == "Bonjour, le monde"
    assert choice.finish_reason == "stop"
    assert reply.usage is not None and reply.usage.total_tokens >= reply.usage.completion_tokens > 0


async def test_sdk_stream_delivers_exact_text_in_increments(client: AsyncOpenAI) -> None:
    """Cumulative upstream frames reach the SDK as true increments that join to the text."""
    text = "ha ha ha — 中文 🚀 \"quoted\" back\\slash"
    stream = await client.chat.completions.create(
        model=MODEL, stream=True, stream_options={"include_usage": True},
        messages=[{"role": "user", "content": directive(reply=text, chunks=7)}])
    deltas: list[str] = []
    finishes = []
    usage = None
    roles = []
    async for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
            assert chunk.choices == []
            continue
        choice = chunk.choices[0]
        if choice.delta.role:
            roles.append(choice.delta.role)
        if choice.delta.content:
            deltas.append(choice.delta.content)
        if choice.finish_reason:
            finishes.append(choice.finish_reason)
    assert "".join(deltas) == text
    assert len(deltas) > 1
    assert roles == ["assistant"]
    assert finishes == ["stop"]
    assert usage is not None and usage.completion_tokens > 0


async def test_sdk_repeated_tokens_are_not_lost(client: AsyncOpenAI) -> None:
    """Upstream "ha", "haha", "hahaha" gives the client exactly "hahaha"."""
    stream = await client.chat.completions.create(
        model=MODEL, stream=True,
        messages=[{"role": "user", "content": directive(pieces=["ha", "ha", "ha"], repeat_identical=True)}])
    deltas = [c.choices[0].delta.content async for c in stream if c.choices and c.choices[0].delta.content]
    assert deltas == ["ha", "ha", "ha"]


async def test_sdk_raises_authentication_error_for_expired_token(relay: str) -> None:
    async with AsyncOpenAI(base_url=relay + "/v1", api_key="expired-token", max_retries=0) as client:
        with pytest.raises(AuthenticationError) as caught:
            await client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
    assert caught.value.status_code == 401
    assert caught.value.body["code"] == "invalid_api_key"  # type: ignore[index]


async def test_sdk_unknown_model_is_not_found(client: AsyncOpenAI) -> None:
    with pytest.raises(NotFoundError) as caught:
        await client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "hi"}])
    assert caught.value.body["code"] == "model_not_found"  # type: ignore[index]
    assert caught.value.body["param"] == "model"  # type: ignore[index]
