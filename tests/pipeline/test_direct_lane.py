"""The short path of a job (``execute_direct``): claims and records in this process's
memory, an async function on the in-loop executor. Run through the scheduler, it must do
what the general path does: the same records, claims held while a call runs, a failed
first call retried and recorded, a cancelled one leaving nothing, every key run once."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from pydatatask.pipeline import Pipeline
from pydatatask.repository import MemoryBlobRepository
from pydatatask.task import FunctionTask
from pydatatask.task.lifecycle import direct_lane
from pydatatask.task.records import JobState
from pydatatask.task.retry import RetryPolicy

KEYS = [f"k{i:03d}" for i in range(300)]
#: what differs between two runs of the same job
_MOMENTS = ("start_time", "end_time", "duration")


def _chain(*, general: bool) -> tuple[Pipeline, list[str], dict[str, MemoryBlobRepository]]:
    """Two chained stages; the first writes a key beyond its own (``wrote``) for some keys
    and suspends on others. ``general``: a hook on job ends makes every job take the
    general path of the lifecycle."""
    calls: list[str] = []
    repos = {
        "src": MemoryBlobRepository({k: k.encode() for k in KEYS}),
        "mid": MemoryBlobRepository(),
        "side": MemoryBlobRepository(),
        "out": MemoryBlobRepository(),
    }

    async def first(key: str, src: Any, mid: Any, side: Any) -> None:
        calls.append(f"a {key}")
        data = await src.read_bytes(key)
        if key.endswith("7"):
            await asyncio.sleep(0)  # a call that gives the loop a turn (a tick may run)
        if key.endswith("3"):
            await side.write_bytes(f"{key}.extra", data)
        await mid.write_bytes(key, data.upper())

    async def second(key: str, mid: Any, out: Any) -> None:
        calls.append(f"b {key}")
        await out.write_bytes(key, (await mid.read_bytes(key))[::-1])

    a = FunctionTask(
        "a", first, inputs={"src": repos["src"]}, outputs={"mid": repos["mid"], "side": repos["side"]}
    )
    b = FunctionTask("b", second, inputs={"mid": repos["mid"]}, outputs={"out": repos["out"]}, concurrency=5)
    pipeline = Pipeline([a, b])
    if general:
        pipeline.hooks.on("job_succeeded", lambda event: None)
    return pipeline, calls, repos


async def _records(pipeline: Pipeline) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for task in pipeline.tasks.values():
        for key in await task.done.keys():
            record = await task.done.get(key)
            kept = {k: v for k, v in record.items() if k not in _MOMENTS}
            for field in ("upstream", "inputs"):
                # the end time of the upstream record, and the inputs' versions (in memory:
                # a counter of writes, which follows the order the jobs ran in; None for a
                # key launched before a listing showed its version): the links they name
                if field in kept:
                    kept[field] = sorted(kept[field])
            out[f"{task.name} {key}"] = kept
    return out


async def test_the_short_path_records_what_the_general_path_records() -> None:
    lean, lean_calls, lean_repos = _chain(general=False)
    general, general_calls, general_repos = _chain(general=True)
    assert all(direct_lane(t, lean.hooks) for t in lean.tasks.values())
    assert not any(direct_lane(t, general.hooks) for t in general.tasks.values())
    lean_summary = await lean.run()
    general_summary = await general.run()
    assert lean_summary.succeeded == general_summary.succeeded == 2 * len(KEYS)
    assert lean_summary.failed == 0 and not lean_summary.errors
    # every key run once per stage, on both paths
    assert (
        sorted(lean_calls)
        == sorted(general_calls)
        == sorted([f"a {k}" for k in KEYS] + [f"b {k}" for k in KEYS])
    )
    lean_records, general_records = await _records(lean), await _records(general)
    assert lean_records == general_records
    assert lean_records["a k003"]["wrote"] == ["k003.extra"]
    assert lean_records["a k004"].get("outputs") == ["mid"]
    for name in ("mid", "side", "out"):
        assert lean_repos[name]._data == general_repos[name]._data
    for task in lean.tasks.values():
        assert await task.live.keys() == set()
    scheduler = lean.scheduler
    assert not scheduler.running and not scheduler.states
    assert scheduler.metrics.tasks["a"].succeeded == len(KEYS)
    assert scheduler.metrics.tasks["b"].durations.count == len(KEYS)


async def test_a_failed_first_call_goes_on_through_retries_cleanup_and_a_record() -> None:
    src = MemoryBlobRepository({"ok": b"1", "flaky": b"2", "broken": b"3"})
    dst = MemoryBlobRepository()
    calls: list[str] = []

    async def work(key: str, src: Any, dst: Any) -> None:
        calls.append(key)
        await dst.write_bytes(key, b"partial")
        if key == "broken" or (key == "flaky" and calls.count(key) == 1):
            raise RuntimeError(f"no luck with {key}")

    task = FunctionTask(
        "t", work, inputs={"src": src}, outputs={"dst": dst}, retry=RetryPolicy(max_attempts=2, backoff=0)
    )
    pipeline = Pipeline([task])
    assert direct_lane(task, pipeline.hooks)
    summary = await pipeline.run()
    assert (summary.succeeded, summary.failed) == (2, 1)
    assert sorted(calls) == ["broken", "broken", "flaky", "flaky", "ok"]
    flaky, broken = await task.done.get("flaky"), await task.done.get("broken")
    assert flaky["success"] and flaky["attempts"] == 2
    assert not broken["success"] and broken["attempts"] == 2
    assert broken["error"]["message"] == "no luck with broken"
    assert await dst.keys() == {"ok", "flaky"}  # the failed job's partial output is gone
    assert await task.live.keys() == set()
    assert pipeline.scheduler.metrics.tasks["t"].retries == 2


async def test_a_call_under_way_holds_its_claim_and_shows_as_running() -> None:
    src = MemoryBlobRepository({k: b"x" for k in KEYS[:40]})
    dst = MemoryBlobRepository()
    seen: list[tuple[bool, bool, JobState | None]] = []
    holder: dict[str, Pipeline] = {}

    async def work(key: str, dst: Any) -> None:
        task = holder["p"].tasks["t"]
        state = holder["p"].scheduler.states.get(("t", key))
        seen.append((await task.live.contains(key), key in task.running_jobs, state))
        await dst.write_bytes(key, b"y")

    task = FunctionTask("t", work, inputs={"src": src}, outputs={"dst": dst}, concurrency=3)
    pipeline = holder["p"] = Pipeline([task])
    summary = await pipeline.run()
    assert summary.succeeded == 40
    assert seen == [(True, True, JobState.RUNNING)] * 40
    claim_free = await task.live.keys()
    assert claim_free == set() and task.running_jobs == {}


async def test_a_cancelled_run_leaves_no_claim_output_or_record_of_the_call_under_way() -> None:
    src = MemoryBlobRepository({k: b"x" for k in KEYS[:20]})
    dst = MemoryBlobRepository()
    stuck = asyncio.Event()

    async def work(key: str, dst: Any) -> None:
        await dst.write_bytes(key, b"partial" if key == "k010" else b"y")
        if key == "k010":
            stuck.set()
            await asyncio.sleep(3600)

    task = FunctionTask("t", work, inputs={"src": src}, outputs={"dst": dst}, concurrency=1)
    pipeline = Pipeline([task])
    run = asyncio.create_task(pipeline.run())
    await asyncio.wait_for(stuck.wait(), 30)
    run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await run
    done = await task.done.keys()
    assert "k010" not in done and "k010" not in await dst.keys()
    assert await task.live.keys() == set()
    # what ended before the cancellation stays, each with its output
    assert done and done <= await dst.keys()


async def test_a_hook_on_job_events_or_a_time_limit_keeps_the_general_path() -> None:
    src, dst = MemoryBlobRepository({"a": b"1"}), MemoryBlobRepository()

    async def work(key: str, dst: Any) -> None:
        await dst.write_bytes(key, b"2")

    events: list[str] = []
    task = FunctionTask("t", work, inputs={"src": src}, outputs={"dst": dst})
    pipeline = Pipeline([task])
    pipeline.hooks.on("job_started", lambda event: events.append(event.name))
    assert not direct_lane(task, pipeline.hooks)
    timed = FunctionTask("u", work, inputs={"src": src}, outputs={"dst": MemoryBlobRepository()}, timeout=5)
    assert not direct_lane(timed, Pipeline([timed]).hooks)
    await pipeline.run()
    assert events == ["job_started"]


async def test_a_worker_takes_its_keys_from_the_queue_of_the_last_tick(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A tick while the workers run replaces the ready queues: a worker goes on with the new
    one, not with the one it started from (else keys listed again by the tick were taken
    twice, the second time finding their own record: a wasted claim and a log line saying
    another scheduler holds them)."""
    keys = [f"k{i:04d}" for i in range(800)]
    src, mid, out = (
        MemoryBlobRepository({k: b"x" for k in keys}),
        MemoryBlobRepository(),
        MemoryBlobRepository(),
    )

    async def first(key: str, src: Any, mid: Any) -> None:
        await asyncio.sleep(0.001)  # long enough for the chained pipeline to list again meanwhile
        await mid.write_bytes(key, await src.read_bytes(key))

    async def second(key: str, mid: Any, out: Any) -> None:
        await asyncio.sleep(0.001)
        await out.write_bytes(key, await mid.read_bytes(key))

    a = FunctionTask("a", first, inputs={"src": src}, outputs={"mid": mid}, concurrency=4)
    b = FunctionTask("b", second, inputs={"mid": mid}, outputs={"out": out}, concurrency=4)
    pipeline = Pipeline([a, b])
    assert direct_lane(a, pipeline.hooks) and direct_lane(b, pipeline.hooks)
    caplog.set_level("INFO", logger="pydatatask.scheduler")
    summary = await pipeline.run()
    assert summary.succeeded == 2 * len(keys)
    assert pipeline.scheduler.ticks >= 4  # (the ticks under way that the test is about)
    assert await out.keys() == set(keys)
    taken_twice = [r.getMessage() for r in caplog.records if "claimed by another scheduler" in r.getMessage()]
    assert taken_twice == []
