"""The emulator's upload and image side (QWEN_IMAGES.md §6; issue 20), driven directly over real sockets.

STS on the chat host, the OSS stand-in on its own loopback port (signed here with
the relay's signer, ``relay/images/oss_signing.py``, and verified there by code
that shares nothing with it), completions that prove the bytes arrived, t2i and
image_edit streams linking real PNGs, and the failure knobs. Each test breaks one
thing against the path the 2026 web app takes, which is accepted.
"""

from __future__ import annotations

import hashlib
import json
import struct
import zlib
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import pytest
from pytest_aiohttp import AiohttpClient

from relay.emulator import make_emulator_app
from relay.emulator.capture import redacted
from relay.emulator.oss_auth import OssError, OssRequest, Signer, verify_v1, verify_v4
from relay.emulator.png import solid_png
from relay.images import StsCredentials, quote_key, sign_put
from relay.images.oss_signing import v4_canonical_request, v4_signature, v4_string_to_sign
from tests.emulator.support import (
    Client,
    chat_headers,
    completion_body,
    completion_url,
    create_chat,
    deltas,
    events,
    login_headers,
    state_of,
    v2_headers,
    with_directive,
)

STS = "/api/v2/files/getstsToken"
BUCKET = "qwen-webui-prod"
PNG = solid_png(3, 2, (1, 2, 3))
INVALID_INPUT = {"code": "invalid_input", "details": "输入或附件无效。请检查后重试。"}
UUID_RE = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"


@pytest.fixture
async def client(aiohttp_client: AiohttpClient) -> Client:
    return await aiohttp_client(make_emulator_app())


def oss_url(client: Client) -> str:
    url = state_of(client).files.oss_url
    assert url is not None and url.startswith("http://127.0.0.1:")
    return url


async def sts(client: Client, body: Mapping[str, Any] | None = None, *, token: str = "test-token",
              headers: dict[str, str] | None = None) -> tuple[aiohttp.ClientResponse, Any]:
    payload = {"filename": "cat.png", "filesize": len(PNG), "filetype": "image"} if body is None else body
    async with client.post(STS, json=payload, headers=headers or v2_headers(token=token)) as resp:
        return resp, await resp.json()


async def grant(client: Client, data: bytes = PNG, *, filename: str = "cat.png", token: str = "test-token"
                ) -> dict[str, Any]:
    resp, answer = await sts(client, {"filename": filename, "filesize": len(data), "filetype": "image"}, token=token)
    assert resp.status == 200 and answer["success"] is True, answer
    issued: dict[str, Any] = answer["data"]
    return issued


def credentials(issued: Mapping[str, Any]) -> StsCredentials:
    return StsCredentials(issued["access_key_id"], issued["access_key_secret"], issued["security_token"])


async def put(client: Client, issued: Mapping[str, Any], data: bytes = PNG, *, version: str = "v4",
              content_type: str = "image/png", path_style: bool = False, url: str | None = None,
              change: Mapping[str, str] | None = None) -> tuple[int, str, Mapping[str, str]]:
    """PUT ``data`` as the grant's object, signed by the relay's signer; ``change`` edits headers after signing."""
    headers = sign_put(version, credentials(issued), bucket=issued["bucketname"],  # type: ignore[arg-type]
                       key=issued["file_path"], content_type=content_type, region=issued["region"])
    headers |= dict(change or {})
    key = quote_key(issued["file_path"])
    if url is None and path_style:
        url = f"{oss_url(client)}/{BUCKET}/{key}"
    elif url is None:
        url = f"{oss_url(client)}/{key}"
        headers["Host"] = f"{BUCKET}.{issued['endpoint']}"
    async with client.session.put(url, data=data, headers=headers) as resp:
        return resp.status, await resp.text(), resp.headers.copy()


async def upload(client: Client, data: bytes = PNG, *, token: str = "test-token", filename: str = "cat.png"
                 ) -> dict[str, Any]:
    issued = await grant(client, data, filename=filename, token=token)
    status, text, _ = await put(client, issued, data)
    assert status == 200, text
    return issued


