"""A clock: a read-only repository whose keys are the time windows of a schedule.

Periodic work is data like any other. ``ClockRepository("1h")`` holds one key per hourly
window that has come due, so a task with the clock as its input runs one ordinary job per
window: claimed, retried, recorded in ``done`` and never run again once recorded. A
scheduler that was down finds the windows it missed in the listing and catches up on them
according to ``catch_up``.

Schedules are

* an interval, as a duration (``"5m"``, ``"1h30m"``, ``"1d"``, or seconds): windows are
  aligned on whole multiples of the interval since 1970-01-01T00:00Z (an hourly clock has
  the windows 07:00, 08:00, ..., whenever it is started; a period that divides a day is
  aligned on midnight UTC);
* a cron expression of five fields (``"0 * * * *"``, ``"30 6 * * MON-FRI"``, ``"@daily"``):
  a window runs from one firing time to the next. Cron expressions need the ``cron``
  extra (``pip install 'pydatatask[cron]'``, which installs ``cronsim``), imported only
  when one is used; ``tz=`` evaluates the expression in a time zone (daylight saving
  handled as cron does: a firing time skipped by the clock change runs at the first
  minute after it, a repeated hour fires once).

Keys are the start of each window in UTC, ``2026-12-01T0700Z`` (or ``2026-12-01T070005Z``
for intervals that are not whole minutes): they sort in time order and are valid keys for
every backend. A key's value is ``{"start": "2026-12-01T07:00:00Z", "end":
"2026-12-01T08:00:00Z"}``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime, tzinfo
from typing import Any, Literal

from .._deps import require
from ..durations import parse_duration
from ..errors import ConfigurationError, KeyNotFoundError, ReadOnlyRepositoryError
from .base import MetadataRepository

__all__ = ("ClockRepository", "DEFAULT_MAX_WINDOWS", "window_key")

#: with ``catch_up="all"``, at most this many windows (the most recent) are listed
DEFAULT_MAX_WINDOWS = 1000

_MINUTE_KEY = "%Y-%m-%dT%H%MZ"
_SECOND_KEY = "%Y-%m-%dT%H%M%SZ"
_ISO = "%Y-%m-%dT%H:%M:%SZ"


def window_key(start: datetime | float, *, seconds: bool = False) -> str:
    """The key of the window starting at ``start`` (a datetime, naive meaning UTC, or Unix
    seconds): ``2026-12-01T0700Z``, or ``2026-12-01T070005Z`` with ``seconds``."""
    return _utc(start).strftime(_SECOND_KEY if seconds else _MINUTE_KEY)


def _utc(moment: datetime | float) -> datetime:
    if isinstance(moment, datetime):
        return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    return datetime.fromtimestamp(moment, UTC)


class _Interval:
    """Boundaries at whole multiples of ``period`` seconds since the epoch."""

    def __init__(self, period: int) -> None:
        self.period = period

    def floor(self, t: int) -> int:
        return t - t % self.period

    def after(self, t: int) -> int:
        return self.floor(t) + self.period

    def back(self, b: int) -> Iterator[int]:
        """Boundaries at or before ``b``, newest first (``b`` itself when it is one)."""
        b = self.floor(b)
        while True:
            yield b
            b -= self.period


_MACROS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}


class _Cron:
    """Boundaries at the firing times of a cron expression (minute resolution)."""

    def __init__(self, expression: str, zone: tzinfo) -> None:
        fields = _MACROS.get(expression.lower(), expression)
        if len(fields.split()) != 5:
            raise ConfigurationError(
                f"invalid cron expression {expression!r}: five fields are needed (minute hour "
                "day-of-month month day-of-week, e.g. '0 * * * *'), or one of " + ", ".join(_MACROS)
            )
        cronsim = require("cronsim", "cron")
        self._cronsim = cronsim.CronSim
        self.expression = expression = fields
        self.zone = zone
        try:
            probe = self._cronsim(expression, datetime(2000, 1, 1, tzinfo=zone))
            next(probe)
        except cronsim.CronSimError as exc:
            raise ConfigurationError(
                f"invalid cron expression {expression!r}: {exc} (five fields: minute hour "
                "day-of-month month day-of-week, e.g. '0 * * * *')"
            ) from exc
        except StopIteration:
            raise ConfigurationError(f"cron expression {expression!r} never fires") from None

    def _moment(self, t: int) -> datetime:
        return datetime.fromtimestamp(t, self.zone)

    def floor(self, t: int) -> int:
        return next(self.back(t))

    def after(self, t: int) -> int:
        return int(next(self._cronsim(self.expression, self._moment(t))).timestamp())

    def back(self, b: int) -> Iterator[int]:
        # CronSim in reverse yields the firing times strictly before its start, and fires
        # on whole minutes: starting one second later includes ``b`` itself
        for moment in self._cronsim(self.expression, self._moment(b + 1), reverse=True):
            yield int(moment.timestamp())


_Schedule = _Interval | _Cron


def _parse_schedule(schedule: str | float, tz: str | None) -> tuple[_Schedule, bool]:
    """The schedule, and whether its keys need seconds."""
    if isinstance(schedule, str) and (schedule.strip().startswith("@") or len(schedule.split()) > 1):
        zone: tzinfo = UTC
        if tz is not None:
            from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

            try:
                zone = ZoneInfo(tz)
            except (ZoneInfoNotFoundError, ValueError) as exc:
                raise ConfigurationError(
                    f"unknown time zone {tz!r} for cron expression {schedule!r}"
                ) from exc
        return _Cron(" ".join(schedule.split()), zone), False
    if tz is not None:
        raise ConfigurationError(
            f"tz= applies to cron expressions; the interval {schedule!r} is aligned on UTC"
        )
    try:
        seconds = parse_duration(schedule)
    except ConfigurationError as exc:
        raise ConfigurationError(
            f"invalid schedule {schedule!r}: expected a duration like '5m' or '1h30m', or a cron "
            "expression like '0 * * * *'"
        ) from exc
    if seconds < 1 or seconds != int(seconds):
        raise ConfigurationError(
            f"invalid schedule {schedule!r}: an interval is a whole number of seconds, at least 1s"
        )
    period = int(seconds)
    return _Interval(period), period % 60 != 0


def _parse_start(start: str | datetime | float) -> int:
    if isinstance(start, str):
        text = start.strip()
        try:
            moment = datetime.fromisoformat(text)
        except ValueError:
            try:  # a window key is a start too
                moment = datetime.strptime(text, _SECOND_KEY if len(text) > 16 else _MINUTE_KEY)
            except ValueError:
                raise ConfigurationError(
                    f"invalid start {start!r}: expected an ISO 8601 time like '2026-12-01T00:00Z'"
                ) from None
        return math.ceil(_utc(moment).timestamp())
    if isinstance(start, datetime):
        return math.ceil(_utc(start).timestamp())
    if isinstance(start, bool) or not isinstance(start, (int, float)):
        raise ConfigurationError(f"invalid start {start!r}: expected an ISO 8601 time or a datetime")
    return math.ceil(start)


class ClockRepository(MetadataRepository):
    """The windows of ``schedule`` that have come due, as keys (read-only).

    :param schedule: an interval (``"5m"``, ``"1h30m"``, seconds) or a cron expression
        (``"0 * * * *"``); see the module documentation for alignment.
    :param due: when a window becomes a key: at its ``"start"`` (the default: an hourly
        job runs at 07:00 for the window 07:00-08:00, as cron would) or at its ``"end"``
        (the window 07:00-08:00 runs at 08:00, once its hour is complete: the usual
        choice for jobs that process a window's data).
    :param catch_up: which due windows are listed: ``"latest"`` (the default: only the most
        recent one, so a scheduler that was down runs one job, for the newest window) or
        ``"all"`` (every window since ``start``, so it runs each window it missed; at most
        ``max_windows``, the most recent). Windows with a job record are never run again,
        whatever the policy.
    :param start: the first window: the earliest window listed is the first that starts at
        or after it (an ISO 8601 time such as ``"2026-12-01T00:00Z"``, naive meaning UTC;
        a datetime; or Unix seconds). Needed with ``catch_up="all"``.
    :param max_windows: with ``catch_up="all"``, list at most this many windows, the most
        recent (default :data:`DEFAULT_MAX_WINDOWS`); older ones are no longer listed.
    :param tz: the time zone a cron expression is evaluated in (``"Europe/Paris"``); keys
        stay in UTC. Intervals are always aligned on UTC.
    :param now: a callable giving the current time, as Unix seconds or a datetime (naive
        meaning UTC); default :func:`time.time`. Give your own to drive the clock in tests.
    :param name: a name for status output.

    ``get`` answers for every window of the schedule that has come due since ``start``,
    including those ``catch_up="latest"`` no longer lists (the value is a function of the
    key: a job launched just before its window left the listing still reads it).
    Writes and deletes raise :class:`~pydatatask.errors.ReadOnlyRepositoryError`.
    """

    def __init__(
        self,
        schedule: str | float,
        *,
        due: Literal["start", "end"] = "start",
        catch_up: Literal["latest", "all"] = "latest",
        start: str | datetime | float | None = None,
        max_windows: int = DEFAULT_MAX_WINDOWS,
        tz: str | None = None,
        now: Callable[[], float | datetime] | None = None,
        name: str = "",
    ) -> None:
        if isinstance(schedule, bool) or not isinstance(schedule, (str, int, float)):
            raise ConfigurationError(
                f"invalid schedule {schedule!r}: expected a duration or a cron expression"
            )
        if due not in ("start", "end"):
            raise ConfigurationError(f"schedule {schedule!r}: due must be 'start' or 'end', not {due!r}")
        if catch_up not in ("latest", "all"):
            raise ConfigurationError(
                f"schedule {schedule!r}: catch_up must be 'latest' or 'all', not {catch_up!r}"
            )
        if catch_up == "all" and start is None:
            raise ConfigurationError(
                f"schedule {schedule!r}: catch_up='all' needs start= (the first window to run, "
                "e.g. start='2026-12-01T00:00Z')"
            )
        if isinstance(max_windows, bool) or not isinstance(max_windows, int) or max_windows < 1:
            raise ConfigurationError(f"schedule {schedule!r}: max_windows must be a positive integer")
        self.schedule = schedule
        self.due = due
        self.catch_up = catch_up
        self.max_windows = max_windows
        self.tz = tz
        self._name = name
        self._now = now or time.time
        self._schedule, self._seconds = _parse_schedule(schedule, tz)
        self._start = _parse_start(start) if start is not None else None
        # the listing, recomputed only when a new window comes due
        self._cached_latest: int | None = None
        self._cached: frozenset[str] = frozenset()

    # ------------------------------------------------------------ the windows
    def describe(self) -> str:
        name = f" {self._name}" if self._name else ""
        tz = f" in {self.tz}" if self.tz else ""
        return f"clock{name} {self.schedule!r}{tz} (due at the {self.due} of each window, catch-up {self.catch_up})"

    @property
    def is_writable(self) -> bool:
        return False

    def _time(self) -> float:
        now = self._now()
        return _utc(now).timestamp() if isinstance(now, datetime) else float(now)

    def _now_int(self) -> int:
        return math.floor(self._time())

    def _latest_due(self, now: int) -> int:
        """The start of the newest window that is due at ``now``."""
        current = self._schedule.floor(now)
        if self.due == "start":
            return current
        return next(b for b in self._schedule.back(current - 1))

    def windows(self) -> list[tuple[datetime, datetime]]:
        """The listed windows as ``(start, end)`` in UTC, oldest first."""
        starts = sorted(self._starts(self._latest_due(self._now_int())))
        return [(_utc(s), _utc(self._schedule.after(s))) for s in starts]

    def _starts(self, latest: int) -> list[int]:
        limit = 1 if self.catch_up == "latest" else self.max_windows
        out: list[int] = []
        for b in self._schedule.back(latest):
            if len(out) >= limit or (self._start is not None and b < self._start):
                break
            out.append(b)
        return out

    def seconds_until_next(self) -> float:
        """Seconds from now until the next window comes due (a new key appears)."""
        now = self._time()
        return max(0.0, self._schedule.after(math.floor(now)) - now)

    def key_of(self, start: datetime | float) -> str:
        """The key of the window that starts at ``start``."""
        return window_key(start, seconds=self._seconds)

    def _parse_key(self, key: str) -> int | None:
        try:
            moment = datetime.strptime(key, _SECOND_KEY if self._seconds else _MINUTE_KEY)
        except ValueError:
            return None
        return int(moment.replace(tzinfo=UTC).timestamp())

    def _window(self, key: str) -> tuple[int, int] | None:
        """``(start, end)`` of the window ``key`` if it has come due since ``start``."""
        begin = self._parse_key(key)
        if begin is None or self._schedule.floor(begin) != begin:
            return None
        if self._start is not None and begin < self._start:
            return None
        if begin > self._latest_due(self._now_int()):
            return None
        return begin, self._schedule.after(begin)

    # ------------------------------------------------------------ repository contract
    async def keys(self) -> set[str]:
        latest = self._latest_due(self._now_int())
        if latest != self._cached_latest:
            self._cached = frozenset(self.key_of(s) for s in self._starts(latest))
            self._cached_latest = latest
        return set(self._cached)

    async def _list(self) -> Iterable[str]:
        return await self.keys()

    async def _contains(self, key: str) -> bool:
        return key in await self.keys()

    async def _get(self, key: str) -> Any:
        window = self._window(key)
        if window is None:
            raise KeyNotFoundError(key, self.describe())
        begin, end = window
        return {"start": _utc(begin).strftime(_ISO), "end": _utc(end).strftime(_ISO)}

    async def _put(self, key: str, value: Any) -> None:
        raise ReadOnlyRepositoryError(f"{self.describe()} is read-only: its keys are time windows")

    async def _delete(self, key: str) -> None:
        raise ReadOnlyRepositoryError(f"{self.describe()} is read-only: its keys are time windows")

    async def _create(self, key: str, value: Any) -> bool:
        raise ReadOnlyRepositoryError(f"{self.describe()} is read-only: its keys are time windows")

    async def _replace_if(self, key: str, expected: Any, value: Any) -> bool:
        raise ReadOnlyRepositoryError(f"{self.describe()} is read-only: its keys are time windows")
