"""Periodic tasks: a job per time window of a clock, caught up by policy, run once each."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from pydatatask import AndRepository, ConfigurationError, MemoryMetadataRepository, YamlMetadataFileRepository
from pydatatask.cli import run_cli
from pydatatask.pipeline import Pipeline
from pydatatask.pipeline.scheduler import until_next_window
from pydatatask.repository.base import MetadataRepository
from pydatatask.repository.clock import ClockRepository
from pydatatask.task import FunctionTask, RetryPolicy

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "tests" / "task" / "periodic_pipeline.py"


def at(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


class Clock:
    """A clock the test moves by hand."""

    def __init__(self, text: str) -> None:
        self.t = at(text)

    def __call__(self) -> float:
        return self.t

    def set(self, text: str) -> None:
        self.t = at(text)


def hourly_task(
    clock: ClockRepository, out: MetadataRepository, calls: list[str], **kwargs: Any
) -> FunctionTask:
    async def report(key: str, clock: MetadataRepository, out: MetadataRepository) -> None:
        calls.append(key)
        window = await clock.get(key)
        await asyncio.sleep(0.005)  # two schedulers overlap
        await out.put(key, {"from": window["start"], "to": window["end"]})

    return FunctionTask("report", report, inputs={"clock": clock}, outputs={"out": out}, **kwargs)


async def test_one_job_per_window_and_recorded_windows_never_rerun() -> None:
    now = Clock("2026-12-01T07:10:00")
    out = MemoryMetadataRepository()
    calls: list[str] = []
    pipeline = Pipeline([hourly_task(ClockRepository("1h", now=now), out, calls)])
    summary = await pipeline.run()
    assert summary.ok and calls == ["2026-12-01T0700Z"]
    assert await out.get("2026-12-01T0700Z") == {"from": "2026-12-01T07:00:00Z", "to": "2026-12-01T08:00:00Z"}
    now.set("2026-12-01T07:59:00")
    assert (await pipeline.run()).succeeded == 0  # the window is recorded
    now.set("2026-12-01T08:00:00")
    assert (await pipeline.run()).succeeded == 1
    assert calls == ["2026-12-01T0700Z", "2026-12-01T0800Z"]
    record = await pipeline.tasks["report"].done.get("2026-12-01T0800Z")
    assert record["success"] is True


async def test_catch_up_latest_runs_only_the_newest_missed_window() -> None:
    now = Clock("2026-12-01T07:00:00")
    calls: list[str] = []
    pipeline = Pipeline(
        [hourly_task(ClockRepository("1h", due="end", now=now), MemoryMetadataRepository(), calls)]
    )
    await pipeline.run()
    assert calls == ["2026-12-01T0600Z"]
    now.set("2026-12-01T11:30:00")  # down from 07:00 to 11:30
    await pipeline.run()
    assert calls == ["2026-12-01T0600Z", "2026-12-01T1000Z"]


async def test_catch_up_all_runs_every_missed_window_once(tmp_path: Path) -> None:
    now = Clock("2026-12-01T03:00:00")
    calls: list[str] = []

    def build() -> Pipeline:
        clock = ClockRepository("1h", due="end", catch_up="all", start="2026-12-01T00:00Z", now=now)
        task = hourly_task(clock, YamlMetadataFileRepository(tmp_path / "out"), calls, concurrency=1)
        return Pipeline([task], state_dir=tmp_path / "state")

    assert (await build().run()).succeeded == 3
    now.set("2026-12-01T09:00:00")  # a new scheduler, after a pause: the six windows it missed
    summary = await build().run()
    assert summary.ok and summary.succeeded == 6
    expected = [f"2026-12-01T{h:02d}00Z" for h in range(9)]
    assert calls == expected  # each once, in time order
    assert sorted(await YamlMetadataFileRepository(tmp_path / "out").keys()) == expected


async def test_a_failed_window_follows_the_retry_policy() -> None:
    now = Clock("2026-12-01T07:00:00")
    attempts: list[str] = []

    def flaky(key: str, clock: dict[str, str]) -> dict[str, Any]:
        attempts.append(key)
        if key == "2026-12-01T0700Z" or len(attempts) == 3:
            raise RuntimeError(f"window {key} failed")
        return {"out": clock}

    out = MemoryMetadataRepository()
    task = FunctionTask(
        "flaky",
        flaky,
        schedule=ClockRepository("1h", now=now),
        outputs={"out": out},
        retry=RetryPolicy(max_attempts=2, backoff=0, jitter=0),
    )
    pipeline = Pipeline([task])
    first = await pipeline.run()
    assert first.failed == 1 and attempts == ["2026-12-01T0700Z"] * 2
    record = await task.done.get("2026-12-01T0700Z")
    assert record["success"] is False and record["attempts"] == 2
    assert not await out.contains("2026-12-01T0700Z")
    assert (await pipeline.run()).failed == 0 and len(attempts) == 2  # a failure record stays
    now.set("2026-12-01T08:00:00")
    second = await pipeline.run()
    assert second.ok and second.succeeded == 1  # the second attempt of the 08:00 window
    assert attempts[2:] == ["2026-12-01T0800Z"] * 2
    assert (await task.done.get("2026-12-01T0800Z"))["attempts"] == 2


async def test_two_concurrent_schedulers_run_each_window_once(tmp_path: Path) -> None:
    now = Clock("2026-12-01T12:00:00")
    calls: list[str] = []

    def build() -> Pipeline:
        clock = ClockRepository("15m", catch_up="all", start="2026-12-01T00:00Z", now=now)
        task = hourly_task(clock, YamlMetadataFileRepository(tmp_path / "out"), calls, concurrency=4)
        return Pipeline([task], state_dir=tmp_path / "state")

    one, two = await asyncio.gather(build().run(), build().run())
    windows = 12 * 4 + 1
    assert one.ok and two.ok
    assert one.succeeded + two.succeeded == windows
    assert one.succeeded and two.succeeded  # both took part
    assert len(calls) == windows and len(set(calls)) == windows


def test_schedule_on_a_task_links_a_clock_and_errors_name_the_task() -> None:
    def job(key: str) -> dict[str, Any]:
        return {}

    task = FunctionTask("hourly", job, schedule="1h")
    clock = task.links["clock"].repository
    assert isinstance(clock, ClockRepository) and clock.schedule == "1h"
    assert [link.name for link in task.required_links] == ["clock"]
    for bad, fragment in (("61 * * * *", "'61 * * * *'"), ("every hour", "'every hour'"), ("0.5s", "'0.5s'")):
        with pytest.raises(ConfigurationError) as info:
            FunctionTask("hourly", job, schedule=bad)
        message = str(info.value)
        assert message.startswith("task 'hourly': ") and fragment in message and "\n" not in message
    with pytest.raises(ConfigurationError, match="already has a link named 'clock'"):
        FunctionTask("hourly", job, schedule="1h", inputs={"clock": MemoryMetadataRepository()})


def test_the_idle_wait_ends_at_the_next_window() -> None:
    now = Clock("2026-12-01T07:59:58.5")

    def job(key: str) -> dict[str, Any]:
        return {}

    hourly = FunctionTask("hourly", job, schedule=ClockRepository("1h", now=now))
    other_src = MemoryMetadataRepository()
    other = FunctionTask("other", job, inputs={"src": other_src})
    assert until_next_window([other], 30.0) == 30.0
    assert until_next_window([other, hourly], 30.0) == pytest.approx(1.5, abs=0.01)
    assert until_next_window([hourly], 1.0) == 1.0  # the poll interval is sooner
    inside = FunctionTask(
        "inside", job, inputs={"both": AndRepository(hourly.links["clock"].repository, other_src)}
    )
    assert until_next_window([inside], 30.0) == pytest.approx(1.5, abs=0.01)  # a clock under a view
    now.set("2026-12-01T08:00:00")
    assert until_next_window([hourly], 7200.0) == pytest.approx(3600, abs=0.01)


def test_cli_status_and_ls_show_the_windows(capsys: pytest.CaptureFixture[str]) -> None:
    now = Clock("2026-12-01T03:20:00")
    clock = ClockRepository("1h", catch_up="all", start="2026-12-01T01:00Z", now=now)
    pipeline = Pipeline([hourly_task(clock, MemoryMetadataRepository(), [])])

    def cli(*argv: str) -> Any:
        capsys.readouterr()
        assert run_cli(pipeline, [*argv, "--json"]) == 0
        return json.loads(capsys.readouterr().out)

    windows = ["2026-12-01T0100Z", "2026-12-01T0200Z", "2026-12-01T0300Z"]
    assert cli("ls", "report.clock") == windows
    assert cli("cat", "report.clock", "2026-12-01T0200Z") == {
        "start": "2026-12-01T02:00:00Z",
        "end": "2026-12-01T03:00:00Z",
    }
    status = cli("status")["report"]
    assert status["ready"] == windows and status["counts"]["ready"] == 3
    assert cli("run")["succeeded"] == 3
    status = cli("status")["report"]
    assert status["succeeded"] == windows and status["counts"]["ready"] == 0


def _wait_for(predicate: Any, timeout: float, proc: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert proc.poll() is None, f"the run ended early: {proc.communicate()}"
        assert time.monotonic() < deadline, "timed out waiting for the next windows"
        time.sleep(0.02)


def _forever(data: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(SCRIPT), "run", "--forever", "--json"],
        env=dict(os.environ, PYTHONPATH=str(ROOT), PDT_PERIODIC_DATA=str(data)),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_run_forever_launches_each_window_when_it_comes(tmp_path: Path) -> None:
    proc = _forever(tmp_path)
    out = tmp_path / "out"
    try:
        # the pipeline polls once an hour: the second and third windows come from the
        # wake-up for the next window
        _wait_for(lambda: out.exists() and len(list(out.glob("*.txt"))) >= 3, 30, proc)
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 143, stderr
    summary = json.loads(stdout)
    assert summary["failed"] == 0 and summary["succeeded"] >= 3
    done = {p.stem for p in (tmp_path / "state" / "tick" / "done").glob("*.yaml")}
    written = {p.stem: p.read_text() for p in out.glob("*.txt")}
    assert set(written) == done
    for key, start in written.items():  # each window wrote its own start
        assert datetime.strptime(key, "%Y-%m-%dT%H%M%SZ").strftime("%Y-%m-%dT%H:%M:%SZ") == start


def test_two_forever_schedulers_run_each_window_once(tmp_path: Path) -> None:
    procs = [_forever(tmp_path), _forever(tmp_path)]  # both wake at each window and race for it
    out = tmp_path / "out"
    try:
        for proc in procs:
            _wait_for(lambda: out.exists() and len(list(out.glob("*.txt"))) >= 4, 30, proc)
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        results = [proc.communicate(timeout=30) for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert [proc.returncode for proc in procs] == [143, 143], [err for _, err in results]
    summaries = [json.loads(stdout) for stdout, _ in results]
    runs = {p.name: p.read_text().splitlines() for p in (tmp_path / "runs").iterdir()}
    assert len(runs) >= 4
    assert all(len(lines) == 1 for lines in runs.values()), runs  # no window ran twice
    assert sum(s["succeeded"] for s in summaries) == len(runs)
    assert {p.stem for p in out.glob("*.txt")} == set(runs)
