"""Images in and out (issue 20): uploads through STS + OSS, and /v1/images/* — relay against the emulator.

Real parts only: the official openai SDK talks to the relay on 127.0.0.1, the
relay talks to the strict emulator, and the emulator's OSS stand-in verifies
every signature and stores the bytes. The emulator answers a chat that carries
files with one ``[FILE sha256=… type=… size=…]`` line per file, computed from
the bytes it stored, so a test proves the exact bytes arrived; its request log
shows every PUT (``RequestRecord.upload``), which is how reuse is counted.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from openai import APIStatusError, AsyncOpenAI, BadRequestError, InternalServerError
from pytest_aiohttp import AiohttpServer

from relay.config import Images
from relay.emulator import RunningEmulator
from relay.emulator.png import png_size, solid_png
from relay.emulator.state import RequestRecord
from relay.logs import JsonFormatter
from tests.conftest import MODEL, TOKEN, RelayFactory, directive
from tests.integration.web2026 import metric, metrics_text

OTHER_TOKEN = "other-token-9876543210"
STS = "/api/v2/files/getstsToken"


def data_uri(image: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(image).decode()}"


def vision_messages(image_url: str, text: str = "What is in this picture?") -> list[dict[str, Any]]:
    return [{"role": "user", "content": [{"type": "text", "text": text},
                                         {"type": "image_url", "image_url": {"url": image_url}}]}]


def puts(emulator: RunningEmulator) -> list[RequestRecord]:
    """The PUTs the OSS stand-in stored."""
    return [r for r in emulator.state.log
            if r.method == "PUT" and r.upload is not None and r.upload.get("result") == "stored"]


def oss_requests(emulator: RunningEmulator) -> list[RequestRecord]:
    return [r for r in emulator.state.log if r.upload is not None]


def client(relay: str, token: str = TOKEN) -> AsyncOpenAI:
    return AsyncOpenAI(base_url=relay + "/v1", api_key=token, max_retries=0, timeout=30)


@pytest.fixture
async def images_relay(relay_factory: RelayFactory, emulator: RunningEmulator) -> AsyncIterator[str]:
    assert emulator.oss_url is not None
    yield await relay_factory(dialect="qwen-v2", images=Images(oss_base_url=emulator.oss_url))


async def ask(relay: str, messages: Any, *, stream: bool, token: str = TOKEN) -> str:
    """The answer's text, through the openai SDK."""
    async with client(relay, token) as sdk:
        if not stream:
            completion = await sdk.chat.completions.create(model=MODEL, messages=messages)
            return completion.choices[0].message.content or ""
        chunks = await sdk.chat.completions.create(model=MODEL, messages=messages, stream=True)
        text = ""
        async for chunk in chunks:
            if chunk.choices and chunk.choices[0].delta.content:
                text += chunk.choices[0].delta.content
        return text


@pytest.mark.parametrize("stream", [False, True])
async def test_data_uri_png_arrives_intact_and_the_answer_names_its_sha256(
        images_relay: str, emulator: RunningEmulator, stream: bool) -> None:
    """A PNG sent as a data URI is uploaded (STS, V4-signed PUT) and referenced in files[]: the
    upstream received exactly its bytes (issue 20 §1)."""
    image = solid_png(31, 17, (200, 10, 10))
    answer = await ask(images_relay, vision_messages(data_uri(image)), stream=stream)
    assert f"sha256={hashlib.sha256(image).hexdigest()}" in answer
    assert f"size={len(image)}" in answer and "type=image/png" in answer
    stored = puts(emulator)
    assert len(stored) == 1 and stored[0].upload is not None
    assert stored[0].upload["signature_version"] == "v4"
    assert "cookie" not in {name.lower() for name in stored[0].headers}, "chat cookies must not reach OSS"


