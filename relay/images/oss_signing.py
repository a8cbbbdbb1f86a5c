"""Sign an OSS ``PUT`` with Qwen's STS credentials: V4 (default) or V1 (QWEN_IMAGES.md §1.3).

Qwen Chat uploads go straight from the client to Alibaba OSS: ``getstsToken`` hands
out a short-lived key pair plus a security token, and the client signs its own PUT
with them. The pre-signed ``file_url`` in the same answer is a download URL; a PUT to
it fails with ``SignatureDoesNotMatch`` (§1.3, measured), so signing is ours to do.

Both schemes sign the *canonical resource* ``/<bucket>/<key>``, never the host, so
the same headers are valid whether the bytes go to ``<bucket>.<endpoint>`` or, for
tests and egress proxies, to another base URL (``[upstream] oss_base_url``).

- **V4** (``OSS4-HMAC-SHA256``): a canonical request (method, URI-encoded resource,
  query, sorted ``content-md5``/``content-type``/``x-oss-*`` headers, the
  additional-header list, ``UNSIGNED-PAYLOAD``) is hashed into a string to sign;
  the key is derived ``aliyun_v4``+secret → day → region → ``oss`` →
  ``aliyun_v4_request``. The region in the scope has no ``oss-`` prefix: keeping it
  is refused on the accelerate endpoint (§1.3, measured).
- **V1** (``OSS <ak>:<sig>``): base64 HMAC-SHA1 over method, ``Content-MD5``,
  ``Content-Type``, ``Date`` (RFC 1123), the sorted ``x-oss-*`` headers and the raw
  (not percent-encoded) resource.

Pure: no I/O, the clock is a parameter, and each function returns the headers to
send. The known-answer vectors of §1.3 are in tests/images/test_oss_signing.py.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Literal
from urllib.parse import quote

__all__ = [
    "SIGNING_VERSIONS",
    "UNSIGNED_PAYLOAD",
    "V4_ALGORITHM",
    "SigningVersion",
    "StsCredentials",
    "canonical_resource",
    "quote_key",
    "sign_put",
    "v1_put_headers",
    "v1_string_to_sign",
    "v4_canonical_request",
    "v4_put_headers",
    "v4_scope_region",
    "v4_signature",
    "v4_string_to_sign",
]

SigningVersion = Literal["v4", "v1"]
# V4 first: the default, and what the web app's own SDK (ali-oss 6.23) sends (§1.3, §4.1).
SIGNING_VERSIONS: tuple[SigningVersion, ...] = ("v4", "v1")
V4_ALGORITHM = "OSS4-HMAC-SHA256"
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"
_V4_TERMINATOR = "aliyun_v4_request"
# The prefix is "aliyun_v4", not "aliyun_v4_request": the other one is refused (§1.3, measured).
_V4_KEY_PREFIX = "aliyun_v4"
_SERVICE = "oss"


@dataclass(frozen=True, slots=True)
class StsCredentials:
    """The temporary key pair and token of one ``getstsToken`` answer (§1.2).

    The secret and the token never appear in ``repr``: they are credentials.
    """

    access_key_id: str
    access_key_secret: str = field(repr=False)
    security_token: str = field(repr=False)


def quote_key(key: str) -> str:
    """Percent-encode an object key for a URL or the V4 canonical URI; ``/`` stays.

    Unreserved characters (``A-Za-z0-9-_.~``) are kept, as OSS's ``uri_encode`` does.
    """
    return quote(key, safe="/-_.~")


def canonical_resource(bucket: str, key: str) -> str:
    """``/<bucket>/<key>``, raw: what V1 signs (V4 signs it percent-encoded)."""
    return f"/{bucket}/{key}"


def v4_scope_region(region: str) -> str:
    """The region as the V4 scope wants it: ``oss-ap-southeast-1`` → ``ap-southeast-1``."""
    return region.removeprefix("oss-")


def _utc(now: datetime | None) -> datetime:
    if now is None:
        return datetime.now(UTC)
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    return now.astimezone(UTC)


def _signed_headers(headers: Mapping[str, str], additional: Mapping[str, str]) -> dict[str, str]:
    """Lower-case names, trimmed values: content-md5, content-type, x-oss-*, and the additional ones."""
    signed: dict[str, str] = {}
    for name, value in headers.items():
        lowered = name.lower()
        if lowered in ("content-md5", "content-type") or lowered.startswith("x-oss-"):
            signed[lowered] = value.strip()
    for name, value in additional.items():
        signed[name.lower()] = value.strip()
    return signed


def v4_canonical_request(
    method: str,
    bucket: str,
    key: str,
    headers: Mapping[str, str],
    *,
    additional_headers: Mapping[str, str] | None = None,
    payload_hash: str = UNSIGNED_PAYLOAD,
) -> str:
    """Build the V4 canonical request of a request without a query string (§1.3).

    ``headers`` are the request headers (any case); only ``content-md5``,
    ``content-type`` and ``x-oss-*`` are signed, plus ``additional_headers``,
    whose names are also listed on their own line.
    """
    additional = {name.lower(): value for name, value in (additional_headers or {}).items()}
    signed = _signed_headers(headers, additional)
    lines = "".join(f"{name}:{signed[name]}\n" for name in sorted(signed))
    return "\n".join(
        [method.upper(), quote_key(canonical_resource(bucket, key)), "", lines, ";".join(sorted(additional)),
         payload_hash]
    )


def v4_string_to_sign(oss_date: str, region: str, canonical_request: str) -> str:
    """``OSS4-HMAC-SHA256``, the ``x-oss-date``, the scope and the canonical request's SHA-256."""
    scope = f"{oss_date[:8]}/{region}/{_SERVICE}/{_V4_TERMINATOR}"
    digest = hashlib.sha256(canonical_request.encode()).hexdigest()
    return f"{V4_ALGORITHM}\n{oss_date}\n{scope}\n{digest}"


