"""The OSS stand-in: Alibaba OSS for the uploads, on its own loopback port (QWEN_IMAGES.md §6.2).

Started with the emulator (a ``cleanup_ctx`` of the chat app, so ``start_emulator``,
pytest-aiohttp's test server and ``python -m relay.emulator`` all get one) on
``127.0.0.1:<free port>``; its URL is ``EmulatorState.files.oss_url``
(``RunningEmulator.oss_url``, ``GET /_emulator/files`` → ``oss_url``). A relay
reaches it through ``[upstream] oss_base_url``: the STS answer's endpoint
(``oss-accelerate.emu.invalid``) never resolves.

- **Addressing.** Virtual host (``Host: qwen-webui-prod.<anything>``) or path style
  (``/qwen-webui-prod/<key>``; always when the Host is an IP or ``localhost``). The
  path is percent-decoded once for the key. Another bucket is 404 ``NoSuchBucket``.
- **PUT.** A query-signed PUT (the ``file_url``) is 403 ``SignatureDoesNotMatch``
  (§1.3, measured); no ``Authorization`` is 403 ``AccessDenied``; else V4 or V1 is
  verified by ``oss_auth.py`` against the grant of the access key id (its secret,
  token and expiry). The key must be the grant's (403 ``AccessDenied``), a
  ``Content-MD5`` must match (400 ``InvalidDigest``) and, with knob
  ``enforce_declared`` (default), the size must be the declared ``filesize`` and the
  ``Content-Type`` of the declared family (403 ``AccessDenied``). Success: 200, empty
  body, ``ETag: "<MD5, upper-case hex>"``, ``x-oss-request-id``.
- **GET.** The object, with a valid V4 pre-signed query (the ``file_url``) or a
  ``?key=`` resource JWT; else 403 ``AccessDenied``; 404 ``NoSuchKey`` if not stored.
- **Errors** are OSS XML: ``<Error><Code>…</Code><Message>…</Message><RequestId>…
  </RequestId><HostId>…</HostId>…</Error>`` with ``Content-Type: application/xml``.
- **Faults** (``POST /_emulator/oss/arm {"fault", "times", "delay_ms"}``), applied to
  the next PUTs: ``http_500`` (``InternalError``), ``http_503`` (``ServiceUnavailable``),
  ``access_denied``, ``signature_mismatch``, ``token_expired``
  (``SecurityTokenExpired``), ``reset`` (the connection is dropped before an answer,
  mid-body when the body is not yet read), ``slow`` (waits ``delay_ms`` before
  reading the body, then answers normally).

Log: every request is a ``RequestRecord`` in the emulator's log (method, path
``/<bucket>/<key>``, headers with the Authorization and the security token
redacted, cookies, status) whose ``upload`` holds ``bucket``, ``key``, ``size``,
``sha256``, ``content_type``, ``signature_version`` (``v4``, ``v1``,
``presigned`` or null) and ``result`` (``"stored"``, ``"read"`` or the OSS code).
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import secrets
import time
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import unquote

from aiohttp import web

from relay.emulator.capture import capture_cookies, capture_headers
from relay.emulator.handling import EMULATOR_STATE
from relay.emulator.oss_auth import (
    OssError,
    OssRequest,
    Signer,
    scheme_of,
    verify_presigned_v4,
    verify_v1,
    verify_v4,
)
from relay.emulator.playback import abort, stall
from relay.emulator.resource_keys import resource_key_problem
from relay.emulator.state import EmulatorState, RequestRecord
from relay.emulator.uploads import BUCKET, ArmedOssFault, FileBook

__all__ = ["OSS_FAULTS", "oss_site"]

OSS_FAULTS = ("http_500", "http_503", "access_denied", "signature_mismatch", "token_expired", "reset", "slow")
# 20 MB images (§1.7) with room to spare; aiohttp's 1 MiB default would refuse them.
MAX_OBJECT_BYTES = 32 * 1024 * 1024
_STATE: web.AppKey[EmulatorState] = web.AppKey("oss_emulator_state", EmulatorState)
# Status, code and message of each fault that is an error document.
_FAULT_ERRORS: dict[str, tuple[int, str, str]] = {
    "http_500": (500, "InternalError", "We encountered an internal error. Please try again."),
    "http_503": (503, "ServiceUnavailable", "Please reduce your request rate."),
    "access_denied": (403, "AccessDenied", "You have no right to access this object."),
    "signature_mismatch": (403, "SignatureDoesNotMatch",
                           "The request signature we calculated does not match the signature you provided."),
    "token_expired": (403, "SecurityTokenExpired", "The security token you provided has expired."),
}


async def oss_site(app: web.Application) -> AsyncIterator[None]:
    """``cleanup_ctx`` of the chat app: serve the OSS stand-in while the emulator runs."""
    state = app[EMULATOR_STATE]
    oss_app = web.Application(client_max_size=MAX_OBJECT_BYTES)
    oss_app[_STATE] = state
    oss_app.router.add_route("*", "/{tail:.*}", _object)
    runner = web.AppRunner(oss_app, handler_cancellation=True, shutdown_timeout=1.0, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        state.files.oss_url = f"http://127.0.0.1:{runner.addresses[0][1]}"
        yield
    finally:
        state.files.oss_url = None
        await runner.cleanup()


def _address(host: str, path: str) -> tuple[str, str]:
    """(bucket, key) from the Host header and the decoded path: virtual host, else path style."""
    name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
    name = name.strip("[]")
    try:
        ipaddress.ip_address(name)
        is_ip = True
    except ValueError:
        is_ip = name == "localhost"
    if not is_ip and "." in name:
        return name.split(".", 1)[0], path.removeprefix("/")
    bucket, _, key = path.removeprefix("/").partition("/")
    return bucket, key


def _error(record: RequestRecord, error: OssError, host: str) -> web.Response:
    record.status = error.status
    if record.upload is not None:
        record.upload["result"] = error.code
    request_id = secrets.token_hex(12).upper()
    return web.Response(status=error.status, body=error.xml(request_id, host), content_type="application/xml",
                        headers={"x-oss-request-id": request_id, "Server": "AliyunOSS"})


async def _object(request: web.Request) -> web.StreamResponse:
    state = request.app[_STATE]
    host = request.host
    bucket, key = _address(host, unquote(request.raw_path.split("?", 1)[0]))
    record = state.begin(request.method, f"/{bucket}/{key}", None)
    record.headers = capture_headers(request.headers.items())
    record.cookies = capture_cookies(request.cookies)
    try:
        if bucket != BUCKET:
            raise OssError(404, "NoSuchBucket", "The specified bucket does not exist.", BucketName=bucket)
        if request.method == "PUT":
            return await _put(request, state, record, bucket, key)
        if request.method in ("GET", "HEAD"):
            return _get(request, state.files, record, bucket, key)
        raise OssError(405, "MethodNotAllowed", "The specified method is not allowed against this resource.")
    except OssError as error:
        return _error(record, error, host)
    finally:
        record.finished = True
        state.notify()


def _lookup(book: FileBook) -> Any:
    def lookup(access_key_id: str) -> Signer | None:
        grant = book.grants.get(access_key_id)
        if grant is None:
            return None
        return Signer(grant.access_key_id, grant.access_key_secret, grant.security_token, grant.expires_at)

    return lookup


async def _apply_fault(request: web.Request, armed: ArmedOssFault) -> bool:
    """Play an armed fault; True when the connection was dropped (nothing more to send)."""
    if armed.fault == "slow":
        try:
            await stall(request, armed.delay_ms / 1000)
        except ConnectionResetError:
            return True
        return False
    if armed.fault == "reset":
        await abort(request)
        return True
    raise OssError(*_FAULT_ERRORS[armed.fault])


async def _put(request: web.Request, state: EmulatorState, record: RequestRecord, bucket: str,
               key: str) -> web.StreamResponse:
    book = state.files
    headers = {name.lower(): value for name, value in request.headers.items()}
    query = list(request.query.items())
    scheme = scheme_of(headers, query)
    record.upload = {"bucket": bucket, "key": key, "size": None, "sha256": None,
                     "content_type": headers.get("content-type"), "signature_version": scheme, "result": None}
    armed = book.take_oss_fault()
    if armed is not None:
        record.fault = armed.fault
        if await _apply_fault(request, armed):
            state.client_gone(record)
            record.upload["result"] = "reset"
            return web.Response(status=500)  # never delivered: the connection is gone
    data = await request.read()
    sha256 = hashlib.sha256(data).hexdigest()
    record.upload |= {"size": len(data), "sha256": sha256}
    oss_request = OssRequest("PUT", bucket, key, headers, query, sha256)
    now = time.time()
    if scheme == "presigned":
        raise OssError(403, "SignatureDoesNotMatch",
                       "The request signature we calculated does not match the signature you provided. "
                       "A pre-signed download URL cannot be used to upload.")
    if scheme is None:
        raise OssError(403, "AccessDenied", "Anonymous access is forbidden for this operation.")
    if scheme == "v4":
        accept = book.knobs.oss_region_prefix == "accept"
        signer = verify_v4(oss_request, _lookup(book), now, accept_prefixed_region=accept)
    else:
        signer = verify_v1(oss_request, _lookup(book), now)
    grant = book.grants[signer.access_key_id]
    if (grant.bucket, grant.key) != (bucket, key):
        raise OssError(403, "AccessDenied", "The security token does not allow writing this object.")
    if "content-md5" in headers and headers["content-md5"] != base64.b64encode(hashlib.md5(data).digest()).decode():
        raise OssError(400, "InvalidDigest", "The Content-MD5 you specified is not valid.")
    content_type = headers.get("content-type", "")
    if book.knobs.enforce_declared:
        _check_declared(grant.filesize, grant.filetype, len(data), content_type)
    book.store(grant, data, content_type, scheme)
    record.upload["result"] = "stored"
    record.status = 200
    return web.Response(status=200, headers={"ETag": _etag(data), "x-oss-request-id": secrets.token_hex(12).upper(),
                                             "Server": "AliyunOSS"})


def _check_declared(filesize: int, filetype: str, size: int, content_type: str) -> None:
    """[I] The STS grant's policy: the declared size, and a type of the declared family."""
    if size != filesize:
        raise OssError(403, "AccessDenied", f"The object is {size} bytes; getstsToken declared {filesize}.")
    family = filetype.split("/", 1)[0]
    if family in ("image", "video", "audio") and not content_type.startswith(family + "/"):
        raise OssError(403, "AccessDenied", f"Content-Type {content_type!r} is not of the declared type {filetype!r}.")