async def test_the_second_request_reuses_the_upload(images_relay: str, emulator: RunningEmulator) -> None:
    """Agents resend the same screenshot every turn: within --upload-cache-ttl it is uploaded once."""
    image = solid_png(23, 29, (1, 2, 3))
    digest = hashlib.sha256(image).hexdigest()
    for stream in (False, True):
        assert f"sha256={digest}" in await ask(images_relay, vision_messages(data_uri(image)), stream=stream)
    assert len(puts(emulator)) == 1
    assert len([r for r in emulator.state.log if r.path == STS]) == 1
    async with aiohttp.ClientSession() as session:
        text = await metrics_text(session, images_relay)
    assert metric(text, 'qwen_relay_image_uploads_total{result="uploaded"}') == 1
    assert metric(text, 'qwen_relay_image_uploads_total{result="reused"}') == 1
    assert metric(text, "qwen_relay_image_upload_bytes_total") == len(image)


async def test_two_accounts_never_share_an_upload(images_relay: str, emulator: RunningEmulator) -> None:
    """The same bytes from two tokens are two uploads, each under its own user (object keys differ)."""
    image = solid_png(19, 19, (9, 9, 9))
    digest = hashlib.sha256(image).hexdigest()
    for token in (TOKEN, OTHER_TOKEN, TOKEN, OTHER_TOKEN):
        assert f"sha256={digest}" in await ask(images_relay, vision_messages(data_uri(image)), stream=False,
                                               token=token)
    stored = puts(emulator)
    assert len(stored) == 2
    users = {record.upload["key"].split("/", 1)[0] for record in stored if record.upload is not None}
    assert len(users) == 2


async def test_v1_signing_is_selectable(relay_factory: RelayFactory, emulator: RunningEmulator) -> None:
    """[upstream] oss_signing = "v1": the PUT carries an ``OSS ak:sig`` signature the stand-in accepts."""
    relay = await relay_factory(dialect="qwen-v2", images=Images(oss_base_url=emulator.oss_url, oss_signing="v1"))
    image = solid_png(7, 5, (4, 5, 6))
    answer = await ask(relay, vision_messages(data_uri(image)), stream=False)
    assert f"sha256={hashlib.sha256(image).hexdigest()}" in answer
    assert [r.upload["signature_version"] for r in puts(emulator) if r.upload] == ["v1"]


async def test_several_images_keep_their_order_and_markers(images_relay: str, emulator: RunningEmulator) -> None:
    """Two images in one message: both uploaded, in order; the folded text says where each stood."""
    first, second = solid_png(3, 3, (1, 1, 1)), solid_png(4, 4, (2, 2, 2))
    messages = [{"role": "user", "content": [
        {"type": "text", "text": "Compare"}, {"type": "image_url", "image_url": {"url": data_uri(first)}},
        {"type": "text", "text": "with"}, {"type": "image_url", "image_url": {"url": data_uri(second)}}]}]
    answer = await ask(images_relay, messages, stream=False)
    digests = [hashlib.sha256(image).hexdigest() for image in (first, second)]
    assert answer.index(digests[0]) < answer.index(digests[1])
    completion = [r for r in emulator.state.log if r.path == "/api/v2/chat/completions" and r.status == 200][-1]
    assert completion.user_message is not None
    assert "[image 1]" in completion.user_message and "[image 2]" in completion.user_message


# --- 400s: an image that cannot be used is refused, never silently dropped ---------------------------------


async def _refusal(relay: str, messages: list[dict[str, Any]]) -> dict[str, Any]:
    async with client(relay) as sdk:
        with pytest.raises(BadRequestError) as caught:
            await sdk.chat.completions.create(model=MODEL, messages=messages)  # type: ignore[arg-type]
    body = caught.value.body
    assert isinstance(body, dict)
    return body


async def test_an_image_over_20_mb_is_400_image_too_large(relay_factory: RelayFactory,
                                                         emulator: RunningEmulator) -> None:
    relay = await relay_factory(dialect="qwen-v2", images=Images(oss_base_url=emulator.oss_url),
                                max_body_bytes=40 * 1024 * 1024)
    image = b"\x89PNG\r\n\x1a\n" + bytes(21 * 1024 * 1024)
    error = await _refusal(relay, vision_messages(data_uri(image)))
    assert error["code"] == "image_too_large"
    assert not oss_requests(emulator)


async def test_bytes_that_are_no_image_are_400_unsupported_image(images_relay: str,
                                                                emulator: RunningEmulator) -> None:
    for uri in (data_uri(b"%PDF-1.7 not a picture"), "data:image/png;base64,@@@notbase64@@@",
                data_uri(solid_png(2, 2, (0, 0, 0)), "text/plain")):
        error = await _refusal(images_relay, vision_messages(uri))
        assert error["code"] == "unsupported_image", uri[:40]
    assert not oss_requests(emulator)


