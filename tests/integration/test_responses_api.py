"""The OpenAI Responses API (``POST /v1/responses``, ``GET /v1/responses/{id}``) through the relay (issue 18).

The official openai SDK's ``client.responses`` against a relay in front of the
emulator (qwen-v2): text, streamed and whole; a function call round trip the
way Codex CLI makes it; thinking as reasoning items; ``previous_response_id``
continuing a stored answer; the tools the relay cannot run refused by name;
``web_search`` answered by the search chat; a fault mid-stream as
``response.failed``.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from openai import AsyncOpenAI, BadRequestError, NotFoundError

from relay.config import Images
from relay.emulator import RunningEmulator
from relay.emulator.png import solid_png
from relay.emulator.state import RequestRecord
from relay.operator import OperatorConfig, Secret, hash_key
from relay.operator.config import KeySpec
from tests.conftest import TOKEN, RelayFactory, auth, directive
from tests.integration.accounts_support import poll
from tests.integration.accounts_support import redis_server as private_redis_server

MODEL = "qwen3-coder-plus"
#: a model that can think (the emulator's qwen3-coder-plus cannot).
THINKER = "qwen3-max"
EXEC = {"type": "function", "name": "exec_command", "description": "Runs a command.", "strict": False,
        "parameters": {"type": "object", "properties": {"cmd": {"type": "string"}}, "required": ["cmd"],
                       "additionalProperties": False}}
AGENTS = {"type": "namespace", "name": "multi_agent_v1", "description": "Tools for sub-agents.", "tools": [
    {"type": "function", "name": "spawn_agent", "description": "Spawn a sub-agent.", "strict": False,
     "parameters": {"type": "object", "properties": {"task": {"type": "string"}}, "required": ["task"]}},
    {"type": "function", "name": "wait_agent", "description": "Wait for one.", "strict": False,
     "parameters": {"type": "object", "properties": {"id": {"type": "string"}}}}]}


ALICE, BOB = "sk-relay-alice-0123456789", "sk-relay-bob-9876543210"


@pytest.fixture
async def redis_url() -> AsyncIterator[str]:
    """A private redis-server; requested before ``relay_factory``, so it outlives the relays."""
    async with private_redis_server() as server:
        yield server.url


@pytest.fixture
async def relay(relay_factory: RelayFactory) -> str:
    return await relay_factory(dialect="qwen-v2")


@pytest.fixture
async def client(relay: str) -> AsyncIterator[AsyncOpenAI]:
    async with AsyncOpenAI(base_url=relay + "/v1", api_key=TOKEN, max_retries=0, timeout=30) as sdk:
        yield sdk


def ask(text: str = "Please.", **fields: Any) -> str:
    """A user text whose directive sits on a line of its own (qwen-v2 folds the conversation)."""
    return f"{text}\n{directive(**fields)}"


def last_completion(emulator: RunningEmulator) -> RequestRecord:
    return [record for record in emulator.state.log if record.user_message is not None][-1]


async def test_sdk_non_stream_text_is_a_completed_response(client: AsyncOpenAI) -> None:
    response = await client.responses.create(model=MODEL, input=ask(reply="Bonjour, le monde"),
                                             instructions="Answer briefly.", metadata={"run": "1"})
    assert response.object == "response" and response.id.startswith("resp_")
    assert response.status == "completed" and response.model == MODEL
    assert response.output_text == "Bonjour, le monde"
    message = response.output[0]
    assert message.type == "message" and message.role == "assistant" and message.id.startswith("msg_")
    assert response.instructions == "Answer briefly." and response.metadata == {"run": "1"}
    assert response.store is True and response.tools == [] and response.tool_choice == "auto"
    usage = response.usage
    assert usage is not None and usage.input_tokens > 0 and usage.output_tokens > 0
    assert usage.total_tokens == usage.input_tokens + usage.output_tokens
    assert usage.input_tokens_details.cached_tokens == 0 and usage.output_tokens_details.reasoning_tokens == 0


async def test_sdk_stream_text_arrives_in_increments_then_completed(client: AsyncOpenAI) -> None:
    text = "ha ha ha — 中文 🚀 \"quoted\" back\\slash"
    stream = await client.responses.create(model=MODEL, input=ask(reply=text, chunks=7), stream=True)
    events = [event async for event in stream]
    types = [event.type for event in events]
    assert types[:2] == ["response.created", "response.in_progress"]
    assert types[-1] == "response.completed" and types.count("response.completed") == 1
    assert [event.sequence_number for event in events] == list(range(len(events)))
    deltas = [event.delta for event in events if event.type == "response.output_text.delta"]
    assert "".join(deltas) == text and len(deltas) > 1
    completed = events[-1].response  # type: ignore[union-attr]
    assert completed.output_text == text and completed.status == "completed"
    assert completed.usage is not None and completed.usage.output_tokens > 0


async def test_stream_events_carry_event_lines_and_no_done(relay: str) -> None:
    """Codex reads ``event:`` lines; the Responses API sends no ``[DONE]``."""
    body = {"model": MODEL, "input": ask(reply="hi there", chunks=3), "stream": True}
    async with aiohttp.ClientSession() as session, session.post(relay + "/v1/responses", json=body,
                                                                headers=auth()) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/event-stream")
        raw = await response.text()
    blocks = [block for block in raw.split("\n\n") if block and not block.startswith(":")]
    for block in blocks:
        event_line, data_line = block.split("\n")
        assert event_line == "event: " + json.loads(data_line.removeprefix("data: "))["type"]
    assert "[DONE]" not in raw


async def test_function_call_round_trip_as_codex_makes_it(client: AsyncOpenAI, emulator: RunningEmulator) -> None:
    """function_call out; function_call + function_call_output back in; the final answer folds the output."""
    first = await client.responses.create(
        model=MODEL, tools=[EXEC], store=False,  # type: ignore[list-item]
        input=[{"type": "message", "role": "developer", "content": [{"type": "input_text", "text": "Be useful."}]},
               {"type": "message", "role": "user", "content": [{"type": "input_text", "text": ask(
                   tool_calls=[{"name": "exec_command", "arguments": {"cmd": "ls"}}])}]}])
    calls = [item for item in first.output if item.type == "function_call"]
    assert len(calls) == 1
    call = calls[0]
    assert call.id is not None and call.id.startswith("fc_") and call.call_id.startswith("call_")
    assert call.name == "exec_command" and json.loads(call.arguments) == {"cmd": "ls"}
    tool_output = "README.md\n" + directive(reply="There is a README.")
    second = await client.responses.create(model=MODEL, tools=[EXEC], store=False,  # type: ignore[list-item]
                                           input=[{"type": "message", "role": "user", "content": "List files."},
                                                  call.model_dump(exclude_none=True),
                                                  {"type": "function_call_output", "call_id": call.call_id,
                                                   "output": tool_output},
                                                  {"type": "reasoning", "id": "rs_1", "summary": [],
                                                   "content": None, "encrypted_content": None}])
    assert second.output_text == "There is a README."
    prompt = last_completion(emulator).user_message or ""
    assert "<tool_call>" in prompt and "<tool_response>\nREADME.md" in prompt


async def test_thinking_comes_back_as_a_reasoning_summary(client: AsyncOpenAI) -> None:
    question = ask(reply="Forty-two.", think="Six times seven.", chunks=3)
    whole = await client.responses.create(model=THINKER + "-thinking", input=question,
                                          reasoning={"effort": "high", "summary": "auto"})
    reasoning, message = whole.output
    assert reasoning.type == "reasoning" and [part.text for part in reasoning.summary] == ["Six times seven."]
    assert message.type == "message" and whole.output_text == "Forty-two."
    assert whole.reasoning is not None and whole.reasoning.effort == "high"
    stream = await client.responses.create(model=THINKER, input=question, reasoning={"effort": "high"}, stream=True)
    events = [event async for event in stream]
    thinking = "".join(e.delta for e in events if e.type == "response.reasoning_summary_text.delta")
    assert thinking == "Six times seven."
    done = [e for e in events if e.type == "response.reasoning_summary_part.done"]
    assert len(done) == 1 and done[0].part.text == "Six times seven."
    completed = events[-1].response  # type: ignore[union-attr]
    assert [item.type for item in completed.output] == ["reasoning", "message"]


async def test_previous_response_id_puts_the_first_exchange_before_the_next(client: AsyncOpenAI,
                                                                           emulator: RunningEmulator) -> None:
    first = await client.responses.create(model=MODEL, input=ask("My cat is called Tiber.", reply="Noted, Tiber."),
                                          instructions="Remember names.")
    second = await client.responses.create(model=MODEL, previous_response_id=first.id, stream=True,
                                           input=ask("What is my cat called?", reply="Tiber."))
    events = [event async for event in second]
    completed = events[-1].response  # type: ignore[union-attr]
    assert completed.output_text == "Tiber." and completed.previous_response_id == first.id
    prompt = last_completion(emulator).user_message or ""
    assert prompt.index("My cat is called Tiber.") < prompt.index("Noted, Tiber.") < prompt.index("What is my cat")
    third = await client.responses.create(model=MODEL, previous_response_id=completed.id,
                                          input=ask("And again?", reply="Still Tiber."))
    assert third.output_text == "Still Tiber."
    prompt = last_completion(emulator).user_message or ""
    assert all(text in prompt for text in ("My cat is called Tiber.", "What is my cat", "And again?"))
    assert "Remember names." not in prompt  # instructions are not carried over, as OpenAI does


async def test_unknown_previous_response_id_is_400_previous_response_not_found(client: AsyncOpenAI) -> None:
    with pytest.raises(BadRequestError) as caught:
        await client.responses.create(model=MODEL, input="hi", previous_response_id="resp_nope")
    assert caught.value.code == "previous_response_not_found"
    assert caught.value.param == "previous_response_id"


async def test_get_returns_a_stored_response_and_404_otherwise(client: AsyncOpenAI) -> None:
    created = await client.responses.create(model=MODEL, input=ask(reply="Keep me."), stream=True)
    completed = [event async for event in created][-1].response  # type: ignore[union-attr]
    fetched = await client.responses.retrieve(completed.id)
    assert fetched.id == completed.id and fetched.output_text == "Keep me." and fetched.status == "completed"
    with pytest.raises(NotFoundError) as caught:
        await client.responses.retrieve("resp_never")
    assert caught.value.code == "not_found"


async def test_store_false_is_not_retrievable_nor_continued(client: AsyncOpenAI) -> None:
    created = await client.responses.create(model=MODEL, input=ask(reply="Forget me."), store=False)
    assert created.store is False
    with pytest.raises(NotFoundError):
        await client.responses.retrieve(created.id)
    with pytest.raises(BadRequestError):
        await client.responses.create(model=MODEL, input="hi", previous_response_id=created.id)


async def test_another_token_cannot_read_or_continue_a_stored_response(relay: str, client: AsyncOpenAI) -> None:
    created = await client.responses.create(model=MODEL, input=ask(reply="Mine."))
    async with AsyncOpenAI(base_url=relay + "/v1", api_key="another-token-9876543210", max_retries=0,
                           timeout=30) as other:
        with pytest.raises(NotFoundError):
            await other.responses.retrieve(created.id)
        with pytest.raises(BadRequestError) as caught:
            await other.responses.create(model=MODEL, input="hi", previous_response_id=created.id)
        assert caught.value.code == "previous_response_not_found"
    assert (await client.responses.retrieve(created.id)).output_text == "Mine."


@pytest.mark.parametrize("tool", [
    {"type": "file_search", "vector_store_ids": ["vs_1"]},
    {"type": "code_interpreter", "container": {"type": "auto"}},
    {"type": "computer_use_preview", "display_width": 1024, "display_height": 768, "environment": "linux"},
    {"type": "image_generation"},
    {"type": "mcp", "server_label": "x", "server_url": "https://example.com/mcp"},
    {"type": "local_shell"},
    {"type": "custom", "name": "apply_patch"},
])
async def test_a_built_in_tool_the_relay_cannot_run_is_400_naming_it(client: AsyncOpenAI,
                                                                     emulator: RunningEmulator,
                                                                     tool: dict[str, Any]) -> None:
    with pytest.raises(BadRequestError) as caught:
        await client.responses.create(model=MODEL, input="hi", tools=[EXEC, tool])  # type: ignore[list-item]
    error = caught.value
    assert tool["type"] in error.message and error.param == "tools"
    assert error.type == "invalid_request_error"
    assert not [record for record in emulator.state.log if record.user_message is not None]


async def test_web_search_tool_asks_the_search_chat(client: AsyncOpenAI, emulator: RunningEmulator) -> None:
    """Codex sends ``web_search`` with ``external_web_access: false`` on every turn."""
    tool = {"type": "web_search", "external_web_access": False}
    answer = await client.responses.create(model=MODEL, input=ask(reply="Found it."),
                                           tools=[EXEC, tool])  # type: ignore[list-item]
    assert answer.output_text.startswith("Found it.\n\nSources:")  # the search chat's sources follow
    assert last_completion(emulator).chat_type == "search"
    await client.responses.create(model=MODEL, input=ask(reply="Plain."), tools=[EXEC])  # type: ignore[list-item]
    assert last_completion(emulator).chat_type == "t2t"
    # A model that cannot search still answers: the search tool is only an offer.
    await client.responses.create(model="qwen2.5-coder-32b-instruct", input=ask(reply="No search here."),
                                  tools=[{"type": "web_search_preview"}])  # type: ignore[list-item]
    assert last_completion(emulator).chat_type == "t2t"


async def test_mid_stream_fault_is_response_failed(client: AsyncOpenAI) -> None:
    stream = await client.responses.create(model=MODEL, stream=True, input=ask(
        reply="partial answer here", chunks=3, stream_error="Mystery_Code", after=1))
    events = [event async for event in stream]
    assert events[-1].type == "response.failed"
    failed = events[-1].response
    assert failed.status == "failed" and failed.error is not None and failed.error.message
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta")  # the head went out first
    assert "response.completed" not in [event.type for event in events]


async def test_namespace_tools_are_flattened_and_calls_come_back_by_their_own_name(
        client: AsyncOpenAI, emulator: RunningEmulator) -> None:
    response = await client.responses.create(
        model=MODEL, tools=[EXEC, AGENTS],  # type: ignore[list-item]
        input=ask(tool_calls=[{"name": "spawn_agent", "arguments": {"task": "read the docs"}}]))
    call = response.output[-1]
    assert call.type == "function_call" and call.name == "spawn_agent" and call.namespace == "multi_agent_v1"
    assert json.loads(call.arguments) == {"task": "read the docs"}
    prompt = last_completion(emulator).user_message or ""
    assert '"name": "spawn_agent"' in prompt and '"name": "wait_agent"' in prompt
    assert "multi_agent_v1" not in prompt  # the model sees bare names
    follow_up = await client.responses.create(
        model=MODEL, tools=[EXEC, AGENTS], previous_response_id=response.id,  # type: ignore[list-item]
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": directive(reply="Spawned.")}])
    assert follow_up.output_text == "Spawned."
    assert '"name": "spawn_agent", "arguments": {"task": "read the docs"}' in (
        last_completion(emulator).user_message or "")


async def test_invalid_input_item_is_400_naming_it(client: AsyncOpenAI) -> None:
    with pytest.raises(BadRequestError) as caught:
        await client.responses.create(model=MODEL, input=[{"type": "item_reference", "id": "msg_1"}])
    assert caught.value.param == "input[0].type"


async def test_a_relay_key_cannot_read_or_continue_another_keys_response(relay_factory: RelayFactory) -> None:
    keys = tuple(KeySpec(name=name, digest=bytes.fromhex(hash_key(key)[7:])) for name, key in
                 (("alice", ALICE), ("bob", BOB)))
    relay = await relay_factory(dialect="qwen-v2", operator=OperatorConfig(
        mode="pool", keys=keys, tokens=(Secret("pool-token-a-000111"),)))
    async with AsyncOpenAI(base_url=relay + "/v1", api_key=ALICE, max_retries=0, timeout=30) as alice, \
            AsyncOpenAI(base_url=relay + "/v1", api_key=BOB, max_retries=0, timeout=30) as bob:
        created = await alice.responses.create(model=MODEL, input=ask(reply="Alice's."))
        with pytest.raises(NotFoundError):
            await bob.responses.retrieve(created.id)
        with pytest.raises(BadRequestError):
            await bob.responses.create(model=MODEL, input="hi", previous_response_id=created.id)
        assert (await alice.responses.retrieve(created.id)).output_text == "Alice's."
        follow_up = await alice.responses.create(model=MODEL, input=ask(reply="Again."),
                                                 previous_response_id=created.id)
        assert follow_up.output_text == "Again."


async def test_two_relays_sharing_redis_continue_each_others_responses(
        redis_url: str, relay_factory: RelayFactory, emulator: RunningEmulator) -> None:
    """The record is in --state's Redis: any relay of the fleet serves the next turn."""
    first_relay = await relay_factory(dialect="qwen-v2", state=redis_url)
    second_relay = await relay_factory(dialect="qwen-v2", state=redis_url)
    async with AsyncOpenAI(base_url=first_relay + "/v1", api_key=TOKEN, max_retries=0, timeout=30) as first, \
            AsyncOpenAI(base_url=second_relay + "/v1", api_key=TOKEN, max_retries=0, timeout=30) as second:
        created = await first.responses.create(model=MODEL, input=ask("The code word is ochre.", reply="Ochre."))
        assert (await second.responses.retrieve(created.id)).output_text == "Ochre."
        follow_up = await second.responses.create(model=MODEL, previous_response_id=created.id,
                                                  input=ask("What was it?", reply="It was ochre."))
        assert follow_up.output_text == "It was ochre."
    assert "The code word is ochre." in (last_completion(emulator).user_message or "")