def file_item(issued: Mapping[str, Any], data: bytes = PNG) -> dict[str, Any]:
    """The web app's ``files[]`` item (§1.5)."""
    user_id = issued["file_path"].split("/", 1)[0]
    return {"type": "image", "file": {"created_at": 0, "data": {}, "filename": "cat.png", "hash": None,
                                      "id": issued["file_id"], "user_id": user_id,
                                      "meta": {"name": "cat.png", "size": len(data), "content_type": "image/png"},
                                      "update_at": 0},
            "id": issued["file_id"], "url": issued["file_url"], "name": "cat.png", "collection_name": "",
            "progress": 0, "status": "uploaded", "greenNet": "success", "size": len(data), "error": "",
            "itemId": "x", "file_type": "image/png", "showType": "image", "file_class": "vision", "uploadTaskId": "y"}


async def complete(client: Client, files: list[Any], text: str = "what is this", *, token: str = "test-token",
                   **extra: Any) -> str:
    chat_id = await create_chat(client)
    body = completion_body(chat_id, text, **extra)
    body["messages"][0]["files"] = files
    async with client.post(completion_url(chat_id), json=body, headers=chat_headers(chat_id, token=token)) as resp:
        assert resp.status == 200
        return await resp.text()


def answer_of(raw: str) -> str:
    return "".join(d.get("content", "") for d in deltas(raw) if d.get("phase") == "answer")


def xml_code(text: str) -> str:
    return text.split("<Code>", 1)[1].split("</Code>", 1)[0]


def puts(client: Client) -> list[dict[str, Any]]:
    return [r.to_json() for r in state_of(client).log if r.method == "PUT"]


# -- the verifier on its own -------------------------------------------------------------------------------------


def vector_request(headers: Mapping[str, str]) -> OssRequest:
    return OssRequest("PUT", BUCKET, "uploads/cat.png", {k.lower(): v for k, v in headers.items()}, [], "")


def test_verifier_accepts_the_known_answer_vectors_of_the_notes() -> None:
    """§6.2 self-test: the V4 (b1ca75bf…) and V1 (WutQx…) vectors of §1.3 verify, and one changed byte does not."""
    signer = Signer("AKID", "secret", "sts-token", None)
    moment = datetime(2026, 7, 12, 12, 34, 56, tzinfo=UTC).timestamp()
    v4 = {"Content-Type": "image/png", "x-oss-date": "20260712T123456Z", "x-oss-content-sha256": "UNSIGNED-PAYLOAD",
          "x-oss-security-token": "sts-token",
          "x-oss-user-agent": "aliyun-sdk-js/6.23.0 Chrome 132.0.0.0 on Windows 10 64-bit",
          "Authorization": "OSS4-HMAC-SHA256 Credential=AKID/20260712/ap-southeast-1/oss/aliyun_v4_request, "
                           "Signature=b1ca75bf242f3351c09ee3a8dd0a7fb450930f0f2e6252e683f09d3b4acdfa91"}
    assert verify_v4(vector_request(v4), {"AKID": signer}.get, moment) == signer
    v1 = {"Content-Type": "image/png", "Date": "Sun, 12 Jul 2026 12:34:56 GMT", "x-oss-security-token": "sts-token",
          "Authorization": "OSS AKID:WutQxZz8wDrD8VuVhcL5S9uT/wk="}
    assert verify_v1(vector_request(v1), {"AKID": signer}.get, moment) == signer
    with pytest.raises(OssError) as refused:
        verify_v4(vector_request(v4 | {"Content-Type": "image/jpeg"}), {"AKID": signer}.get, moment)
    assert refused.value.code == "SignatureDoesNotMatch" and "sts-token" not in refused.value.xml("r", "h").decode()


# -- STS ---------------------------------------------------------------------------------------------------------


async def test_sts_token_issues_per_call_credentials_for_one_key_of_the_user(client: Client) -> None:
    first, second = await grant(client), await grant(client)
    assert first["access_key_id"].startswith("STS.") and first["security_token"].startswith("CAIS")
    assert (first["bucketname"], first["region"], first["endpoint"]) == (
        BUCKET, "oss-ap-southeast-1", "oss-accelerate.emu.invalid")
    user_id, _, name = first["file_path"].partition("/")
    assert name == f"{first['file_id']}_cat.png" and second["file_path"].startswith(user_id + "/")
    assert first["access_key_id"] != second["access_key_id"] and first["file_id"] != second["file_id"]
    other = await grant(client, token="other-token")
    assert not other["file_path"].startswith(user_id + "/")
    query = parse_qs(urlsplit(first["file_url"]).query)
    assert query["x-oss-expires"] == ["300"] and query["x-oss-signature-version"] == ["OSS4-HMAC-SHA256"]
    assert urlsplit(first["file_url"]).hostname == f"{BUCKET}.oss-accelerate.emu.invalid"