async def test_an_image_url_is_400_while_fetching_is_off(images_relay: str, emulator: RunningEmulator) -> None:
    """Without --fetch-image-urls a third-party URL is refused, and nothing is fetched or uploaded."""
    error = await _refusal(images_relay, vision_messages("https://example.com/cat.png"))
    assert error["code"] == "image_url_not_allowed"
    assert "fetch-image-urls" in error["message"]
    assert not [r for r in emulator.state.log if r.path == STS]


@pytest.fixture
async def probe(aiohttp_server: AiohttpServer) -> AsyncIterator[tuple[str, list[str]]]:
    """A loopback web server serving a PNG, recording every hit: an SSRF target."""
    hits: list[str] = []

    async def serve(request: web.Request) -> web.Response:
        hits.append(request.path)
        return web.Response(body=solid_png(5, 5, (7, 7, 7)), content_type="image/png")

    app = web.Application()
    app.router.add_get("/{name}", serve)
    server = await aiohttp_server(app, host="127.0.0.1")
    yield str(server.make_url("")).rstrip("/"), hits


async def test_ssrf_probes_to_loopback_are_refused_after_resolution(
        relay_factory: RelayFactory, emulator: RunningEmulator, probe: tuple[str, list[str]]) -> None:
    """--fetch-image-urls on: 127.0.0.1, and ``localhost`` (a name resolving to loopback), are refused
    with 400 image_url_not_allowed; the target never sees a request."""
    relay = await relay_factory(dialect="qwen-v2",
                                images=Images(oss_base_url=emulator.oss_url, fetch_urls=True))
    base, hits = probe
    port = base.rsplit(":", 1)[1]
    for url in (f"{base}/cat.png", f"http://localhost:{port}/cat.png", f"http://[::1]:{port}/cat.png"):
        error = await _refusal(relay, vision_messages(url))
        assert error["code"] == "image_url_not_allowed", url
    assert hits == []
    assert not [r for r in emulator.state.log if r.path == STS]


async def test_qwen_hosted_image_urls_are_referenced_without_fetching(
        images_relay: str, emulator: RunningEmulator) -> None:
    """A URL on Qwen's own hosts (here the --upstream origin, as for a generated image) goes into
    files[] as it is, whatever --fetch-image-urls says: no STS, no PUT."""
    async with client(images_relay) as sdk:
        generated = await sdk.images.generate(prompt="a red square", response_format="url")
    url = generated.data[0].url if generated.data else None
    assert url is not None and url.startswith(emulator.url)
    answer = await ask(images_relay, vision_messages(url), stream=False)
    assert "sha256=" in answer
    assert not [r for r in emulator.state.log if r.path == STS]


# --- failures of the upload path -------------------------------------------------------------------------


async def _arm_oss(emulator: RunningEmulator, fault: str, times: int = 1) -> None:
    async with aiohttp.ClientSession() as session, session.post(
            emulator.url + "/_emulator/oss/arm", json={"fault": fault, "times": times}) as response:
        assert response.status == 200, await response.text()


async def test_an_oss_403_is_502_upstream_upload_failed_with_its_code_and_not_retried(
        images_relay: str, emulator: RunningEmulator) -> None:
    await _arm_oss(emulator, "access_denied", times=3)
    async with client(images_relay) as sdk:
        with pytest.raises(APIStatusError) as caught:
            await sdk.chat.completions.create(model=MODEL, messages=vision_messages(  # type: ignore[arg-type]
                data_uri(solid_png(6, 6, (6, 6, 6)))))
    assert caught.value.status_code == 502
    body = caught.value.body
    assert isinstance(body, dict) and body["code"] == "upstream_upload_failed"
    assert "AccessDenied" in body["message"]
    assert len([r for r in emulator.state.log if r.method == "PUT"]) == 1
    assert not [r for r in emulator.state.log if r.path == "/api/v2/chats/new"], "no chat for a failed upload"


