"""An in-process stand-in for the Qwen Chat web service, in all three dialects.

Speaks ``qwen-v1`` (cumulative), ``qwen-phase`` (incremental, phase-tagged, on the
v1 paths) and ``qwen-v2`` (chats, ``response.created``, thinking summaries, usage,
200-with-header errors, stop). Used by the relay's tests, its offline demo
(``--upstream emulator``) and the benchmarks. Tests steer each request with a
``#emulator {...}`` line in a message (``directive.py``), or arm a fault for a path
(``EmulatorState.arm``); see docs/qwen-protocol.md for what is reproduced.

By default the qwen-v2 writes are as strict as the 2026 service (§7, ``strict.py``):
cookie auth, the browser header set, fresh request ids, the 2026 body shape; a
refused request gets the risk-control JSON or a v2 error, as the service answers.
``EmulatorConfig(strict=False)`` (``--lenient``) keeps the pre-2026 behaviour.

The same listener is the auth host, auth.qwen.ai (§7.1, ``auth.py``): sign-in,
refresh with rotating refresh tokens, JWT access tokens that expire, and jar
pairing; ``EmulatorState.create_login`` gives a test a logged-in account at once.

Uploads and images (QWEN_IMAGES.md §6): ``getstsToken`` mints per-user STS
credentials (``files.py``), an OSS stand-in on its own loopback port verifies V4
and V1 signatures and stores the bytes (``oss.py``, ``oss_auth.py``;
``RunningEmulator.oss_url``), completions check ``files[]`` and name each file's
SHA-256, and t2i / image_edit streams link real PNGs (``images.py``).
"""

from relay.emulator.config import EmulatorConfig
from relay.emulator.directive import FAULTS, Directive, DirectiveError, parse_directive
from relay.emulator.logins import LoginSeed, RefreshRecord, password_digest
from relay.emulator.server import (
    EMULATOR_STATE,
    RunningEmulator,
    make_emulator_app,
    start_emulator,
)
from relay.emulator.state import ChatRecord, EmulatorState, RequestRecord
from relay.emulator.tool_calls import hermes_block, tool_call_answer

__all__ = [
    "EMULATOR_STATE",
    "FAULTS",
    "ChatRecord",
    "Directive",
    "DirectiveError",
    "EmulatorConfig",
    "EmulatorState",
    "LoginSeed",
    "RefreshRecord",
    "RequestRecord",
    "RunningEmulator",
    "hermes_block",
    "make_emulator_app",
    "parse_directive",
    "password_digest",
    "start_emulator",
    "tool_call_answer",
]