async def test_sts_token_is_as_strict_as_chat_creation(client: Client) -> None:
    """No token cookie: risk control, as chats/new; no ``version``: 200 + 400; the Referer may be any chat page."""
    no_cookie = {k: v for k, v in v2_headers().items() if k != "Cookie"}
    resp, answer = await sts(client, headers=no_cookie)
    assert resp.status == 200 and answer["ret"][0] == "FAIL_SYS_USER_VALIDATE"
    no_version = {k: v for k, v in v2_headers().items() if k != "version"}
    resp, answer = await sts(client, headers=no_version)
    assert resp.headers["x-actual-status-code"] == "400" and answer["data"]["code"] == "Bad_Request"
    resp, answer = await sts(client, headers=v2_headers("/c/0b1d2f6e-2a8c-4d0e-9f43-3c2a9b0e1d7f"))
    assert answer["success"] is True
    assert [r.rejected for r in state_of(client).log] == ["no_token_cookie", "no_version", None]


async def test_lenient_emulator_takes_a_bearer_alone_for_sts(aiohttp_client: AiohttpClient) -> None:
    lenient = await aiohttp_client(make_emulator_app(strict=False))
    async with lenient.post(STS, json={"filename": "a.png", "filesize": 3, "filetype": "image"},
                            headers={"Authorization": "Bearer t"}) as resp:
        assert (await resp.json())["success"] is True


async def test_sts_token_refuses_unusable_file_information(client: Client) -> None:
    """§1.2 (measured): no filetype is ``Invalid file information!``; a string filesize is fine."""
    resp, answer = await sts(client, {"filename": "a.png", "filesize": 3})
    assert resp.headers["x-actual-status-code"] == "400"
    assert answer["data"] == {"code": "Bad_Request", "details": "Invalid file information!"}
    resp, answer = await sts(client, {"filename": "a.png", "filesize": "3", "filetype": "image/png"})
    assert answer["success"] is True
    async with client.post("/_emulator/files", json={"filetype_enum": True}) as knob:
        assert knob.status == 200
    resp, answer = await sts(client, {"filename": "a.png", "filesize": "3", "filetype": "image/png"})
    assert answer["data"]["details"] == "Invalid file information!"


async def test_sts_knobs_give_the_flat_body_no_endpoint_or_a_loopback_one(client: Client) -> None:
    async with client.post("/_emulator/files", json={"sts_envelope": "flat", "endpoint": "omit"}) as knob:
        assert knob.status == 200
    _, flat = await sts(client)
    assert "success" not in flat and "endpoint" not in flat and flat["file_id"]
    async with client.post("/_emulator/files", json={"sts_envelope": "wrapped", "endpoint": "loopback"}) as knob:
        assert knob.status == 200
    issued = await grant(client)
    assert issued["endpoint"] == oss_url(client)
    status, text, _ = await put(client, issued, path_style=True)
    assert status == 200, text
    async with client.post("/_emulator/files", json={"endpoint": "nowhere"}) as knob:
        assert knob.status == 400 and "endpoint" in (await knob.json())["detail"]


async def test_a_login_owed_a_challenge_gets_risk_control_on_sts_too(client: Client) -> None:
    """Risk control on the STS call is handled like on chat writes: the per-login gate applies."""
    seed = state_of(client).create_login("sts@example.com")
    state_of(client).logins.find(seed.id).challenge_writes = 1  # type: ignore[union-attr]
    _, answer = await sts(client, headers=login_headers(seed))
    assert answer["ret"][0] == "FAIL_SYS_USER_VALIDATE"
    _, answer = await sts(client, headers=login_headers(seed))
    assert answer["success"] is True
    assert state_of(client).log[-1].login_id == seed.id