def _etag(data: bytes) -> str:
    """[I] OSS's ETag: the quoted MD5, upper-case hex."""
    return f'"{hashlib.md5(data).hexdigest().upper()}"'


def _get(request: web.Request, book: FileBook, record: RequestRecord, bucket: str, key: str) -> web.Response:
    """Serve a stored object to a pre-signed ``file_url`` or a ``?key=`` link."""
    query = list(request.query.items())
    headers = {name.lower(): value for name, value in request.headers.items()}
    scheme = scheme_of(headers, query)
    record.upload = {"bucket": bucket, "key": key, "size": None, "sha256": None, "content_type": None,
                     "signature_version": scheme, "result": None}
    stored = book.objects.get((bucket, key))
    now = time.time()
    if scheme == "presigned":
        service = Signer(book.service_key_id, book.service_key_secret, None, None)
        verify_presigned_v4(OssRequest(request.method, bucket, key, headers, query, ""),
                            lambda ak: service if ak == service.access_key_id else None, now)
    elif stored is None or resource_key_problem(book.secret, request.query.get("key"), user_id=stored.user_id,
                                                resource_id=stored.file_id, now=now,
                                                not_before=book.links_not_before) is not None:
        raise OssError(403, "AccessDenied", "You have no right to access this object.")
    if stored is None:
        raise OssError(404, "NoSuchKey", "The specified key does not exist.", Key=key)
    record.upload |= {"size": stored.size, "sha256": stored.sha256, "content_type": stored.content_type,
                      "result": "read"}
    record.status = 200
    body = b"" if request.method == "HEAD" else stored.data
    return web.Response(status=200, body=body, headers={"ETag": _etag(stored.data), "Server": "AliyunOSS",
                                                        "Content-Type": stored.content_type or "application/octet-stream"})
