"""POST /v1/images/generations and /v1/images/edits: Qwen Chat's t2i and image_edit chats (issue 20).

Each of the ``n`` images is a chat of its own (QWEN_IMAGES.md §2.1: one image
per request upstream), made one after another, each admitted like a chat
completion: a concurrency slot, the caller's token or a pool credential, the
retries while nothing was answered (``handlers.exchange``), all within
--nonstream-deadline. Edits upload their input images first, with the same
credential (cached, so ``n`` chats upload each image once).

``b64_json`` (the default) downloads each image from Qwen's own hosts and
deletes the chat afterwards, as chat completions do; ``url`` returns Qwen's link
and keeps the chat, since the link may not outlive it (its lifetime is not known).

``images_context`` sets up the uploads shared by these endpoints and by chat
vision (``relay.images.Uploads``), once the egress and the dialect exist.
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import AsyncIterator
from functools import partial
from typing import Any

from aiohttp import BodyPartReader, web

from ..accounts.credential import Credential
from ..dialects.qwen_v2 import QwenV2
from ..dialects.v2_errors import payload_error
from ..dialects.web_headers import DEFAULT_USER_AGENT
from ..errors import (
    BodyTooLarge,
    InvalidRequest,
    RelayError,
    RequestTimeout,
    UpstreamChallenge,
    UpstreamProtocolError,
)
from ..images.cache import UploadCache
from ..images.counters import ImageCounters, count_request_images
from ..images.downloads import download_image
from ..images.fetch import ImageFetcher
from ..images.generation import GeneratedImage, collect_generation, images_in_chat
from ..images.oss import OssPut
from ..images.params import ImageJob, parse_image_job
from ..images.sources import ImageBytes, image_bytes
from ..images.uploads import Uploads, file_item
from ..images.vision import MAX_IMAGES_PER_MESSAGE
from ..jsonio import dumps
from ..keys import CALLS, CONFIG, EGRESS, METRICS, OPERATOR
from ..middleware import INFO
from ..openai_wire import ChatRequest, parse_json_body
from ..pipeline import StreamStats, upstream_payloads
from .common import caller as identify_caller
from .common import json_response, read_body
from .exchange import clean_up, count_stream_stats, gated, nonstream_deadline, until_committed
from .models import resolve_cached, resolve_request

__all__ = ["IMAGES", "edits", "generations", "images_context"]

#: the relay's image uploads (chat vision and edits), set up by ``images_context``.
IMAGES = web.AppKey("images", Uploads)
_IMAGE_FIELDS = ("image", "image[]")
_TEXT_FIELD_BYTES = 64 * 1024


async def images_context(app: web.Application) -> AsyncIterator[None]:
    """Set up the uploads (after ``_upstream_context``: it needs the egress and the dialect); close them."""
    config = app[CONFIG]
    calls = app[CALLS]
    settings, timeouts = config.images, config.timeouts
    counters = ImageCounters()
    oss = OssPut(app[EGRESS], signing="v1" if settings.oss_signing == "v1" else "v4",
                 base_url=settings.oss_base_url, user_agent=config.web.user_agent or DEFAULT_USER_AGENT,
                 timeout_s=timeouts.upstream_s, attempts=config.retries, backoff_base_s=timeouts.backoff_base_s,
                 backoff_max_s=timeouts.backoff_max_s)
    uploads = app[IMAGES] = Uploads(oss, UploadCache(settings.upload_cache_ttl_s), ImageFetcher(), counters,
                                    fetch_urls=settings.fetch_urls, upstream_origin=calls.client.origin)
    app[METRICS].collectors.append(counters.render)
    if isinstance(calls.dialect, QwenV2):
        calls.dialect.images = uploads
    try:
        yield
    finally:
        await uploads.close()


async def generations(request: web.Request) -> web.Response:
    """``POST /v1/images/generations`` (JSON): ``n`` t2i chats."""
    caller = identify_caller(request)
    body = parse_json_body(await read_body(request))
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    job = parse_image_job(body, request.app[CONFIG].images)
    return await _serve(request, caller, job, "t2i", [])


async def edits(request: web.Request) -> web.Response:
    """``POST /v1/images/edits`` (multipart): upload ``image`` / ``image[]``, then ``n`` image_edit chats."""
    caller = identify_caller(request)
    fields, images = await _read_form(request)
    job = parse_image_job(fields, request.app[CONFIG].images)
    if not images:
        raise InvalidRequest("'image' is required: send the image(s) to edit as 'image' or 'image[]' files.",
                             param="image", code="missing_required_parameter")
    return await _serve(request, caller, job, "image_edit", images)


async def _serve(request: web.Request, caller: Any, job: ImageJob, kind: str,
                 inputs: list[ImageBytes]) -> web.Response:
    app = request.app
    info = request[INFO]
    info.model = job.model
    dialect = app[CALLS].dialect
    if not isinstance(dialect, QwenV2):
        raise InvalidRequest("Image generation needs the qwen-v2 dialect (--dialect qwen-v2).",
                             code="unsupported_dialect")
    async with caller.admit(job.model, app[OPERATOR].state):
        chat = ChatRequest(model=job.model, messages=[{"role": "user", "content": job.prompt}], stream=False,
                           include_usage=False, body={})
        counters = app[IMAGES].counters
        data: list[dict[str, Any]] = []
        async with nonstream_deadline(app):
            options = resolve_cached(app, caller, chat) or await resolve_request(request, caller, chat)
            exchange = until_committed(app, partial(_one_image_chat, request, job, kind, inputs,
                                                    options.upstream_model))
            for _ in range(job.n):  # n chats at most; one that answers two images counts for two
                try:
                    data += await gated(request, caller, exchange)
                except RelayError as exc:
                    counters.count_generation(kind, exc.instance_code or exc.code or "error")
                    raise
                counters.count_generation(kind, "success")
                if len(data) >= job.n:
                    break
    data = data[:job.n]
    count_request_images(outputs=len(data))
    response = await json_response(request, dumps({"created": int(time.time()), "data": data}))
    info.bytes_out = response.content_length or 0
    return response


async def _one_image_chat(request: web.Request, job: ImageJob, kind: str, inputs: list[ImageBytes],
                          model: str, credential: Credential) -> list[dict[str, Any]]:
    """One image chat with ``credential``: its images as the response's ``data`` items."""
    app = request.app
    calls = app[CALLS]
    dialect = calls.dialect
    assert isinstance(dialect, QwenV2)  # checked by _serve
    sender = calls.sender(credential)
    files: list[dict[str, Any]] = []
    if inputs:
        uploads = app[IMAGES]
        count_request_images(inputs=len(inputs))
        files = [file_item(await uploads.upload(image, sender)) for image in inputs]
    echoes = frozenset(item["url"] for item in files)
    call = await dialect.prepare_image(prompt=job.prompt, model=model, chat_type=kind,
                                       ratio=job.ratio or ("1:1" if kind == "t2i" else None), files=files,
                                       send_json=sender)
    challenged = False
    try:
        images, caption = await _read_images(request, call, credential, echoes)
        if not images and call.chat_id:  # the stream ended without a link: the stored chat may hold it
            images = images_in_chat(await sender(dialect.chat_call(call.chat_id)), echoes)
        if not images:
            raise UpstreamProtocolError("Qwen Chat answered without an image.", code="upstream_empty_answer")
        return [await _item(request, image, caption, job.response_format, credential) for image in images]
    except UpstreamChallenge:
        challenged = True
        raise
    finally:
        # A url answer keeps its chat: the link may not outlive it. A challenged credential rests.
        if not challenged and job.response_format == "b64_json":
            clean_up(app, calls, call, credential)