def _hmac256(key: bytes, message: str) -> bytes:
    return hmac.new(key, message.encode(), hashlib.sha256).digest()


def v4_signature(secret: str, day: str, region: str, string_to_sign: str) -> str:
    """Derive the signing key for ``day`` (``yyyymmdd``) and ``region``; sign, in hex."""
    signing_key = _hmac256((_V4_KEY_PREFIX + secret).encode(), day)
    for part in (region, _SERVICE, _V4_TERMINATOR):
        signing_key = _hmac256(signing_key, part)
    return hmac.new(signing_key, string_to_sign.encode(), hashlib.sha256).hexdigest()


def v4_put_headers(
    credentials: StsCredentials,
    *,
    bucket: str,
    key: str,
    content_type: str,
    region: str,
    now: datetime | None = None,
    content_md5: str | None = None,
    oss_headers: Mapping[str, str] | None = None,
    additional_headers: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """Every header a V4-signed PUT of ``key`` needs, ``Authorization`` included.

    ``region`` may keep its ``oss-`` prefix (it is dropped for the scope).
    ``oss_headers`` adds signed ``x-oss-*`` headers (e.g. ``x-oss-user-agent``);
    ``additional_headers`` signs other headers too (e.g. ``{"host": …}``) and lists
    them in ``AdditionalHeaders=``: they are returned, so send them exactly.
    """
    moment = _utc(now)
    oss_date = moment.strftime("%Y%m%dT%H%M%SZ")
    scope_region = v4_scope_region(region)
    headers: dict[str, str] = {"Content-Type": content_type}
    if content_md5 is not None:
        headers["Content-MD5"] = content_md5
    headers |= {
        "x-oss-date": oss_date,
        "x-oss-content-sha256": UNSIGNED_PAYLOAD,
        "x-oss-security-token": credentials.security_token,
    }
    headers |= {name.lower(): value for name, value in (oss_headers or {}).items()}
    additional = {name.lower(): value for name, value in (additional_headers or {}).items()}
    canonical = v4_canonical_request("PUT", bucket, key, headers, additional_headers=additional)
    signature = v4_signature(
        credentials.access_key_secret, oss_date[:8], scope_region, v4_string_to_sign(oss_date, scope_region, canonical)
    )
    parts = [f"Credential={credentials.access_key_id}/{oss_date[:8]}/{scope_region}/{_SERVICE}/{_V4_TERMINATOR}"]
    if additional:
        parts.append("AdditionalHeaders=" + ";".join(sorted(additional)))
    parts.append(f"Signature={signature}")
    headers["Authorization"] = f"{V4_ALGORITHM} " + ",".join(parts)
    return headers | additional


def v1_string_to_sign(
    method: str, bucket: str, key: str, *, content_md5: str, content_type: str, date: str, headers: Mapping[str, str]
) -> str:
    """The V1 string to sign: method, MD5, type, date, sorted ``x-oss-*`` lines, raw resource."""
    oss = {name.lower(): value.strip() for name, value in headers.items() if name.lower().startswith("x-oss-")}
    oss_lines = "".join(f"{name}:{oss[name]}\n" for name in sorted(oss))
    return f"{method.upper()}\n{content_md5}\n{content_type}\n{date}\n{oss_lines}{canonical_resource(bucket, key)}"


def v1_put_headers(
    credentials: StsCredentials,
    *,
    bucket: str,
    key: str,
    content_type: str,
    now: datetime | None = None,
    content_md5: str | None = None,
    oss_headers: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """Every header a V1-signed PUT of ``key`` needs: ``Date`` (RFC 1123 GMT), the token, ``Authorization``."""
    date = format_datetime(_utc(now), usegmt=True)
    headers: dict[str, str] = {"Content-Type": content_type, "Date": date}
    if content_md5 is not None:
        headers["Content-MD5"] = content_md5
    headers["x-oss-security-token"] = credentials.security_token
    headers |= {name.lower(): value for name, value in (oss_headers or {}).items()}
    string_to_sign = v1_string_to_sign(
        "PUT", bucket, key, content_md5=content_md5 or "", content_type=content_type, date=date, headers=headers
    )
    digest = hmac.new(credentials.access_key_secret.encode(), string_to_sign.encode(), hashlib.sha1).digest()
    headers["Authorization"] = f"OSS {credentials.access_key_id}:{base64.b64encode(digest).decode()}"
    return headers


def sign_put(
    version: SigningVersion,
    credentials: StsCredentials,
    *,
    bucket: str,
    key: str,
    content_type: str,
    region: str,
    now: datetime | None = None,
    content_md5: str | None = None,
    oss_headers: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """Sign a PUT with the scheme ``[upstream] oss_signing`` names (``"v4"`` or ``"v1"``).

    ``region`` is only used by V4. The answer is the full header set to send with
    the body; add nothing that the scheme signs (``Content-*``, ``x-oss-*``) after it.
    """
    if version == "v4":
        return v4_put_headers(credentials, bucket=bucket, key=key, content_type=content_type, region=region,
                              now=now, content_md5=content_md5, oss_headers=oss_headers)
    if version == "v1":
        return v1_put_headers(credentials, bucket=bucket, key=key, content_type=content_type, now=now,
                              content_md5=content_md5, oss_headers=oss_headers)
    raise ValueError(f"unknown OSS signing version {version!r}; known: {', '.join(SIGNING_VERSIONS)}")
