"""An async function task on the in-loop executor: the lifecycle awaits the call itself
(``Task.direct_call``), with the retries, time limits, cancellation, slots and live view of
the executor path; tasks that change what runs keep that path."""

from __future__ import annotations

import asyncio
import datetime
from typing import Any

from pydatatask.executor.base import JobHandle, Slot, Work
from pydatatask.executor.inloop import InLoopExecutor
from pydatatask.repository.memory import MemoryBlobRepository, MemoryMetadataRepository
from pydatatask.task import FunctionTask
from pydatatask.task.base import JobContext
from pydatatask.task.lifecycle import execute
from pydatatask.task.records import utcnow_iso
from pydatatask.task.retry import RetryPolicy


def _repos(keys: list[str]) -> tuple[MemoryBlobRepository, MemoryBlobRepository]:
    return MemoryBlobRepository({k: b"abc" for k in keys}), MemoryBlobRepository()


async def test_a_failed_call_is_cleaned_up_retried_and_recorded() -> None:
    src, dst = _repos(["a", "b"])
    calls: list[str] = []

    async def flaky(key: str, src: Any, dst: Any) -> None:
        calls.append(key)
        await dst.write_bytes(key, b"partial")
        if key == "b" or calls.count(key) == 1:
            raise RuntimeError(f"no luck with {key}")

    task = FunctionTask(
        "up", flaky, inputs={"src": src}, outputs={"dst": dst}, retry=RetryPolicy(max_attempts=2, backoff=0)
    )
    ok = await execute(task, "a")
    assert ok is not None and ok["success"] and ok["attempts"] == 2
    failed = await execute(task, "b")
    assert failed is not None and not failed["success"] and failed["attempts"] == 2
    assert failed["error"]["type"] == "RuntimeError" and failed["error"]["message"] == "no luck with b"
    assert "no luck with b" in failed["error"]["traceback"]
    assert await dst.keys() == {"a"}  # the failed job's partial output was removed
    assert await task.live.keys() == set()
    assert calls == ["a", "a", "b", "b"]


async def test_a_call_past_the_time_limit_fails_with_the_limit_named() -> None:
    src, dst = _repos(["a"])

    async def slow(key: str, dst: Any) -> None:
        await dst.write_bytes(key, b"partial")
        await asyncio.sleep(30)

    task = FunctionTask("up", slow, inputs={"src": src}, outputs={"dst": dst}, timeout=0.05)
    record = await execute(task, "a")
    assert record is not None and not record["success"]
    assert record["error"]["type"] == "pydatatask.errors.JobTimeoutError"
    assert record["error"]["message"] == "task up: job 'a' timed out after 0.05s"
    assert await dst.keys() == set()


async def test_a_cancelled_job_cancels_its_call_and_leaves_nothing() -> None:
    src, dst = _repos(["a"])
    entered = asyncio.Event()
    cancelled = asyncio.Event()

    async def waits(key: str, dst: Any) -> None:
        await dst.write_bytes(key, b"partial")
        entered.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    task = FunctionTask("up", waits, inputs={"src": src}, outputs={"dst": dst})
    job = asyncio.ensure_future(execute(task, "a"))
    await entered.wait()
    assert await task.live.keys() == {"a"}
    job.cancel()
    done, _ = await asyncio.wait({job})
    assert job.cancelled() and cancelled.is_set()
    assert await dst.keys() == set() and await task.live.keys() == set() and await task.done.keys() == set()


async def test_the_running_call_is_the_job_under_way_and_starts_the_record_at_its_claim() -> None:
    src, dst = _repos(["a"])
    seen: dict[str, Any] = {}

    async def look(key: str, dst: Any) -> None:
        job = task.running_jobs[key]
        seen.update(attempt=job.attempt, key=job.key, handle=job.handle)
        seen["claim"] = await task.live.get(key)
        await dst.write_bytes(key, b"x")

    task = FunctionTask("up", look, inputs={"src": src}, outputs={"dst": dst})
    record = await execute(task, "a")
    assert record is not None and record["success"]
    assert seen["attempt"] == 1 and seen["key"] == "a" and seen["handle"] is None
    assert record["start_time"] == seen["claim"]["start_time"]
    assert record["start_time"] == utcnow_iso(seen["claim"]["started"])
    assert "a" not in task.running_jobs


