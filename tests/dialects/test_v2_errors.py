"""Every qwen-v2 error convention and what the client gets for it (issue 16, item 7; §7.4, §7.5)."""

from __future__ import annotations

from typing import Any

import pytest

from relay.dialects.v2_errors import CONTEXT_LENGTH_CODE, ChatNotFound, payload_error, refusal
from relay.errors import (
    AuthenticationFailed,
    RelayError,
    UpstreamChallenge,
    UpstreamInterrupted,
    UpstreamRateLimited,
    UpstreamRejected,
)
from relay.jsonio import dumps

RISK = {"ret": ["FAIL_SYS_USER_VALIDATE", "RGV587_ERROR::SM::哎哟喂,被挤爆啦"],
        "data": {"url": "https://chat.qwen.ai:443//api/v2/chat/completions/_____tmd_____/punish?x5secdata=x"}}


def unsuccessful(code: str, **extra: Any) -> dict[str, Any]:
    return {"success": False, "request_id": "r", "data": {"code": code, "details": "d", **extra}}


@pytest.mark.parametrize(("payload", "kind", "status", "code"), [
    (RISK, UpstreamChallenge, 502, "upstream_challenge"),
    (unsuccessful("Unauthorized"), AuthenticationFailed, 401, "invalid_api_key"),
    (unsuccessful("Bad_Request"), RelayError, 502, "upstream_bad_request"),
    (unsuccessful("RequestValidationError"), RelayError, 502, "upstream_rejected"),
    (unsuccessful("invalid_input"), RelayError, 502, "upstream_rejected"),
    (unsuccessful("PARENT_NOT_FOUND"), RelayError, 502, "upstream_rejected"),
    (unsuccessful("CHAT_NOT_FOUND"), ChatNotFound, 502, "upstream_chat_not_found"),
    (unsuccessful("RateLimited", num=2), UpstreamRateLimited, 429, "rate_limit_exceeded"),
    (unsuccessful("Too_Many_Requests"), UpstreamRateLimited, 429, "rate_limit_exceeded"),
    (unsuccessful("quota_limit"), UpstreamRateLimited, 429, "rate_limit_exceeded"),
    (unsuccessful("quotaLimited"), UpstreamRateLimited, 429, "rate_limit_exceeded"),
    (unsuccessful("internal_error"), UpstreamInterrupted, 502, "upstream_internal_error"),
    ({"error": "Internal error!"}, UpstreamInterrupted, 502, "upstream_internal_error"),
    ({"error": {"code": "Too_Many_Requests", "details": "slow down"}}, UpstreamRateLimited, 429,
     "rate_limit_exceeded"),
])
def test_each_code_maps_to_its_client_error(payload: dict[str, Any], kind: type[RelayError], status: int,
                                            code: str) -> None:
    error = payload_error(payload)
    assert isinstance(error, kind)
    assert error.http_status == status
    assert (error.instance_code or error.code) == code


def test_rate_limited_num_is_hours_of_retry_after() -> None:
    error = payload_error(unsuccessful("RateLimited", num=2))
    assert error is not None and error.retry_after_s == 7200


def test_bad_request_names_the_version_header() -> None:
    error = payload_error(unsuccessful("Bad_Request"))
    assert error is not None and "version" in error.message


def test_context_length_is_a_length_finish_not_an_error_code() -> None:
    error = payload_error({"error": {"code": "ContextLengthExceeded"}})
    assert error is not None and error.instance_code == CONTEXT_LENGTH_CODE


def test_plain_frames_are_no_error() -> None:
    assert payload_error({"choices": [{"delta": {"content": "hi"}}]}) is None
    assert payload_error({"success": True, "data": {"id": "c"}}) is None


def test_challenge_message_says_what_the_operator_can_do() -> None:
    error = payload_error(RISK)
    assert error is not None
    for hint in ("bx-ua", "cookie", "proxy", "--max-upstream-body-bytes"):
        assert hint in error.message


def test_risk_control_on_http_200_is_never_retryable() -> None:
    found = refusal(200, {"x-actual-status-code": "200"}, "application/json", dumps(RISK))
    assert found is not None and isinstance(found.error, UpstreamChallenge) and not found.retryable


def test_a_waf_page_is_a_challenge_not_a_retry() -> None:
    page = b"<!doctypehtml><html><script>var aliyun_waf_aa='x'</script></html>"
    found = refusal(200, {}, "text/html", page)
    assert found is not None and isinstance(found.error, UpstreamChallenge) and not found.retryable


def test_401_in_200_and_5xx() -> None:
    found = refusal(200, {"x-actual-status-code": "401"}, "application/json", dumps(unsuccessful("Unauthorized")))
    assert found is not None and isinstance(found.error, AuthenticationFailed)
    server = refusal(503, {"retry-after": "2"}, "text/plain", b"busy")
    assert server is not None and server.retryable and server.retry_after_s == 2
    other = refusal(404, {}, "application/json", b"{}")
    assert other is not None and isinstance(other.error, UpstreamRejected)
