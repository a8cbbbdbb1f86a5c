"""Reading image chats, their parameters, and the upload grant (issue 20, QWEN_IMAGES.md §1.2, §2)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from relay.config import Images
from relay.errors import (
    InvalidRequest,
    UpstreamChallenge,
    UpstreamInterrupted,
    UpstreamProtocolError,
    UpstreamRateLimited,
)
from relay.images.generation import GeneratedImage, collect_generation, images_in_chat
from relay.images.oss import StsGrant, oss_code, oss_target
from relay.images.oss_signing import StsCredentials
from relay.images.params import parse_image_job
from relay.images.uploads import parse_grant

URL = "https://cdn.qwenlm.ai/output/u1/t2i/c1/a.png?key=jwt"


async def feed(*payloads: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
    for payload in payloads:
        yield payload


def frame(phase: str, content: str, *, status: str = "typing", response_id: str = "r1",
          extra: dict[str, Any] | None = None) -> dict[str, Any]:
    delta: dict[str, Any] = {"role": "assistant", "content": content, "phase": phase, "status": status}
    if extra is not None:
        delta["extra"] = extra
    return {"choices": [{"delta": delta}], "response_id": response_id}


async def test_the_image_url_and_its_size_come_from_the_image_phase() -> None:
    generation = await collect_generation(feed(
        {"response.created": {"chat_id": "c1", "response_id": "r1"}},
        frame("image_gen_think", "Planning."),
        frame("answer", "A lighthouse"), frame("answer", " at dusk."),
        frame("image_gen", URL, extra={"output_image_hw": [[1536, 2688]]}),
        frame("image_gen", "", status="finished"),
        frame("image_gen", "https://cdn.qwenlm.ai/other.png", response_id="r2"),  # a second candidate
    ))
    assert generation.images == [GeneratedImage(URL, 1536, 2688)]
    assert generation.caption == "A lighthouse at dusk."


async def test_an_echoed_input_is_left_out_and_markdown_links_are_read() -> None:
    echoed = "https://qwen-webui-prod.oss-accelerate.aliyuncs.com/u1/f_in.png?x-oss-signature=s"
    generation = await collect_generation(feed(
        frame("image_edit", echoed), frame("image_edit", f"![image]({URL})")), exclude={echoed})
    assert [image.url for image in generation.images] == [URL]


@pytest.mark.parametrize(("payload", "error"), [
    ({"success": False, "data": {"code": "RateLimited", "num": 3}}, UpstreamRateLimited),
    ({"ret": ["FAIL_SYS_USER_VALIDATE", "RGV587_ERROR::SM"]}, UpstreamChallenge),
    ({"success": False, "data": {"code": "Bad_Request", "details": "internal error"}}, UpstreamInterrupted),
    ({"error": "Internal error!"}, UpstreamInterrupted),
])
async def test_errors_map_as_on_the_chat_path(payload: dict[str, Any], error: type[Exception]) -> None:
    with pytest.raises(error):
        await collect_generation(feed(payload))


def test_the_stored_chat_is_read_when_the_stream_held_no_link() -> None:
    chat = {"success": True, "data": {"chat": {"history": {"messages": {
        "m1": {"role": "user", "content": "a fox", "content_list": [{"phase": "image_gen", "content": URL}]},
        "m2": {"role": "assistant", "content_list": [
            {"phase": "answer", "content": "Here"},
            {"phase": "image_gen", "content": URL, "status": "finished",
             "extra": {"output_image_hw": [[1328, 1328]]}}]}}}}}}
    assert images_in_chat(chat) == [GeneratedImage(URL, 1328, 1328)]


@pytest.mark.parametrize(("fields", "expected"), [
    ({"prompt": "x"}, (None, 1, "b64_json", "qwen3-max")),
    ({"prompt": "x", "size": "1792x1024", "n": "2", "response_format": "url", "model": "dall-e-3"},
     ("16:9", 2, "url", "qwen3-max")),
    ({"prompt": "x", "size": "9:16", "model": "qwen3-235b-a22b"}, ("9:16", 1, "b64_json", "qwen3-235b-a22b")),
])
def test_image_parameters(fields: dict[str, Any], expected: tuple[Any, ...]) -> None:
    job = parse_image_job(fields, Images())
    assert (job.ratio, job.n, job.response_format, job.model) == expected


@pytest.mark.parametrize(("fields", "param"), [
    ({"prompt": "x", "n": 5}, "n"), ({"prompt": "x", "n": 0}, "n"), ({"prompt": "x", "n": True}, "n"),
    ({"prompt": "x", "size": "256x256"}, "size"), ({"prompt": "x", "size": "2:1"}, "size"),
    ({"prompt": "x", "response_format": "png"}, "response_format"), ({}, "prompt"),
    ({"prompt": "x", "stream": True}, "stream")])
def test_bad_image_parameters_name_their_field(fields: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        parse_image_job(fields, Images(max_n=4))
    assert caught.value.param == param


GRANT = {"access_key_id": "STS.k", "access_key_secret": "SECRET-1", "security_token": "CAIS-TOKEN-1", "bucketname": "qwen-webui-prod",
         "endpoint": "oss-accelerate.aliyuncs.com", "region": "oss-ap-southeast-1",
         "file_path": "u1/f1_a b.png", "file_id": "f1", "file_url": "https://signed"}


def test_the_grant_is_read_wrapped_or_flat() -> None:
    wrapped = parse_grant({"success": True, "request_id": "x", "data": GRANT})
    assert wrapped == parse_grant(GRANT)
    assert (wrapped.bucket, wrapped.user_id, wrapped.file_url) == ("qwen-webui-prod", "u1", "https://signed")
    assert "SECRET-1" not in repr(wrapped) and "CAIS-TOKEN-1" not in repr(wrapped)


@pytest.mark.parametrize(("payload", "error"), [
    ({"success": False, "data": {"code": "RateLimited", "num": 1}}, UpstreamRateLimited),
    ({"ret": ["FAIL_SYS_USER_VALIDATE"]}, UpstreamChallenge),
    ({"success": True, "data": {**GRANT, "security_token": ""}}, UpstreamProtocolError)])
def test_a_refused_or_broken_grant_raises_what_it_means(payload: dict[str, Any], error: type[Exception]) -> None:
    with pytest.raises(error):
        parse_grant(payload)


def grant(endpoint: str | None) -> StsGrant:
    return StsGrant(StsCredentials("ak", "s", "t"), "qwen-webui-prod", "oss-ap-southeast-1", endpoint,
                    "u1/f1_a b.png", "f1", None)


def test_where_the_put_goes() -> None:
    assert oss_target(grant("oss-accelerate.aliyuncs.com")) == (
        "https://qwen-webui-prod.oss-accelerate.aliyuncs.com/u1/f1_a%20b.png", None)
    assert oss_target(grant(None))[0] == "https://qwen-webui-prod.oss-ap-southeast-1.aliyuncs.com/u1/f1_a%20b.png"
    assert oss_target(grant("127.0.0.1:9000")) == ("https://127.0.0.1:9000/qwen-webui-prod/u1/f1_a%20b.png", None)
    # oss_base_url: the bytes go there; the Host (and the signed resource) stay the bucket's.
    assert oss_target(grant("oss-accelerate.emu.invalid"), "http://127.0.0.1:5000/") == (
        "http://127.0.0.1:5000/u1/f1_a%20b.png", "qwen-webui-prod.oss-accelerate.emu.invalid")


def test_the_oss_error_code_is_read_from_its_xml() -> None:
    body = (b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>SignatureDoesNotMatch</Code><Message>m</Message>'
            b"<StringToSign>secret</StringToSign></Error>")
    assert oss_code(body) == "SignatureDoesNotMatch"
    assert oss_code(b"<html>gateway</html>") is None