async def test_an_oss_503_is_tried_again(images_relay: str, emulator: RunningEmulator) -> None:
    await _arm_oss(emulator, "http_503", times=1)
    image = solid_png(8, 8, (8, 8, 8))
    answer = await ask(images_relay, vision_messages(data_uri(image)), stream=False)
    assert f"sha256={hashlib.sha256(image).hexdigest()}" in answer
    assert len([r for r in emulator.state.log if r.method == "PUT"]) == 2


async def test_risk_control_on_the_sts_call_is_a_challenge_as_on_chat_writes(
        images_relay: str, emulator: RunningEmulator) -> None:
    emulator.state.arm({"fault": "risk_control"}, path=STS, times=1)
    async with client(images_relay) as sdk:
        with pytest.raises(InternalServerError) as caught:
            await sdk.chat.completions.create(model=MODEL, messages=vision_messages(  # type: ignore[arg-type]
                data_uri(solid_png(9, 9, (9, 9, 9)))))
    body = caught.value.body
    assert isinstance(body, dict) and body["code"] == "upstream_challenge"
    assert not oss_requests(emulator)


# --- /v1/images/generations and /v1/images/edits ---------------------------------------------------------


@pytest.mark.parametrize(("size", "expected"), [("1792x1024", (2688, 1536)), ("1024x1024", (1328, 1328))])
async def test_generate_b64_json_returns_a_png_of_the_ratio_asked(
        images_relay: str, emulator: RunningEmulator, size: str, expected: tuple[int, int]) -> None:
    async with client(images_relay) as sdk:
        result = await sdk.images.generate(prompt="a lighthouse at dusk", size=size, response_format="b64_json")
    assert result.data and len(result.data) == 1
    image = base64.b64decode(result.data[0].b64_json or "")
    assert png_size(image) == expected
    assert result.data[0].url is None


async def test_generate_url_returns_qwens_link_and_b64_is_the_default(
        images_relay: str, emulator: RunningEmulator) -> None:
    async with client(images_relay) as sdk:
        linked = await sdk.images.generate(prompt="a fox", size="16:9", response_format="url")
        default = await sdk.images.generate(prompt="a fox")
    assert linked.data and linked.data[0].url and linked.data[0].url.startswith(emulator.url + "/output/")
    async with aiohttp.ClientSession() as session, session.get(linked.data[0].url) as response:
        assert response.status == 200
        assert png_size(await response.read()) == (2688, 1536)
    assert default.data and default.data[0].b64_json and default.data[0].url is None
    assert png_size(base64.b64decode(default.data[0].b64_json)) == (1328, 1328)


async def test_n_images_are_n_chats(images_relay: str, emulator: RunningEmulator) -> None:
    async with client(images_relay) as sdk:
        result = await sdk.images.generate(prompt="three cats", n=3)
    assert result.data and len(result.data) == 3
    chats = [r for r in emulator.state.log if r.path == "/api/v2/chats/new" and r.status == 200]
    assert len(chats) == 3
    for record in chats:
        assert isinstance(record.body, dict) and record.body.get("chat_type") == "t2i"
    async with aiohttp.ClientSession() as session:
        text = await metrics_text(session, images_relay)
    assert metric(text, 'qwen_relay_image_generations_total{kind="t2i",result="success"}') == 3


@pytest.mark.parametrize(("fields", "param"), [
    ({"n": 5}, "n"), ({"size": "512x512"}, "size"), ({"response_format": "png"}, "response_format"),
    ({"prompt": ""}, "prompt")])
async def test_bad_image_parameters_are_400(images_relay: str, emulator: RunningEmulator,
                                            fields: dict[str, Any], param: str) -> None:
    body = {"prompt": "a boat", **fields}
    async with aiohttp.ClientSession() as session, session.post(
            images_relay + "/v1/images/generations", json=body,
            headers={"Authorization": f"Bearer {TOKEN}"}) as response:
        assert response.status == 400
        error = (await response.json())["error"]
    assert error["param"] == param
    assert not [r for r in emulator.state.log if r.path == "/api/v2/chats/new"]