async def test_a_stored_response_expires_after_responses_ttl(relay_factory: RelayFactory) -> None:
    relay = await relay_factory(dialect="qwen-v2", responses_ttl_s=2.0)
    async with AsyncOpenAI(base_url=relay + "/v1", api_key=TOKEN, max_retries=0, timeout=30) as sdk:
        created = await sdk.responses.create(model=MODEL, input=ask(reply="Soon gone."))
        assert (await sdk.responses.retrieve(created.id)).output_text == "Soon gone."

        async def gone() -> bool:
            try:
                await sdk.responses.retrieve(created.id)
            except NotFoundError:
                return True
            return False

        await poll(gone, "the stored response expired", timeout_s=15)


async def test_an_input_image_is_uploaded_and_arrives_intact(relay_factory: RelayFactory,
                                                             emulator: RunningEmulator) -> None:
    """``input_image`` parts take the chat path's upload (issue 20): the emulator's answer names
    the SHA-256 of the bytes it received."""
    relay = await relay_factory(dialect="qwen-v2", images=Images(oss_base_url=emulator.oss_url))
    image = solid_png(13, 7, (10, 10, 200))
    url = "data:image/png;base64," + base64.b64encode(image).decode()
    async with AsyncOpenAI(base_url=relay + "/v1", api_key=TOKEN, max_retries=0, timeout=20) as sdk:
        response = await sdk.responses.create(model="qwen3-max", store=False, input=[{
            "type": "message", "role": "user", "content": [
                {"type": "input_image", "image_url": url, "detail": "auto"},
                {"type": "input_text", "text": "Describe.\n" + directive(reply="A blue square.")}]}])
    assert f"sha256={hashlib.sha256(image).hexdigest()}" in response.output_text
    assert "A blue square." in response.output_text