async def test_risk_control_armed_for_the_sts_path_answers_the_x5sec_json(client: Client) -> None:
    async with client.post("/_emulator/arm", json={"directive": {"fault": "risk_control"}, "path": STS}) as resp:
        assert resp.status == 200
    _, answer = await sts(client)
    assert answer["ret"][0] == "FAIL_SYS_USER_VALIDATE"
    _, answer = await sts(client)
    assert answer["success"] is True


# -- OSS PUT -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("version", "path_style"), [("v4", False), ("v1", False), ("v4", True), ("v1", True)])
async def test_signed_put_is_stored_and_logged_without_secrets(client: Client, version: str, path_style: bool) -> None:
    issued = await grant(client)
    status, text, headers = await put(client, issued, version=version, path_style=path_style)
    assert (status, text) == (200, "")
    assert headers["ETag"] == f'"{hashlib.md5(PNG).hexdigest().upper()}"'
    stored = state_of(client).files.objects[(BUCKET, issued["file_path"])]
    assert stored.data == PNG and stored.signature_version == version
    [record] = puts(client)
    assert record["path"] == f"/{BUCKET}/{issued['file_path']}" and record["status"] == 200
    assert record["upload"] == {"bucket": BUCKET, "key": issued["file_path"], "size": len(PNG),
                                "sha256": hashlib.sha256(PNG).hexdigest(), "content_type": "image/png",
                                "signature_version": version, "result": "stored"}
    assert record["cookies"] == {}
    assert record["headers"]["x-oss-security-token"] == redacted(issued["security_token"])
    dumped = json.dumps([r.to_json() for r in state_of(client).log])
    for secret in (issued["access_key_secret"], issued["security_token"], "Signature="):
        assert secret not in dumped


async def test_wrong_signature_is_refused_in_oss_xml(client: Client) -> None:
    issued = await grant(client)
    forged = issued | {"access_key_secret": issued["access_key_secret"] + "x"}
    status, text, headers = await put(client, forged)
    assert status == 403 and headers["Content-Type"].startswith("application/xml")
    assert text.startswith('<?xml version="1.0" encoding="UTF-8"?>') and xml_code(text) == "SignatureDoesNotMatch"
    assert issued["security_token"] not in text and "<StringToSign>" in text
    assert puts(client)[0]["upload"]["result"] == "SignatureDoesNotMatch"
    assert (BUCKET, issued["file_path"]) not in state_of(client).files.objects


@pytest.mark.parametrize("version", ["v4", "v1"])
async def test_wrong_or_missing_security_token_is_refused(client: Client, version: str) -> None:
    issued = await grant(client)
    wrong = issued | {"security_token": issued["security_token"][:-1] + "Q"}
    status, text, _ = await put(client, wrong, version=version)
    assert status == 403 and xml_code(text) == "InvalidAccessKeyId"


async def test_a_signature_over_a_different_body_type_or_key_is_refused(client: Client) -> None:
    issued, other = await grant(client), await grant(client, filename="dog.png")
    status, text, _ = await put(client, issued, change={"Content-Type": "image/jpeg"})
    assert (status, xml_code(text)) == (403, "SignatureDoesNotMatch")
    status, text, _ = await put(client, issued | {"file_path": other["file_path"]})
    assert (status, xml_code(text)) == (403, "AccessDenied")


async def test_put_to_the_presigned_file_url_is_refused(client: Client) -> None:
    """§1.3 (A, measured): the file_url is for downloads; a PUT to it is SignatureDoesNotMatch."""
    issued = await grant(client)
    parts = urlsplit(issued["file_url"])
    async with client.session.put(f"{oss_url(client)}{parts.path}?{parts.query}", data=PNG,
                                  headers={"Host": parts.netloc, "Content-Type": "image/png"}) as resp:
        assert resp.status == 403 and xml_code(await resp.text()) == "SignatureDoesNotMatch"
    assert puts(client)[0]["upload"]["signature_version"] == "presigned"


async def test_unsigned_put_is_access_denied(client: Client) -> None:
    issued = await grant(client)
    async with client.session.put(f"{oss_url(client)}/{BUCKET}/{issued['file_path']}", data=PNG) as resp:
        assert resp.status == 403 and xml_code(await resp.text()) == "AccessDenied"


