"""ClockRepository: windows as keys, aligned, due at their start or end, caught up by policy."""

from __future__ import annotations

import math
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pydatatask import ConfigurationError, KeyNotFoundError, ReadOnlyRepositoryError, validate_key
from pydatatask.repository.clock import ClockRepository, window_key

ROOT = Path(__file__).resolve().parents[2]


def at(text: str) -> float:
    """Unix seconds of an ISO time (UTC)."""
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


class Clock:
    """A clock the test moves by hand."""

    def __init__(self, text: str) -> None:
        self.t = at(text)

    def __call__(self) -> float:
        return self.t

    def set(self, text: str) -> None:
        self.t = at(text)


async def test_hourly_windows_are_aligned_and_due_at_their_start() -> None:
    clock = Clock("2026-12-01T07:42:13")
    repo = ClockRepository("1h", now=clock)
    assert await repo.keys() == {"2026-12-01T0700Z"}
    assert await repo.get("2026-12-01T0700Z") == {
        "start": "2026-12-01T07:00:00Z",
        "end": "2026-12-01T08:00:00Z",
    }
    assert repo.seconds_until_next() == pytest.approx(17 * 60 + 47)
    clock.set("2026-12-01T08:00:00")
    assert await repo.keys() == {"2026-12-01T0800Z"}
    assert await repo.contains("2026-12-01T0800Z")
    assert not await repo.contains("2026-12-01T0700Z")  # catch_up="latest": only the newest


async def test_due_at_the_end_lists_complete_windows_only() -> None:
    clock = Clock("2026-12-01T07:59:59")
    repo = ClockRepository("1h", due="end", now=clock)
    assert await repo.keys() == {"2026-12-01T0600Z"}
    with pytest.raises(KeyNotFoundError):
        await repo.get("2026-12-01T0700Z")  # the hour is not over yet
    clock.set("2026-12-01T08:00:00")
    assert await repo.keys() == {"2026-12-01T0700Z"}
    assert (await repo.get("2026-12-01T0700Z"))["end"] == "2026-12-01T08:00:00Z"


async def test_intervals_align_on_the_epoch_not_on_now() -> None:
    clock = Clock("2026-12-01T07:07:00")
    repo = ClockRepository("1h30m", catch_up="all", start="2026-12-01T00:00Z", now=clock)
    assert sorted(await repo.keys()) == [
        "2026-12-01T0000Z",
        "2026-12-01T0130Z",
        "2026-12-01T0300Z",
        "2026-12-01T0430Z",
        "2026-12-01T0600Z",
    ]
    five = ClockRepository("5m", now=clock)
    assert await five.keys() == {"2026-12-01T0705Z"}
    assert five.seconds_until_next() == pytest.approx(180)


async def test_catch_up_all_since_start_and_bounded() -> None:
    clock = Clock("2026-12-01T10:30:00")
    repo = ClockRepository("1h", catch_up="all", start="2026-12-01T06:15Z", now=clock)
    # the first window is the first that starts at or after start
    assert sorted(await repo.keys()) == [f"2026-12-01T{h:02d}00Z" for h in range(7, 11)]
    assert [(s.hour, e.hour) for s, e in repo.windows()] == [(7, 8), (8, 9), (9, 10), (10, 11)]
    with pytest.raises(KeyNotFoundError):
        await repo.get("2026-12-01T0600Z")  # before start
    capped = ClockRepository("1h", catch_up="all", start="2026-11-01T00:00Z", max_windows=3, now=clock)
    assert sorted(await capped.keys()) == [f"2026-12-01T{h:02d}00Z" for h in (8, 9, 10)]


async def test_latest_still_reads_a_window_it_no_longer_lists() -> None:
    clock = Clock("2026-12-01T09:10:00")
    repo = ClockRepository("1h", now=clock)
    assert await repo.keys() == {"2026-12-01T0900Z"}
    # a job launched at 08:59 reads its window after 09:00
    assert (await repo.get("2026-12-01T0800Z"))["start"] == "2026-12-01T08:00:00Z"
    for absent in ("2026-12-01T1000Z", "2026-12-01T0830Z", "2026-12-01T083000Z", "nonsense"):
        with pytest.raises(KeyNotFoundError):
            await repo.get(absent)  # not due yet, not a window of the schedule, not a window key


