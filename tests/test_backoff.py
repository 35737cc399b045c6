"""The one retry helper every backend uses: its settings, its waits, its loop."""

from __future__ import annotations

import asyncio
import logging
import random

import pytest

from pydatatask import Backoff, ConfigurationError


class Flaky(Exception):
    pass


class Fatal(Exception):
    pass


class Translated(Exception):
    pass


def test_settings_parse_durations_and_are_checked() -> None:
    policy = Backoff(attempts=3, initial="200ms", max_delay="1m")
    assert policy.initial == 0.2 and policy.max_delay == 60.0 and policy.retries == 2
    assert Backoff().attempts == 5
    for bad, match in (
        ({"attempts": 0}, "attempts must be an integer of at least 1, not 0"),
        ({"attempts": True}, "attempts must be an integer"),
        ({"factor": 0.5}, "factor must be at least 1"),
        ({"jitter": 2}, "jitter is a fraction"),
        ({"initial": "soon"}, "invalid duration 'soon'"),
    ):
        with pytest.raises(ConfigurationError, match=match):
            Backoff(**bad)


def test_delays_grow_by_the_factor_up_to_the_cap_and_spread_by_the_jitter() -> None:
    exact = Backoff(initial=0.1, factor=3, max_delay=2, jitter=0)
    assert [exact.delay(n) for n in (1, 2, 3, 4, 5)] == pytest.approx([0.1, 0.3, 0.9, 2.0, 2.0])
    spread = Backoff(initial=1, factor=1, jitter=0.5)
    waits = [spread.delay(1, random.Random(seed)) for seed in range(200)]
    assert all(0.5 <= w <= 1.5 for w in waits)
    assert max(waits) - min(waits) > 0.5  # really spread, not a constant


async def test_run_retries_transient_errors_then_returns(caplog: pytest.LogCaptureFixture) -> None:
    calls = 0

    async def call() -> str:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise Flaky(f"busy {calls}")
        return "ok"

    policy = Backoff(attempts=3, initial=0.001, jitter=0)
    with caplog.at_level(logging.INFO, logger="pydatatask.backoff"):
        result = await policy.run("listing things", call, transient=lambda e: isinstance(e, Flaky))
    assert result == "ok" and calls == 3
    retries = [r.getMessage() for r in caplog.records]
    assert len(retries) == 2  # each retry logged once
    assert retries[0].startswith("listing things failed (Flaky); retry 1 of 2 in 0.00")


async def test_run_gives_up_after_the_attempts_and_translates() -> None:
    calls = 0

    async def call() -> None:
        nonlocal calls
        calls += 1
        raise Flaky("down")

    def fail(exc: Exception, attempts: int) -> BaseException:
        return Translated(f"gave up after {attempts}: {exc}")

    policy = Backoff(attempts=4, initial=0.001)
    with pytest.raises(Translated, match="gave up after 4: down") as info:
        await policy.run("x", call, transient=lambda e: True, fail=fail)
    assert calls == 4 and isinstance(info.value.__cause__, Flaky)


async def test_errors_that_are_not_transient_are_raised_at_once() -> None:
    calls = 0

    async def call() -> None:
        nonlocal calls
        calls += 1
        raise Fatal("no")

    with pytest.raises(Fatal):
        await Backoff(attempts=5, initial=0.001).run("x", call, transient=lambda e: isinstance(e, Flaky))
    assert calls == 1
    translated = Translated("already")

    async def failing() -> None:
        raise translated

    # a translation that returns the error itself re-raises it unchanged (no self-cause)
    with pytest.raises(Translated) as info:
        await Backoff().run("x", failing, transient=lambda e: False, fail=lambda e, n: e)
    assert info.value is translated and info.value.__cause__ is None


async def test_wait_at_least_lengthens_a_wait(caplog: pytest.LogCaptureFixture) -> None:
    calls = 0

    async def call() -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise Flaky("retry after 0.05")

    with caplog.at_level(logging.INFO, logger="pydatatask.backoff"):
        await Backoff(initial=0.001, jitter=0).run(
            "x", call, transient=lambda e: True, wait_at_least=lambda e: 0.05
        )
    assert "in 0.05s" in caplog.text


async def test_cancelling_stops_the_loop_during_a_wait() -> None:
    calls = 0
    waiting = asyncio.Event()

    async def call() -> None:
        nonlocal calls
        calls += 1
        waiting.set()
        raise Flaky("down")

    run = asyncio.create_task(Backoff(attempts=5, initial=60).run("x", call, transient=lambda e: True))
    await waiting.wait()
    await asyncio.sleep(0)
    run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await run
    assert calls == 1


async def test_cancellation_raised_by_the_call_is_never_retried() -> None:
    calls = 0

    async def call() -> None:
        nonlocal calls
        calls += 1
        raise asyncio.CancelledError

    with pytest.raises(asyncio.CancelledError):
        await Backoff(initial=0.001).run("x", call, transient=lambda e: True)
    assert calls == 1