async def test_sts_credentials_expired_between_grant_and_put_are_refused(client: Client) -> None:
    issued = await grant(client)
    async with client.post("/_emulator/files/expire", json={"what": "sts"}) as resp:
        assert (await resp.json())["expired_grants"] == 1
    status, text, _ = await put(client, issued)
    assert (status, xml_code(text)) == (403, "SecurityTokenExpired")


async def test_region_with_the_oss_prefix_in_the_v4_scope_is_refused_unless_the_knob_accepts_it(
        client: Client) -> None:
    """§1.3 (A, measured): keeping ``oss-`` in the scope fails on the accelerate endpoint."""
    issued = await grant(client)
    now = datetime.now(UTC)
    oss_date = now.strftime("%Y%m%dT%H%M%SZ")
    headers = {"Content-Type": "image/png", "x-oss-date": oss_date, "x-oss-content-sha256": "UNSIGNED-PAYLOAD",
               "x-oss-security-token": issued["security_token"]}
    region = "oss-ap-southeast-1"
    canonical = v4_canonical_request("PUT", BUCKET, issued["file_path"], headers)
    signature = v4_signature(issued["access_key_secret"], oss_date[:8], region,
                             v4_string_to_sign(oss_date, region, canonical))
    headers["Authorization"] = (f"OSS4-HMAC-SHA256 Credential={issued['access_key_id']}/{oss_date[:8]}/{region}/oss/"
                                f"aliyun_v4_request,Signature={signature}")
    url = f"{oss_url(client)}/{BUCKET}/{quote_key(issued['file_path'])}"
    async with client.session.put(url, data=PNG, headers=headers) as resp:
        assert resp.status == 403 and xml_code(await resp.text()) == "SignatureDoesNotMatch"
    async with client.post("/_emulator/files", json={"oss_region_prefix": "accept"}) as knob:
        assert knob.status == 200
    async with client.session.put(url, data=PNG, headers=headers) as resp:
        assert resp.status == 200


async def test_declared_size_and_type_family_are_enforced(client: Client) -> None:
    issued = await grant(client)
    status, text, _ = await put(client, issued, PNG + b"x")
    assert (status, xml_code(text)) == (403, "AccessDenied")
    status, text, _ = await put(client, issued, content_type="text/plain")
    assert (status, xml_code(text)) == (403, "AccessDenied")


@pytest.mark.parametrize(("fault", "status", "code"), [
    ("http_500", 500, "InternalError"), ("http_503", 503, "ServiceUnavailable"),
    ("access_denied", 403, "AccessDenied"), ("signature_mismatch", 403, "SignatureDoesNotMatch"),
    ("token_expired", 403, "SecurityTokenExpired")])
async def test_armed_oss_fault_answers_once_then_the_put_succeeds(client: Client, fault: str, status: int,
                                                                  code: str) -> None:
    issued = await grant(client)
    async with client.post("/_emulator/oss/arm", json={"fault": fault}) as resp:
        assert resp.status == 200
    got, text, _ = await put(client, issued)
    assert (got, xml_code(text)) == (status, code)
    assert (await put(client, issued))[0] == 200
    assert [r["fault"] for r in puts(client)] == [fault, None]


async def test_armed_reset_drops_the_connection_without_an_answer(client: Client) -> None:
    issued = await grant(client)
    async with client.post("/_emulator/oss/arm", json={"fault": "reset"}) as resp:
        assert resp.status == 200
    with pytest.raises(aiohttp.ClientError):
        await put(client, issued)
    assert puts(client)[0]["upload"]["result"] == "reset"
    assert (await put(client, issued))[0] == 200


async def test_presigned_file_url_downloads_the_object_and_a_forged_one_does_not(client: Client) -> None:
    issued = await upload(client)
    parts = urlsplit(issued["file_url"])
    target = f"{oss_url(client)}{parts.path}"
    async with client.session.get(f"{target}?{parts.query}", headers={"Host": parts.netloc}) as resp:
        assert resp.status == 200 and await resp.read() == PNG
    forged = parts.query.replace("x-oss-expires=300", "x-oss-expires=301")
    async with client.session.get(f"{target}?{forged}", headers={"Host": parts.netloc}) as resp:
        assert resp.status == 403 and xml_code(await resp.text()) == "SignatureDoesNotMatch"


# -- completions with files[] ------------------------------------------------------------------------------------