async def test_a_call_without_a_slot_waits_for_room_on_its_executor() -> None:
    keys = ["a", "b", "c"]
    src, dst = _repos(keys)
    running: list[str] = []
    most = 0

    async def one_at_a_time(key: str, dst: Any) -> None:
        nonlocal most
        running.append(key)
        most = max(most, len(running))
        await asyncio.sleep(0.01)
        await dst.write_bytes(key, b"x")
        running.remove(key)

    executor = InLoopExecutor("one", max_jobs=1)
    task = FunctionTask("up", one_at_a_time, inputs={"src": src}, outputs={"dst": dst}, executor=executor)
    records = await asyncio.gather(*(execute(task, k) for k in keys))
    assert all(r is not None and r["success"] for r in records)
    assert most == 1
    assert executor.capacity.jobs == 0  # every slot given back


async def test_a_task_that_prepares_or_starts_its_own_work_keeps_the_executor_path() -> None:
    src, dst = _repos(["a", "b"])
    prepared: list[str] = []
    started: list[str] = []

    async def upper(key: str, src: Any, dst: Any) -> None:
        await dst.write_bytes(key, (await src.read_bytes(key)).upper())

    class Counting(FunctionTask):
        async def prepare(self, job: JobContext) -> Work:
            prepared.append(job.key)
            return await super().prepare(job)

    class Starting(InLoopExecutor):
        async def start(self, work: Work, slot: Slot) -> JobHandle:
            started.append(getattr(work, "job", ("", ""))[1])
            return await super().start(work, slot)

    counting = Counting("c", upper, inputs={"src": src}, outputs={"dst": dst})
    on_own = FunctionTask("s", upper, inputs={"src": src}, outputs={"dst": dst}, executor=Starting("own"))
    assert counting.direct_call(JobContext(counting, "a", 1)) is None
    assert on_own.direct_call(JobContext(on_own, "b", 1)) is None
    assert (await execute(counting, "a") or {}).get("success")
    assert (await execute(on_own, "b") or {}).get("success")
    assert prepared == ["a"] and started == ["b"]
    assert await dst.read_bytes("a") == b"ABC" and await dst.read_bytes("b") == b"ABC"


async def test_the_outputs_of_a_record_follow_a_link_added_after_the_first_job() -> None:
    src, dst = _repos(["a", "b"])
    other = MemoryBlobRepository()

    async def one_output(key: str, dst: Any) -> None:
        await dst.write_bytes(key, b"x")

    task = FunctionTask("up", one_output, inputs={"src": src}, outputs={"dst": dst})
    first = await execute(task, "a")
    assert first is not None and "outputs" not in first  # every output holds the key
    task.link("more", other, "output")
    second = await execute(task, "b")
    assert second is not None and second["outputs"] == ["dst"]


async def test_a_record_read_back_from_memory_equals_the_one_returned() -> None:
    src, dst = _repos(["a"])
    done = MemoryMetadataRepository()

    async def upper(key: str, src: Any, dst: Any) -> None:
        await dst.write_bytes(key, (await src.read_bytes(key)).upper())

    task = FunctionTask("up", upper, inputs={"src": src}, outputs={"dst": dst}, done=done)
    record = await execute(task, "a")
    assert record is not None and await done.get("a") == record


def test_moments_formatted_in_turn_each_keep_their_own_text() -> None:
    moments = [1_700_000_000.25, 1_700_000_000.75, 1_700_000_000.25, 1_700_000_001.0, 1_700_000_000.75]
    for ts in moments:
        expected = datetime.datetime.fromtimestamp(ts, datetime.UTC).isoformat(timespec="microseconds")
        assert utcnow_iso(ts) == expected


async def test_a_job_log_is_written_when_the_call_logged_and_only_then() -> None:
    src, dst = _repos(["a", "b"])
    logs = MemoryBlobRepository()

    async def maybe_logs(key: str, dst: Any, job: JobContext) -> None:
        if key == "a":
            job.log("hello from a")
        await dst.write_bytes(key, b"x")

    task = FunctionTask("up", maybe_logs, inputs={"src": src}, outputs={"dst": dst}, logs=logs)
    assert (await execute(task, "a") or {}).get("success")
    assert (await execute(task, "b") or {}).get("success")
    assert await logs.keys() == {"a"}
    assert "hello from a" in await logs.read_text("a")
