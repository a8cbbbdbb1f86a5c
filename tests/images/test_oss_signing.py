"""The OSS signers (relay/images/oss_signing.py) against the known-answer vectors of QWEN_IMAGES.md §1.3.

Issue 20: uploads are signed by the relay with the STS keys, V4 by default and V1
on request. The vectors are the TSU test's (V4 with the browser SDK's user agent),
the same inputs without it, and the V1 formula's; a signer that drifts from the
rules OSS checks fails here before it fails against OSS.
"""

from __future__ import annotations

import base64
import hashlib
from datetime import UTC, datetime, timedelta, timezone

import pytest

from relay.images import StsCredentials, quote_key, sign_put, v1_put_headers, v4_put_headers, v4_scope_region
from relay.images.oss_signing import v4_canonical_request

CREDENTIALS = StsCredentials("AKID", "secret", "sts-token")
BUCKET = "qwen-webui-prod"
KEY = "uploads/cat.png"
NOW = datetime(2026, 7, 12, 12, 34, 56, tzinfo=UTC)
USER_AGENT = {"x-oss-user-agent": "aliyun-sdk-js/6.23.0 Chrome 132.0.0.0 on Windows 10 64-bit"}
V4_WITH_USER_AGENT = "b1ca75bf242f3351c09ee3a8dd0a7fb450930f0f2e6252e683f09d3b4acdfa91"
V4_WITHOUT_USER_AGENT = "e157c162eef69e381643c8183db2194013e67f6fb8a681d7fb5f84b211af2343"
V1_AUTHORIZATION = "OSS AKID:WutQxZz8wDrD8VuVhcL5S9uT/wk="
SCOPE = "Credential=AKID/20260712/ap-southeast-1/oss/aliyun_v4_request"


def test_v4_signature_matches_the_tsu_vector_with_the_browser_user_agent() -> None:
    headers = v4_put_headers(CREDENTIALS, bucket=BUCKET, key=KEY, content_type="image/png",
                             region="ap-southeast-1", now=NOW, oss_headers=USER_AGENT)
    assert headers["Authorization"] == f"OSS4-HMAC-SHA256 {SCOPE},Signature={V4_WITH_USER_AGENT}"
    assert headers["x-oss-user-agent"] == USER_AGENT["x-oss-user-agent"]


def test_v4_signature_matches_the_vector_without_user_agent_and_sends_every_signed_header() -> None:
    headers = v4_put_headers(CREDENTIALS, bucket=BUCKET, key=KEY, content_type="image/png",
                             region="ap-southeast-1", now=NOW)
    assert headers == {
        "Content-Type": "image/png",
        "x-oss-date": "20260712T123456Z",
        "x-oss-content-sha256": "UNSIGNED-PAYLOAD",
        "x-oss-security-token": "sts-token",
        "Authorization": f"OSS4-HMAC-SHA256 {SCOPE},Signature={V4_WITHOUT_USER_AGENT}",
    }


def test_v4_canonical_request_is_the_documented_example() -> None:
    headers = {"Content-Type": "image/png", "x-oss-date": "20260712T123456Z",
               "x-oss-content-sha256": "UNSIGNED-PAYLOAD", "x-oss-security-token": "sts-token", "Host": "ignored"}
    assert v4_canonical_request("PUT", BUCKET, KEY, headers) == (
        "PUT\n/qwen-webui-prod/uploads/cat.png\n\ncontent-type:image/png\nx-oss-content-sha256:UNSIGNED-PAYLOAD\n"
        "x-oss-date:20260712T123456Z\nx-oss-security-token:sts-token\n\n\nUNSIGNED-PAYLOAD")


def test_v4_drops_the_oss_prefix_of_the_sts_region_from_the_scope() -> None:
    """The STS answer says ``oss-ap-southeast-1``; the scope must say ``ap-southeast-1`` (§1.3, measured)."""
    prefixed = v4_put_headers(CREDENTIALS, bucket=BUCKET, key=KEY, content_type="image/png",
                              region="oss-ap-southeast-1", now=NOW)
    assert prefixed["Authorization"].endswith(V4_WITHOUT_USER_AGENT)
    assert v4_scope_region("oss-ap-southeast-1") == "ap-southeast-1"