async def _read_images(request: web.Request, call: Any, credential: Credential,
                       echoes: frozenset[str]) -> tuple[list[GeneratedImage], str]:
    app = request.app
    calls, max_bytes = app[CALLS], app[CONFIG].limits.max_line_bytes
    async with calls.open(call, credential) as upstream:
        if upstream.content_type != "text/event-stream":
            # Quota and moderation come as one JSON body on HTTP 200 (§2.1).
            payload = await upstream.read_json(max_bytes)
            error = payload_error(payload)
            raise error if error is not None else UpstreamProtocolError(
                "Qwen Chat answered one JSON body where an image stream was expected.")
        stats = StreamStats()
        try:
            generation = await collect_generation(upstream_payloads(upstream.iter_bytes(), max_bytes, stats),
                                                  echoes)
        finally:
            count_stream_stats(app[METRICS], stats)
    return generation.images, generation.caption


async def _item(request: web.Request, image: GeneratedImage, caption: str, response_format: str,
                credential: Credential) -> dict[str, Any]:
    item: dict[str, Any]
    if response_format == "url":
        item = {"url": image.url}
    else:
        app = request.app
        data = await download_image(app[EGRESS], image.url, upstream_origin=app[CALLS].client.origin,
                                    proxy=credential.proxy, timeout_s=app[CONFIG].timeouts.upstream_s)
        item = {"b64_json": base64.b64encode(data).decode("ascii")}
    if caption:
        item["revised_prompt"] = caption
    return item


