"""The status report (``/status.json``, and the page drawn from it) and the usage by day.

Built on each request from what the relay already keeps: the operator's key
ring and pool (this process's view, merged with the flags other relays shared),
today's usage from the state backend (the whole fleet's, with Redis), and the
upstream's last hour (this process). Nothing secret goes in: keys and accounts
appear by name, pool tokens by their 8-digit fingerprint.
"""

from __future__ import annotations

import time
from typing import TypedDict

from .. import __version__
from ..operator import Operator
from ..operator.pool import PooledToken
from ..state.usage import UsageCounts, days_back
from .board import StatusBoard

__all__ = ["AccountStatus", "DayUsage", "KeyLimits", "KeyStatus", "Report", "Usage", "UsageReport", "build_report",
           "build_usage"]


class KeyLimits(TypedDict):
    rpm: int | None
    max_concurrent: int | None
    #: the models the key may use; None: every model.
    models: list[str] | None


class KeyStatus(TypedDict):
    name: str
    requests_today: int
    prompt_tokens_today: int
    completion_tokens_today: int
    rejections_today: int
    limits: KeyLimits


class AccountStatus(TypedDict):
    name: str
    #: active, cooling or disabled.
    state: str
    cooling_s: float
    token_expires_in_s: float | None
    #: ISO 8601 UTC time of the last successful refresh, or None.
    last_refresh: str | None
    requests_today: int
    challenges_today: int


class UpstreamStatus(TypedDict):
    errors_by_code: dict[str, int]
    retry_rate: float


class Report(TypedDict):
    version: str
    uptime_s: float
    accounts: list[AccountStatus]
    keys: list[KeyStatus]
    upstream: UpstreamStatus


class Usage(TypedDict):
    requests: int
    prompt_tokens: int
    completion_tokens: int
    errors: int


DayUsage = TypedDict("DayUsage", {"date": str, "keys": dict[str, Usage], "accounts": dict[str, Usage]})


class UsageReport(TypedDict):
    days: list[DayUsage]


async def build_report(operator: Operator, board: StatusBoard) -> Report:
    """Everything ``/status.json`` answers, as of now."""
    usage = board.usage
    await usage.flush()  # this relay's own latest requests are counted too
    today = usage.today()
    counts = (await operator.state.load_usage([today]))[today]
    accounts: list[AccountStatus] = []
    if operator.mode != "passthrough":
        pool = operator.pool
        pool.merge(await operator.state.token_flags([entry.fingerprint for entry in pool.tokens]))
        now, wall = time.monotonic(), time.time()
        accounts = [_account(entry, counts, now, wall) for entry in pool.tokens]
    keys = [KeyStatus(
        name=key.name,
        requests_today=counts.get(("key", key.name, "requests"), 0),
        prompt_tokens_today=counts.get(("key", key.name, "prompt_tokens"), 0),
        completion_tokens_today=counts.get(("key", key.name, "completion_tokens"), 0),
        rejections_today=counts.get(("key", key.name, "rejections"), 0),
        limits=KeyLimits(rpm=key.spec.rpm, max_concurrent=key.spec.max_concurrent,
                         models=sorted(key.spec.models) if key.spec.models is not None else None),
    ) for key in operator.keys.keys]
    summary = board.upstream.summary()
    return Report(version=__version__, uptime_s=round(board.uptime_s(), 1), accounts=accounts, keys=keys,
                  upstream=UpstreamStatus(errors_by_code=summary["errors_by_code"],
                                          retry_rate=summary["retry_rate"]))


def _account(entry: PooledToken, counts: UsageCounts, now: float, wall: float) -> AccountStatus:
    expires_in = entry.credential.expires_in_s(wall)
    return AccountStatus(
        name=entry.name,
        state=entry.state(now),
        cooling_s=round(max(0.0, entry.cooling_until - now), 1),
        token_expires_in_s=round(expires_in, 1) if expires_in is not None else None,
        last_refresh=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(entry.last_refresh))
        if entry.last_refresh is not None else None,
        requests_today=counts.get(("account", entry.name, "requests"), 0),
        challenges_today=counts.get(("account", entry.name, "challenges"), 0),
    )


async def build_usage(operator: Operator, board: StatusBoard, days: int) -> UsageReport:
    """The last ``days`` UTC days (today included, oldest first), each key's and account's usage."""
    await board.usage.flush()
    dates = days_back(board.usage.today(), days)
    records = await operator.state.load_usage(dates)
    return UsageReport(days=[_day(date, records.get(date, {})) for date in dates])


def _day(date: str, counts: UsageCounts) -> DayUsage:
    tables: dict[str, dict[str, Usage]] = {"key": {}, "account": {}}
    for kind, name, _counter in sorted(counts):
        table = tables.get(kind)
        if table is None or name in table:
            continue
        table[name] = Usage(requests=counts.get((kind, name, "requests"), 0),
                            prompt_tokens=counts.get((kind, name, "prompt_tokens"), 0),
                            completion_tokens=counts.get((kind, name, "completion_tokens"), 0),
                            errors=counts.get((kind, name, "errors"), 0))
    return DayUsage(date=date, keys=tables["key"], accounts=tables["account"])