def test_v4_lists_additional_headers_and_signs_their_values() -> None:
    plain = v4_put_headers(CREDENTIALS, bucket=BUCKET, key=KEY, content_type="image/png", region="ap-southeast-1",
                           now=NOW)
    with_host = v4_put_headers(CREDENTIALS, bucket=BUCKET, key=KEY, content_type="image/png",
                               region="ap-southeast-1", now=NOW, additional_headers={"Host": "b.example"})
    assert ",AdditionalHeaders=host,Signature=" in with_host["Authorization"]
    assert with_host["host"] == "b.example"
    assert with_host["Authorization"] != plain["Authorization"]


def test_v4_percent_encodes_the_key_but_keeps_slashes() -> None:
    assert quote_key("u1/f 1_猫.png") == "u1/f%201_%E7%8C%AB.png"
    canonical = v4_canonical_request("PUT", BUCKET, "u1/a b.png", {"Content-Type": "image/png"})
    assert canonical.split("\n")[1] == "/qwen-webui-prod/u1/a%20b.png"


def test_v1_authorization_matches_the_documented_vector() -> None:
    headers = v1_put_headers(CREDENTIALS, bucket=BUCKET, key=KEY, content_type="image/png", now=NOW)
    assert headers == {
        "Content-Type": "image/png",
        "Date": "Sun, 12 Jul 2026 12:34:56 GMT",
        "x-oss-security-token": "sts-token",
        "Authorization": V1_AUTHORIZATION,
    }


def test_v1_signs_content_md5_and_extra_oss_headers() -> None:
    md5 = base64.b64encode(hashlib.md5(b"png").digest()).decode()
    plain = v1_put_headers(CREDENTIALS, bucket=BUCKET, key=KEY, content_type="image/png", now=NOW)
    with_md5 = v1_put_headers(CREDENTIALS, bucket=BUCKET, key=KEY, content_type="image/png", now=NOW,
                              content_md5=md5)
    with_agent = v1_put_headers(CREDENTIALS, bucket=BUCKET, key=KEY, content_type="image/png", now=NOW,
                                oss_headers=USER_AGENT)
    assert with_md5["Content-MD5"] == md5
    assert len({plain["Authorization"], with_md5["Authorization"], with_agent["Authorization"]}) == 3


def test_the_clock_is_read_in_utc_whatever_the_zone_given() -> None:
    shanghai = NOW.astimezone(timezone(timedelta(hours=8)))
    assert sign_put("v1", CREDENTIALS, bucket=BUCKET, key=KEY, content_type="image/png", region="oss-ap-southeast-1",
                    now=shanghai)["Authorization"] == V1_AUTHORIZATION
    with pytest.raises(ValueError, match="timezone-aware"):
        sign_put("v4", CREDENTIALS, bucket=BUCKET, key=KEY, content_type="image/png", region="x",
                 now=datetime(2026, 7, 12))


def test_sign_put_dispatches_on_the_version_and_refuses_others() -> None:
    v4 = sign_put("v4", CREDENTIALS, bucket=BUCKET, key=KEY, content_type="image/png", region="oss-ap-southeast-1",
                  now=NOW)
    assert v4["Authorization"].endswith(V4_WITHOUT_USER_AGENT)
    with pytest.raises(ValueError, match="unknown OSS signing version"):
        sign_put("v2", CREDENTIALS, bucket=BUCKET, key=KEY, content_type="image/png",  # type: ignore[arg-type]
                 region="x", now=NOW)


def test_credentials_never_show_their_secret_or_token() -> None:
    shown = repr(StsCredentials("STS.abc", "very-secret", "CAIS-token"))
    assert "STS.abc" in shown and "very-secret" not in shown and "CAIS-token" not in shown