async def test_completion_names_the_sha256_type_and_size_of_each_uploaded_file(client: Client) -> None:
    other_png = solid_png(5, 7, (9, 9, 9))
    first, second = await upload(client), await upload(client, other_png, filename="b.png")
    raw = await complete(client, [file_item(first), file_item(second, other_png)])
    assert answer_of(raw).startswith(
        f"[FILE sha256={hashlib.sha256(PNG).hexdigest()} type=image/png size={len(PNG)}]\n"
        f"[FILE sha256={hashlib.sha256(other_png).hexdigest()} type=image/png size={len(other_png)}]\n")


@pytest.mark.parametrize("case", ["other_user", "not_uploaded", "unknown_id", "ids_disagree", "not_an_object"])
async def test_completion_refuses_a_file_not_owned_and_uploaded_in_stream(client: Client, case: str) -> None:
    if case == "not_uploaded":
        item = file_item(await grant(client))
    elif case == "other_user":
        item = file_item(await upload(client, token="other-token"))
    else:
        item = file_item(await upload(client))
        if case == "unknown_id":
            item["id"] = item["file"]["id"] = "3f6d5c2a-1b0e-4a9f-8c7d-6e5f4a3b2c1d"
        elif case == "ids_disagree":
            item["id"] = "3f6d5c2a-1b0e-4a9f-8c7d-6e5f4a3b2c1d"
    raw = await complete(client, ["not an object"] if case == "not_an_object" else [item])
    sent = events(raw)
    assert list(sent[0]) == ["response.created"] and sent[1]["error"] == INVALID_INPUT and len(sent) == 2


async def test_minimal_item_by_url_works_on_emulator_hosts_and_fails_elsewhere(client: Client) -> None:
    """A's minimal shape: an image already on Qwen's hosts by URL; any other host is ``Internal error!``."""
    issued = await upload(client)
    minimal = {"type": "image", "name": "cat.png", "file_type": "image/png", "showType": "image",
               "status": "uploaded", "file_class": "vision"}
    raw = await complete(client, [minimal | {"url": issued["file_url"]}])
    assert answer_of(raw).startswith(f"[FILE sha256={hashlib.sha256(PNG).hexdigest()} ")
    raw = await complete(client, [minimal | {"url": "https://example.com/cat.png"}])
    assert events(raw)[1] == {"error": "Internal error!"}


async def test_content_array_images_are_ignored_unless_the_knob_accepts_them(client: Client) -> None:
    issued = await upload(client)
    chat_id = await create_chat(client)

    async def ask() -> str:
        body = completion_body(chat_id, "x")
        body["messages"][0]["content"] = [{"type": "text", "text": "x"}, {"type": "image", "image": issued["file_url"]}]
        async with client.post(completion_url(chat_id), json=body, headers=chat_headers(chat_id)) as resp:
            return answer_of(await resp.text())

    assert "[FILE" not in await ask()
    async with client.post("/_emulator/files", json={"content_array": "accept"}) as knob:
        assert knob.status == 200
    assert (await ask()).startswith("[FILE sha256=")


# -- t2i and image_edit ------------------------------------------------------------------------------------------


def png_dimensions(data: bytes) -> tuple[int, int]:
    """(width, height) read from IHDR, after checking the image data inflates to exactly that many RGB rows."""
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    idat_length = struct.unpack(">I", data[33:37])[0]
    assert data[37:41] == b"IDAT"
    assert len(zlib.decompress(data[41:41 + idat_length])) == height * (1 + 3 * width)
    return width, height


def image_frames(raw: str, phase: str = "image_gen") -> list[dict[str, Any]]:
    return [d for d in deltas(raw) if d.get("phase") == phase and d.get("status") == "typing"]