async def test_edit_with_two_inputs_uploads_both_once_and_drops_an_echoed_input(
        images_relay: str, emulator: RunningEmulator) -> None:
    """Two inputs, n=2: each input is uploaded once (the second chat re-uses both), both chats are
    image_edit with two files, and the stream's echo of an input is not returned as an output."""
    first, second = solid_png(40, 30, (250, 0, 0)), solid_png(30, 40, (0, 0, 250))
    prompt = "Put the second on the first\n" + directive(echo_input=True)
    async with client(images_relay) as sdk:
        result = await sdk.images.edit(image=[("a.png", first, "image/png"), ("b.png", second, "image/png")],
                                       prompt=prompt, response_format="url", n=2)
    assert result.data and len(result.data) == 2
    url = result.data[0].url or ""
    assert "/output/" in url and "/image_edit/" in url
    stored = puts(emulator)
    assert sorted(r.upload["sha256"] for r in stored if r.upload) == sorted(
        hashlib.sha256(image).hexdigest() for image in (first, second))
    completion = [r for r in emulator.state.log if r.path == "/api/v2/chat/completions" and r.status == 200][-1]
    assert isinstance(completion.body, dict)
    message = completion.body["messages"][0]
    assert message["chat_type"] == "image_edit" and len(message["files"]) == 2
    input_urls = {item["url"] for item in message["files"]}
    assert url not in input_urls


async def test_access_log_counts_images_and_never_logs_their_bytes_or_urls(
        images_relay: str, emulator: RunningEmulator, caplog: pytest.LogCaptureFixture) -> None:
    """images_in / images_out on the access line; no image byte, data URI or signed URL in any log."""
    caplog.set_level(logging.DEBUG, logger="relay")
    caplog.handler.setFormatter(JsonFormatter())
    first, second = solid_png(11, 13, (3, 1, 4)), solid_png(13, 11, (1, 5, 9))
    messages = [{"role": "user", "content": [{"type": "text", "text": "Two"},
                                             {"type": "image_url", "image_url": {"url": data_uri(first)}},
                                             {"type": "image_url", "image_url": {"url": data_uri(second)}}]}]
    await ask(images_relay, messages, stream=False)
    async with client(images_relay) as sdk:
        generated = await sdk.images.generate(prompt="a kite", response_format="url", n=2)
    lines: list[dict[str, Any]] = []
    async with asyncio.timeout(5):
        while len(lines) < 2:
            await asyncio.sleep(0)  # the access line is written after the last byte: yield to it
            lines = [json.loads(line) for line in caplog.text.splitlines() if '"relay.access"' in line]
    chat, images = lines
    assert (chat["images_in"], chat["images_out"]) == (2, 0)
    assert (images["images_in"], images["images_out"]) == (0, 2)
    assert generated.data and generated.data[0].url
    text = caplog.text + "".join(repr(getattr(r, "fields", None)) for r in caplog.records)
    for secret in (base64.b64encode(first).decode()[:40], generated.data[0].url.split("?", 1)[1],
                   *(grant.security_token[:40] for grant in emulator.state.files.grants.values())):
        assert secret not in text


async def test_a_stream_without_a_link_is_completed_from_the_stored_chat(
        images_relay: str, emulator: RunningEmulator) -> None:
    """§2.1 fallback: the image stream named no URL; GET /api/v2/chats/<id> holds it."""
    async with client(images_relay) as sdk:
        result = await sdk.images.generate(prompt="a quiet harbour\n" + directive(images=0))
    assert result.data and png_size(base64.b64decode(result.data[0].b64_json or "")) == (1328, 1328)
    assert [r for r in emulator.state.log if r.method == "GET" and r.path.startswith("/api/v2/chats/")]


async def test_quota_as_one_json_body_is_429_with_retry_after(images_relay: str, emulator: RunningEmulator) -> None:
    """§2.1: an exhausted image quota comes as one JSON body on HTTP 200; it maps as on the chat path."""
    async with aiohttp.ClientSession() as session, session.post(
            images_relay + "/v1/images/generations", headers={"Authorization": f"Bearer {TOKEN}"},
            json={"prompt": "a moon\n" + directive(stream_error="RateLimited", num=2,
                                                    stream_error_form="bare_json")}) as response:
        assert response.status == 429, await response.text()
        assert int(response.headers["Retry-After"]) == 7200  # num: hours