async def test_seconds_in_keys_only_for_intervals_that_need_them() -> None:
    clock = Clock("2026-12-01T07:00:12")
    repo = ClockRepository("5s", catch_up="all", start="2026-12-01T07:00Z", now=clock)
    assert sorted(await repo.keys()) == ["2026-12-01T070000Z", "2026-12-01T070005Z", "2026-12-01T070010Z"]
    assert (await repo.get("2026-12-01T070005Z"))["end"] == "2026-12-01T07:00:10Z"
    assert window_key(at("2026-12-01T07:00:00")) == "2026-12-01T0700Z"
    assert window_key(datetime(2026, 12, 1, 7, 0, 5), seconds=True) == "2026-12-01T070005Z"


async def test_keys_are_valid_keys_and_sort_in_time_order() -> None:
    clock = Clock("2026-12-03T00:00:00")
    repo = ClockRepository("7m", catch_up="all", start="2026-12-01T00:00Z", now=clock)
    keys = await repo.keys()
    first = -(-int(at("2026-12-01T00:00:00")) // 420) * 420
    assert len(keys) == len(range(first, int(clock.t) + 1, 420)) == 412
    for key in keys:
        validate_key(key)
        assert ":" not in key and "/" not in key
    starts = [datetime.fromisoformat((await repo.get(k))["start"]) for k in sorted(keys)]
    assert starts == sorted(starts)
    assert [k async for k in repo] == sorted(keys)


async def test_cron_windows_run_from_one_firing_to_the_next() -> None:
    clock = Clock("2026-12-01T07:42:00")  # a Tuesday
    repo = ClockRepository("30 6 * * MON-FRI", catch_up="all", start="2026-11-27T00:00Z", now=clock)
    assert sorted(await repo.keys()) == ["2026-11-27T0630Z", "2026-11-30T0630Z", "2026-12-01T0630Z"]
    assert await repo.get("2026-11-27T0630Z") == {
        "start": "2026-11-27T06:30:00Z",
        "end": "2026-11-30T06:30:00Z",  # Friday to Monday
    }
    hourly = ClockRepository("@hourly", due="end", now=clock)
    assert await hourly.keys() == {"2026-12-01T0600Z"}
    assert hourly.seconds_until_next() == pytest.approx(18 * 60)


async def test_cron_in_a_time_zone_across_daylight_saving() -> None:
    # Europe/Paris: 2026-03-29 02:00 -> 03:00, 2026-10-25 03:00 -> 02:00
    clock = Clock("2026-03-31T12:00:00")
    spring = ClockRepository(
        "30 2 * * *", tz="Europe/Paris", catch_up="all", start="2026-03-28T00:00Z", now=clock
    )
    # the skipped 02:30 runs at 03:00 local (01:00Z); keys stay in UTC
    assert sorted(await spring.keys()) == [
        "2026-03-28T0130Z",
        "2026-03-29T0100Z",
        "2026-03-30T0030Z",
        "2026-03-31T0030Z",
    ]
    clock.set("2026-10-27T12:00:00")
    autumn = ClockRepository(
        "30 2 * * *", tz="Europe/Paris", catch_up="all", start="2026-10-24T00:00Z", now=clock
    )
    # the repeated hour fires once: one window per day
    assert sorted(await autumn.keys()) == [
        "2026-10-24T0030Z",
        "2026-10-25T0030Z",
        "2026-10-26T0130Z",
        "2026-10-27T0130Z",
    ]


async def test_writes_and_deletes_are_refused() -> None:
    repo = ClockRepository("1h", now=Clock("2026-12-01T07:00:00"))
    assert not repo.is_writable
    for attempt in (
        repo.put("2026-12-01T0700Z", {}),
        repo.delete("2026-12-01T0700Z"),
        repo.create("2026-12-01T0800Z", {}),
        repo.replace_if("2026-12-01T0700Z", {}, {}),
    ):
        with pytest.raises(ReadOnlyRepositoryError):
            await attempt
    assert await repo.keys() == {"2026-12-01T0700Z"}
    assert "'1h'" in repo.describe()


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"schedule": "61 * * * *"}, "invalid cron expression '61 * * * *': Bad minute"),
        ({"schedule": "* * * * * *"}, "five fields are needed"),
        ({"schedule": "@sometimes"}, "five fields are needed"),
        ({"schedule": "5x"}, "invalid schedule '5x'"),
        ({"schedule": "500ms"}, "a whole number of seconds, at least 1s"),
        ({"schedule": 0}, "at least 1s"),
        ({"schedule": "1h", "tz": "Europe/Paris"}, "tz= applies to cron expressions"),
        ({"schedule": "0 * * * *", "tz": "Mars/Olympus"}, "unknown time zone 'Mars/Olympus'"),
        ({"schedule": "1h", "catch_up": "all"}, "catch_up='all' needs start="),
        ({"schedule": "1h", "catch_up": "some"}, "catch_up must be 'latest' or 'all'"),
        ({"schedule": "1h", "due": "middle"}, "due must be 'start' or 'end'"),
        ({"schedule": "1h", "start": "yesterday"}, "invalid start 'yesterday'"),
        ({"schedule": "1h", "catch_up": "all", "start": 0, "max_windows": 0}, "max_windows"),
    ],
)
def test_bad_settings_are_one_line_errors(kwargs: dict[str, object], fragment: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        ClockRepository(**kwargs)  # type: ignore[arg-type]
    message = str(info.value)
    assert fragment in message and "\n" not in message


def test_cron_without_the_extra_names_the_install() -> None:
    code = (
        "import sys; sys.modules['cronsim'] = None\n"
        "from pydatatask.repository.clock import ClockRepository\n"
        "ClockRepository('1h')\n"  # intervals need no extra
        "try:\n"
        "    ClockRepository('0 * * * *')\n"
        "except ImportError as exc:\n"
        "    print(type(exc).__name__, exc)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, cwd=ROOT, check=True
    )
    assert proc.stdout.strip() == (
        "MissingDependencyError this feature needs the 'cronsim' package: "
        "install it with `pip install 'pydatatask[cron]'`"
    )


def test_cron_library_is_imported_only_for_cron() -> None:
    code = (
        "import sys, pydatatask\n"
        "from pydatatask.repository.clock import ClockRepository\n"
        "ClockRepository('1h')\n"
        "print('cronsim' in sys.modules)\n"
        "ClockRepository('0 * * * *')\n"
        "print('cronsim' in sys.modules)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, cwd=ROOT, check=True
    )
    assert proc.stdout.split() == ["False", "True"]


@settings(max_examples=200, deadline=None)
@given(
    period=st.integers(1, 3 * 86400),
    now=st.floats(1.5e9, 2.5e9),
    back=st.integers(0, 40),
    due=st.sampled_from(["start", "end"]),
)
async def test_interval_listing_matches_counting_the_windows(
    period: int, now: float, back: int, due: str
) -> None:
    """Against a plain count: every window k*period whose due time has passed, since start."""
    start = now - back * period - period / 2
    repo = ClockRepository(period, due=due, catch_up="all", start=start, now=lambda: now)  # type: ignore[arg-type]
    first = math.ceil(start / period)
    expected = [
        k * period
        for k in range(first, math.floor(now / period) + 1)
        if (k * period if due == "start" else (k + 1) * period) <= now
    ]
    assert [s.timestamp() for s, _ in repo.windows()] == expected
    assert len(await repo.keys()) == len(expected)
    newest = math.floor(now / period) * period - (0 if due == "start" else period)
    latest = ClockRepository(period, due=due, now=lambda: now)  # type: ignore[arg-type]
    assert [s.timestamp() for s, _ in latest.windows()] == [newest]
    assert expected == [] or expected[-1] == newest
    assert 0 < repo.seconds_until_next() <= period


@settings(max_examples=50, deadline=None)
@given(now=st.floats(1.5e9, 2.5e9), due=st.sampled_from(["start", "end"]))
async def test_hourly_cron_and_hourly_interval_agree(now: float, due: str) -> None:
    kwargs: dict[str, Any] = {"due": due, "catch_up": "all", "start": now - 5 * 3600, "now": lambda: now}
    cron = ClockRepository("0 * * * *", **kwargs)
    interval = ClockRepository("1h", **kwargs)
    assert await cron.keys() == await interval.keys()
    assert cron.windows() == interval.windows()
    assert cron.seconds_until_next() == pytest.approx(interval.seconds_until_next())


async def test_now_may_give_a_datetime() -> None:
    repo = ClockRepository("1h", now=lambda: datetime(2026, 12, 1, 7, 30))
    assert await repo.keys() == {"2026-12-01T0700Z"}
    assert repo.seconds_until_next() == pytest.approx(1800)