@pytest.mark.parametrize(("ratio", "hw"), [("16:9", [1536, 2688]), ("1:1", [1328, 1328])])
async def test_t2i_links_a_png_of_the_announced_size_that_downloads_with_its_key(client: Client, ratio: str,
                                                                                 hw: list[int]) -> None:
    raw = await complete(client, [], "a red fox", chat_type="t2i", size=ratio)
    sent = events(raw)
    assert [list(e) for e in sent[:1]] == [["response.created"]]
    assert {e["response_id"] for e in sent[1:]} == {sent[0]["response.created"]["response_id"]}
    [image] = image_frames(raw)
    assert image["extra"] == {"output_image_hw": [hw]}
    assert answer_of(raw) == "Image for: a red fox"
    url, chat_id = image["content"], sent[0]["response.created"]["chat_id"]
    user_id = (await grant(client))["file_path"].split("/")[0]
    assert urlsplit(url).path.startswith(f"/output/{user_id}/t2i/{chat_id}/")
    async with client.session.get(url) as resp:
        assert resp.status == 200 and resp.content_type == "image/png"
        assert png_dimensions(await resp.read()) == (hw[1], hw[0])
    async with client.session.get(url.split("?")[0]) as resp:
        assert resp.status == 403 and xml_code(await resp.text()) == "AccessDenied"
    async with client.post("/_emulator/files/expire", json={"what": "links"}) as resp:
        assert resp.status == 200
    async with client.session.get(url) as resp:
        assert resp.status == 403


async def test_t2i_directives_shape_the_image_frames(client: Client) -> None:
    raw = await complete(client, [], with_directive("x", images=2, image_hw=[10, 20], output_image_hw=False),
                         chat_type="t2i")
    frames = image_frames(raw)
    assert len(frames) == 2 and len({f["content"] for f in frames}) == 2 and all("extra" not in f for f in frames)
    async with client.session.get(frames[1]["content"]) as resp:
        assert png_dimensions(await resp.read()) == (20, 10)


async def test_t2i_quota_as_bare_json_reuses_the_stream_error_directive(client: Client) -> None:
    raw = await complete(client, [], with_directive("x", stream_error="RateLimited", num=3,
                                                      stream_error_form="bare_json"), chat_type="t2i")
    answer = json.loads(raw)
    assert answer["success"] is False and answer["data"]["code"] == "RateLimited" and answer["data"]["num"] == 3


async def test_image_edit_uses_its_inputs_and_can_echo_the_input_url(client: Client) -> None:
    issued = await upload(client)
    raw = await complete(client, [file_item(issued)], with_directive("make it blue", echo_input=True),
                         chat_type="image_edit")
    frames = image_frames(raw, "image_edit")
    assert frames[0]["content"] == issued["file_url"]
    assert urlsplit(frames[1]["content"]).path.split("/")[3] == "image_edit" and len(frames) == 2
    raw = await complete(client, [], "edit nothing", chat_type="image_edit")
    assert events(raw)[1]["error"] == INVALID_INPUT


async def test_chat_detail_holds_the_image_when_the_stream_had_none(client: Client) -> None:
    chat_id = await create_chat(client)
    body = completion_body(chat_id, with_directive("a cat", images=0), chat_type="t2i", size="1:1")
    async with client.post(completion_url(chat_id), json=body, headers=chat_headers(chat_id)) as resp:
        assert image_frames(await resp.text()) == []
    async with client.get(f"/api/v2/chats/{chat_id}", headers=v2_headers(f"/c/{chat_id}")) as resp:
        detail = await resp.json()
    messages = detail["data"]["chat"]["history"]["messages"]
    [assistant] = [m for m in messages.values() if m["role"] == "assistant"]
    [image] = [c for c in assistant["content_list"] if c["phase"] == "image_gen"]
    assert image["status"] == "finished" and image["extra"] == {"output_image_hw": [[1328, 1328]]}
    async with client.session.get(image["content"]) as resp:
        assert resp.status == 200 and png_dimensions(await resp.read()) == (1328, 1328)


async def test_parse_status_runs_then_succeeds_for_an_owned_file(client: Client) -> None:
    issued = await upload(client)
    for expected in ("running", "success"):
        async with client.post("/api/v2/files/parse/status", json={"file_id_list": [issued["file_id"]]},
                               headers=v2_headers()) as resp:
            assert (await resp.json())["data"] == [{"file_id": issued["file_id"], "status": expected}]


async def test_reset_forgets_uploads_but_keeps_the_oss_listener(client: Client) -> None:
    await upload(client)
    url = oss_url(client)
    async with client.post("/_emulator/reset") as resp:
        assert resp.status == 200
    async with client.get("/_emulator/files") as resp:
        shown = await resp.json()
    assert shown["oss_url"] == url and shown["objects"] == [] and shown["grants"] == []