async def _read_form(request: web.Request) -> tuple[dict[str, str], list[ImageBytes]]:
    """The text fields and image files of a multipart form, within --max-body-bytes and --body-timeout."""
    config = request.app[CONFIG]
    limit = config.limits.max_body_bytes
    if not request.content_type.startswith("multipart/form-data"):
        raise InvalidRequest("/v1/images/edits takes multipart/form-data (fields 'image' or 'image[]', "
                             "'prompt', …).", code="invalid_content_type")
    if request.content_length is not None and request.content_length > limit:
        raise BodyTooLarge(f"The request body is {request.content_length} bytes; the limit is {limit} "
                           "(--max-body-bytes).")
    fields: dict[str, str] = {}
    images: list[ImageBytes] = []
    budget = [limit]
    try:
        async with asyncio.timeout(config.timeouts.client_body_s):
            reader = await request.multipart()
            while (part := await reader.next()) is not None:
                if not isinstance(part, BodyPartReader):
                    raise InvalidRequest("Nested multipart bodies are not accepted.")
                name = part.name or ""
                if name in _IMAGE_FIELDS:
                    if len(images) >= MAX_IMAGES_PER_MESSAGE:
                        raise InvalidRequest(f"At most {MAX_IMAGES_PER_MESSAGE} images can be edited together.",
                                             param="image", code="invalid_value")
                    data = await _read_part(part, budget, limit)
                    images.append(image_bytes(data, f"image[{len(images)}]"))
                else:
                    data = await _read_part(part, budget, min(limit, _TEXT_FIELD_BYTES))
                    fields[name] = data.decode("utf-8", "replace")
    except TimeoutError as exc:
        raise RequestTimeout(f"The request body did not arrive within {config.timeouts.client_body_s:g} s "
                             "(--body-timeout).") from exc
    except ValueError as exc:  # a malformed multipart body (aiohttp raises ValueError subclasses)
        raise InvalidRequest(f"The multipart body is malformed: {exc}.") from exc
    return fields, images


async def _read_part(part: BodyPartReader, budget: list[int], limit: int) -> bytes:
    """One part's bytes, charged to the body's ``budget``; 413 past it."""
    chunks: list[bytes] = []
    size = 0
    while chunk := await part.read_chunk(64 * 1024):
        size += len(chunk)
        budget[0] -= len(chunk)
        if budget[0] < 0 or size > limit:
            raise BodyTooLarge("The request body exceeds --max-body-bytes, or a text field its 64 KiB.")
        chunks.append(chunk)
    return b"".join(chunks)
