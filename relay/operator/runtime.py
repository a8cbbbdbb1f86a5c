"""The live operator state: mode, keys and pool, swapped whole on SIGHUP.

``apply`` runs only after the new config parsed completely, and replaces the
mode and key ring in one assignment each on the event loop (no await between),
so a request sees either the old settings or the new ones. Requests already
running keep the key and the token lease they hold: open streams are not dropped.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from ..state import MemoryState, StateBackend
from .config import OperatorConfig
from .keys import KeyRing
from .pool import PooledToken, RestingTokens, TokenPool

if TYPE_CHECKING:
    from .logins import Logins

__all__ = ["Operator"]

_log = logging.getLogger("relay.lifecycle")  # operator_reloaded: a start-and-stop kind of line


class Operator:
    def __init__(self, config: OperatorConfig, state: StateBackend | None = None) -> None:
        self.config = config
        #: where key limits and token flags are shared (``--state``); never swapped by a reload.
        self.state: StateBackend = state if state is not None else MemoryState()
        self.keys = KeyRing(config.keys)
        self.pool = TokenPool(config.tokens, accounts=config.accounts)
        #: passthrough tokens resting after risk control.
        self.resting = RestingTokens()
        #: keeps the pool's accounts signed in; set once the upstream clients exist (app startup).
        self.logins: Logins | None = None

    @property
    def mode(self) -> str:
        return self.config.mode

    def apply(self, config: OperatorConfig) -> None:
        """Switch to a reloaded config; counters of kept keys and tokens carry over."""
        keys = KeyRing(config.keys, previous=self.keys)
        self.pool.update(config.tokens, config.accounts)
        self.config, self.keys = config, keys
        _log.info("operator_reloaded", extra={"fields": {
            "mode": config.mode, "keys": len(config.keys), "tokens": len(config.tokens),
            "accounts": len(config.accounts)}})

    def render_metrics(self) -> list[str]:
        """Prometheus lines: per-key counters by key name, per-token state by fingerprint."""
        out: list[str] = []

        keys = self.keys.keys
        _family(out, "qwen_relay_key_requests_total", "counter", "Chat completions admitted per relay key name.")
        for key in keys:
            out.append(f'qwen_relay_key_requests_total{{key="{key.name}"}} {key.state.requests}')
        _family(out, "qwen_relay_key_rejections_total", "counter", "Requests refused per relay key name and reason.")
        for key in keys:
            for reason, count in sorted(key.state.rejected.items()):
                out.append(f'qwen_relay_key_rejections_total{{key="{key.name}",reason="{reason}"}} {count}')
        _family(out, "qwen_relay_key_in_flight", "gauge", "Requests in flight per relay key name.")
        for key in keys:
            out.append(f'qwen_relay_key_in_flight{{key="{key.name}"}} {key.state.in_flight}')
        now = time.monotonic()
        tokens = [entry for entry in self.pool.tokens if not entry.credential.is_account]
        accounts = self.pool.accounts()
        _family(out, "qwen_relay_token_state", "gauge",
               "1 for the state (active, cooling, disabled) of each pool token, by fingerprint.")
        for entry in tokens:
            current = entry.state(now)
            for state in ("active", "cooling", "disabled"):
                out.append(f'qwen_relay_token_state{{token="{entry.fingerprint}",state="{state}"}} '
                           f"{int(state == current)}")
        _family(out, "qwen_relay_token_challenges_total", "counter",
               "Risk-control answers per pool token fingerprint.")
        for entry in tokens:
            out.append(f'qwen_relay_token_challenges_total{{token="{entry.fingerprint}"}} {entry.challenges}')
        _family(out, "qwen_relay_token_in_flight", "gauge", "Upstream requests in flight per pool token fingerprint.")
        for entry in tokens:
            out.append(f'qwen_relay_token_in_flight{{token="{entry.fingerprint}"}} {entry.in_flight}')
        _family(out, "qwen_relay_token_requests_total", "counter", "Upstream leases per pool token fingerprint.")
        for entry in tokens:
            out.append(f'qwen_relay_token_requests_total{{token="{entry.fingerprint}"}} {entry.requests}')
        out.extend(_account_lines(accounts, now))
        return out


def _account_lines(accounts: list[PooledToken], now: float) -> list[str]:
    """Per ``[[operator.accounts]]`` name: state, token expiry, refreshes, challenges, use."""
    out: list[str] = []

    _family(out, "qwen_relay_account_state", "gauge", "1 for the state (active, cooling, disabled) of each account.")
    for entry in accounts:
        current = entry.state(now)
        for state in ("active", "cooling", "disabled"):
            out.append(f'qwen_relay_account_state{{account="{entry.name}",state="{state}"}} {int(state == current)}')
    _family(out, "qwen_relay_account_token_expires_in_seconds", "gauge",
           "Seconds until the account's access token expires (negative: expired; absent: unknown).")
    wall = time.time()
    for entry in accounts:
        left = entry.credential.expires_in_s(wall)
        if left is not None:
            out.append(f'qwen_relay_account_token_expires_in_seconds{{account="{entry.name}"}} {left:.1f}')
    _family(out, "qwen_relay_account_refreshes_total", "counter", "Access-token refreshes per account, by result.")
    for entry in accounts:
        for result in ("ok", "rejected", "challenged", "error"):
            out.append(f'qwen_relay_account_refreshes_total{{account="{entry.name}",result="{result}"}} '
                       f"{entry.refreshes.get(result, 0)}")
    _family(out, "qwen_relay_account_challenges_total", "counter", "Risk-control answers per account.")
    for entry in accounts:
        out.append(f'qwen_relay_account_challenges_total{{account="{entry.name}"}} {entry.challenges}')
    _family(out, "qwen_relay_account_requests_total", "counter", "Upstream leases per account.")
    for entry in accounts:
        out.append(f'qwen_relay_account_requests_total{{account="{entry.name}"}} {entry.requests}')
    _family(out, "qwen_relay_account_in_flight", "gauge", "Upstream requests in flight per account.")
    for entry in accounts:
        out.append(f'qwen_relay_account_in_flight{{account="{entry.name}"}} {entry.in_flight}')
    return out


def _family(out: list[str], name: str, kind: str, help_text: str) -> None:
    """The HELP and TYPE lines of one metric family."""
    out.append(f"# HELP {name} {help_text}")
    out.append(f"# TYPE {name} {kind}")
