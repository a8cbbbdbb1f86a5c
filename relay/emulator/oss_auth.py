"""Check OSS request signatures as OSS does: V4 header, V4 query (pre-signed), V1 (QWEN_IMAGES.md §6.2).

Written apart from the relay's signer (``relay/images/oss_signing.py``) on purpose,
and sharing no code with it: the expected signature is rebuilt here from the
rules of §1.3 and the Alibaba Cloud docs, so a signer bug shows up as
``SignatureDoesNotMatch`` instead of being checked against itself.

Pure: a request is plain data (:class:`OssRequest`), a credential comes from a
lookup function, the clock is a parameter, and every refusal is an
:class:`OssError` carrying the HTTP status, the OSS ``<Code>`` and the XML body.

Order of checks (V4): the header's form, the access key (``InvalidAccessKeyId``),
its expiry (``SecurityTokenExpired``), the ``x-oss-security-token``, the
``x-oss-date`` (±15 min, ``RequestTimeTooSkewed``), the scope (day, region,
service), ``x-oss-content-sha256``, then the signature. V1 alike, with ``Date``.

[I] choices where the notes are silent: a malformed ``Authorization`` or scope is
400 ``InvalidArgument``; a wrong or missing security token is 403
``InvalidAccessKeyId`` ("The security token you provided is invalid."); the
``<StringToSign>`` / ``<CanonicalRequest>`` echoed in a ``SignatureDoesNotMatch``
body have the security token replaced by ``<security-token>``, so no log of that
body can hold it (real OSS echoes it).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import string
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Literal
from xml.sax.saxutils import escape

__all__ = [
    "MAX_SKEW_S",
    "OssError",
    "OssRequest",
    "Signer",
    "presign_v4_query",
    "scheme_of",
    "verify_presigned_v4",
    "verify_v1",
    "verify_v4",
]

# OSS refuses a request whose clock is more than 15 minutes off (§6.2).
MAX_SKEW_S = 15 * 60
_V4 = "OSS4-HMAC-SHA256"
_UNSIGNED = "UNSIGNED-PAYLOAD"
_UNRESERVED = frozenset(string.ascii_letters + string.digits + "-_.~")
_TOKEN_MARK = "<security-token>"
_QUERY_SIGNATURE_PARAMS = ("x-oss-signature", "Signature", "OSSAccessKeyId")

Scheme = Literal["v4", "v1", "presigned"]


@dataclass(frozen=True, slots=True)
class OssRequest:
    """What a signature covers. ``headers``: lower-cased names; ``key``: decoded once."""

    method: str
    bucket: str
    key: str
    headers: Mapping[str, str]
    query: Sequence[tuple[str, str]]
    body_sha256: str


@dataclass(frozen=True, slots=True)
class Signer:
    """A credential as the verifier needs it; ``security_token`` None = none is required."""

    access_key_id: str
    secret: str
    security_token: str | None
    expires_at: float | None


class OssError(Exception):
    """A refusal in OSS's words: HTTP status, ``<Code>``, ``<Message>`` and extra elements."""

    def __init__(self, status: int, code: str, message: str, **extra: str) -> None:
        super().__init__(f"{code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.extra = extra

    def xml(self, request_id: str, host_id: str) -> bytes:
        """The standard OSS error document (§6.2)."""
        parts = [f"<Code>{escape(self.code)}</Code>", f"<Message>{escape(self.message)}</Message>",
                 f"<RequestId>{escape(request_id)}</RequestId>", f"<HostId>{escape(host_id)}</HostId>"]
        parts += [f"<{name}>{escape(value)}</{name}>" for name, value in self.extra.items()]
        return ('<?xml version="1.0" encoding="UTF-8"?>\n<Error>\n  ' + "\n  ".join(parts) + "\n</Error>\n").encode()


Lookup = Callable[[str], Signer | None]


def scheme_of(headers: Mapping[str, str], query: Sequence[tuple[str, str]]) -> Scheme | None:
    """Which scheme signs the request: a signed query wins (it is refused for PUT), then the header."""
    if any(name in _QUERY_SIGNATURE_PARAMS for name, _ in query):
        return "presigned"
    authorization = headers.get("authorization", "")
    if authorization.startswith(_V4 + " "):
        return "v4"
    if authorization.startswith("OSS "):
        return "v1"
    return None


def _uri_encode(text: str, *, keep_slash: bool) -> str:
    out = []
    for byte in text.encode():
        char = chr(byte)
        out.append(char if char in _UNRESERVED or (keep_slash and char == "/") else f"%{byte:02X}")
    return "".join(out)


def _hmac_sha256(key: bytes, text: str) -> bytes:
    return hmac.new(key, text.encode(), hashlib.sha256).digest()


def _known(lookup: Lookup, access_key_id: str, now: float) -> Signer:
    signer = lookup(access_key_id)
    if signer is None:
        raise OssError(403, "InvalidAccessKeyId", "The OSS Access Key Id you provided does not exist in our records.",
                       OSSAccessKeyId=access_key_id)
    if signer.expires_at is not None and now >= signer.expires_at:
        raise OssError(403, "SecurityTokenExpired", "The security token you provided has expired.")
    return signer


def _token_matches(signer: Signer, given: str | None) -> None:
    if signer.security_token is None:
        return
    if given is None or not hmac.compare_digest(given.encode(), signer.security_token.encode()):
        raise OssError(403, "InvalidAccessKeyId", "The security token you provided is invalid.")


def _within_skew(moment: datetime, now: float) -> None:
    if abs(moment.timestamp() - now) > MAX_SKEW_S:
        raise OssError(403, "RequestTimeTooSkewed",
                       "The difference between the request time and the current time is too large.")


def _oss_date(text: str | None, name: str) -> datetime:
    if not text:
        raise OssError(403, "AccessDenied", f"{name} is required for a V4 signature.")
    try:
        return datetime.strptime(text, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    except ValueError:
        raise OssError(400, "InvalidArgument", f"{name} is not in the form yyyymmddThhmmssZ.") from None


def _canonical_v4(request: OssRequest, additional: Sequence[str], *, skip_query: str | None = None) -> str:
    """Rebuild the V4 canonical request (§6.2): method, URI, query, headers, additional list, payload hash."""
    pairs = sorted((_uri_encode(k, keep_slash=False), _uri_encode(v, keep_slash=False))
                   for k, v in request.query if k != skip_query)
    query = "&".join(f"{k}={v}" if v else k for k, v in pairs)
    signed = {name: value.strip() for name, value in request.headers.items()
              if name in ("content-type", "content-md5") or name.startswith("x-oss-")}
    for name in additional:
        signed[name] = request.headers.get(name, "").strip()
    header_lines = "".join(f"{name}:{signed[name]}\n" for name in sorted(signed))
    uri = _uri_encode(f"/{request.bucket}/{request.key}", keep_slash=True)
    payload = request.headers.get("x-oss-content-sha256", _UNSIGNED) if skip_query is None else _UNSIGNED
    return f"{request.method}\n{uri}\n{query}\n{header_lines}\n{';'.join(additional)}\n{payload}"


def _v4_signature(secret: str, day: str, region: str, string_to_sign: str) -> str:
    key = _hmac_sha256(f"aliyun_v4{secret}".encode(), day)
    key = _hmac_sha256(key, region)
    key = _hmac_sha256(key, "oss")
    key = _hmac_sha256(key, "aliyun_v4_request")
    return hmac.new(key, string_to_sign.encode(), hashlib.sha256).hexdigest()


def _scope(credential: str, moment: datetime, *, accept_prefixed_region: bool) -> tuple[str, str, str]:
    """Split ``<ak>/<day>/<region>/oss/aliyun_v4_request``; check the day and region."""
    parts = credential.split("/")
    if len(parts) != 5 or parts[3] != "oss" or parts[4] != "aliyun_v4_request" or not parts[0]:
        raise OssError(400, "InvalidArgument", "Credential in the Authorization is invalid.")
    access_key_id, day, region = parts[0], parts[1], parts[2]
    if day != moment.strftime("%Y%m%d"):
        raise OssError(400, "InvalidArgument", "The date in the Credential scope does not match x-oss-date.")
    if region.startswith("oss-") and not accept_prefixed_region:
        raise OssError(403, "SignatureDoesNotMatch", f"Invalid signing region in Authorization header: {region}")
    return access_key_id, day, region


def _mismatch(signer: Signer, string_to_sign: str, canonical: str | None = None) -> OssError:
    def hide(text: str) -> str:
        token = signer.security_token
        return text.replace(token, _TOKEN_MARK) if token else text

    extra = {"OSSAccessKeyId": signer.access_key_id, "StringToSign": hide(string_to_sign)}
    if canonical is not None:
        extra["CanonicalRequest"] = hide(canonical)
    return OssError(403, "SignatureDoesNotMatch",
                    "The request signature we calculated does not match the signature you provided. "
                    "Check your key and signing method.", **extra)


def verify_v4(request: OssRequest, lookup: Lookup, now: float, *, accept_prefixed_region: bool = False) -> Signer:
    """Check an ``Authorization: OSS4-HMAC-SHA256 …`` request; the signer, or OssError."""
    fields: dict[str, str] = {}
    for part in request.headers.get("authorization", "")[len(_V4):].split(","):
        name, sep, value = part.strip().partition("=")
        if not sep:
            raise OssError(400, "InvalidArgument", "Authorization header is invalid.")
        fields[name] = value.strip()
    if "Credential" not in fields or "Signature" not in fields:
        raise OssError(400, "InvalidArgument", "Authorization header needs Credential and Signature.")
    signer = _known(lookup, fields["Credential"].split("/")[0], now)
    _token_matches(signer, request.headers.get("x-oss-security-token"))
    oss_date = request.headers.get("x-oss-date")
    moment = _oss_date(oss_date, "x-oss-date")
    _within_skew(moment, now)
    _, day, region = _scope(fields["Credential"], moment, accept_prefixed_region=accept_prefixed_region)
    payload = request.headers.get("x-oss-content-sha256")
    if payload not in (_UNSIGNED, request.body_sha256):
        raise OssError(400, "InvalidArgument", "x-oss-content-sha256 must be UNSIGNED-PAYLOAD or the body's SHA-256.")
    additional = [name.strip().lower() for name in fields.get("AdditionalHeaders", "").split(";") if name.strip()]
    if additional != sorted(set(additional)) or any(name not in request.headers for name in additional):
        raise OssError(400, "InvalidArgument", "AdditionalHeaders must list present headers, sorted.")
    canonical = _canonical_v4(request, additional)
    digest = hashlib.sha256(canonical.encode()).hexdigest()
    string_to_sign = f"{_V4}\n{oss_date}\n{day}/{region}/oss/aliyun_v4_request\n{digest}"
    expected = _v4_signature(signer.secret, day, region, string_to_sign)
    if not hmac.compare_digest(expected, fields["Signature"]):
        raise _mismatch(signer, string_to_sign, canonical)
    return signer


def verify_v1(request: OssRequest, lookup: Lookup, now: float) -> Signer:
    """Check an ``Authorization: OSS <ak>:<base64 sig>`` request; the signer, or OssError."""
    access_key_id, sep, given = request.headers.get("authorization", "")[len("OSS "):].strip().rpartition(":")
    if not sep or not access_key_id or not given:
        raise OssError(400, "InvalidArgument", "Authorization header is invalid.")
    signer = _known(lookup, access_key_id, now)
    _token_matches(signer, request.headers.get("x-oss-security-token"))
    date = request.headers.get("date", "")
    try:
        moment = parsedate_to_datetime(date)
    except (TypeError, ValueError):
        raise OssError(403, "AccessDenied", "A valid Date header is required for a V1 signature.") from None
    if moment.tzinfo is None:
        raise OssError(403, "AccessDenied", "The Date header must be in GMT.")
    _within_skew(moment, now)
    oss = sorted((name, value.strip()) for name, value in request.headers.items() if name.startswith("x-oss-"))
    string_to_sign = (f"{request.method}\n{request.headers.get('content-md5', '')}\n"
                      f"{request.headers.get('content-type', '')}\n{date}\n"
                      + "".join(f"{name}:{value}\n" for name, value in oss)
                      + f"/{request.bucket}/{request.key}")
    expected = base64.b64encode(hmac.new(signer.secret.encode(), string_to_sign.encode(), hashlib.sha1).digest())
    if not hmac.compare_digest(expected.decode(), given):
        raise _mismatch(signer, string_to_sign)
    return signer


def presign_v4_query(signer: Signer, method: str, bucket: str, key: str, region: str, now: float,
                     expires_s: int) -> list[tuple[str, str]]:
    """The query of a V4 pre-signed URL (the shape of the service's ``file_url``, I-02)."""
    oss_date = datetime.fromtimestamp(now, UTC).strftime("%Y%m%dT%H%M%SZ")
    query = [("x-oss-credential", f"{signer.access_key_id}/{oss_date[:8]}/{region}/oss/aliyun_v4_request"),
             ("x-oss-date", oss_date), ("x-oss-expires", str(expires_s)),
             ("x-oss-signature-version", _V4)]
    unsigned = OssRequest(method, bucket, key, {}, query, "")
    canonical = _canonical_v4(unsigned, [], skip_query="x-oss-signature")
    digest = hashlib.sha256(canonical.encode()).hexdigest()
    string_to_sign = f"{_V4}\n{oss_date}\n{oss_date[:8]}/{region}/oss/aliyun_v4_request\n{digest}"
    return [*query, ("x-oss-signature", _v4_signature(signer.secret, oss_date[:8], region, string_to_sign))]


def verify_presigned_v4(request: OssRequest, lookup: Lookup, now: float) -> Signer:
    """Check a V4 query-signed request (a GET of ``file_url``); PUTs never come here (§1.3)."""
    params = dict(request.query)
    if params.get("x-oss-signature-version") != _V4 or "x-oss-signature" not in params:
        raise OssError(403, "AccessDenied", "Only V4 pre-signed URLs are accepted here.")
    moment = _oss_date(params.get("x-oss-date"), "x-oss-date")
    try:
        expires_s = int(params.get("x-oss-expires", ""))
    except ValueError:
        raise OssError(400, "InvalidArgument", "x-oss-expires must be a number of seconds.") from None
    if now > moment.timestamp() + expires_s:
        raise OssError(403, "AccessDenied", "Request has expired.")
    signer = _known(lookup, params.get("x-oss-credential", "").split("/")[0], now)
    _, day, region = _scope(params.get("x-oss-credential", ""), moment, accept_prefixed_region=False)
    canonical = _canonical_v4(request, [], skip_query="x-oss-signature")
    digest = hashlib.sha256(canonical.encode()).hexdigest()
    string_to_sign = f"{_V4}\n{params['x-oss-date']}\n{day}/{region}/oss/aliyun_v4_request\n{digest}"
    if not hmac.compare_digest(_v4_signature(signer.secret, day, region, string_to_sign), params["x-oss-signature"]):
        raise _mismatch(signer, string_to_sign, canonical)
    return signer
