"""An in-process stand-in for the Qwen Chat web service (dialect ``qwen-v1``).

Used by the relay's tests, its offline demo (``--upstream emulator``) and the
benchmarks. Tests steer each request with a ``#emulator {...}`` line in a message;
see ``faults.py`` for the fields and QWEN_PROTOCOL.md §6 for what is reproduced.
"""

from relay.emulator.config import EmulatorConfig
from relay.emulator.faults import FAULTS, Directive, DirectiveError, parse_directive
from relay.emulator.server import (
    EMULATOR_STATE,
    RunningEmulator,
    make_emulator_app,
    start_emulator,
)
from relay.emulator.state import EmulatorState, RequestRecord

__all__ = [
    "EMULATOR_STATE",
    "FAULTS",
    "Directive",
    "DirectiveError",
    "EmulatorConfig",
    "EmulatorState",
    "RequestRecord",
    "RunningEmulator",
    "make_emulator_app",
    "parse_directive",
    "start_emulator",
]
