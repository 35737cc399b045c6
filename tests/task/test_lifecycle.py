"""The one job lifecycle (``pydatatask.task.lifecycle``) driving an executor: a task kind
that only prepares work items and finishes them, on an executor whose work outlives its
scheduler (as processes on a host or pods do), written here against the contract."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from pydatatask.executor.base import Executor, JobHandle, Outcome, Resources, Slot, Work
from pydatatask.pipeline import Pipeline
from pydatatask.repository.memory import MemoryMetadataRepository
from pydatatask.repository.serialized import YamlMetadataFileRepository
from pydatatask.task.base import JobContext, JobOutcome, Task
from pydatatask.task.records import make_claim

CANCEL_GRACE = 10.0  # Task.cancel_grace of a task kind that keeps the default


@dataclass(frozen=True)
class Step(Work):
    """Run for ``seconds`` (after ``queued`` seconds of waiting for a worker) and give
    ``value``, or fail with ``error``."""

    kind: ClassVar[str] = "step"

    key: str
    seconds: float = 0.0
    queued: float = 0.0
    value: Any = None
    error: str | None = None


class StepHandle(JobHandle):
    adoptable = False

    def __init__(self, executor: StepExecutor, ident: str, work: Step) -> None:
        self.info = {"step": ident}
        self.executor = executor
        self.ident = ident
        self.work = work
        self.cancelled_with: float | None = None
        self.closed = 0
        self._started = asyncio.Event()
        self._task = asyncio.ensure_future(self._run())

    async def _run(self) -> Outcome:
        await asyncio.sleep(self.work.queued)
        self._started.set()
        await asyncio.sleep(self.work.seconds)
        if self.work.error:
            return Outcome(exit_code=3, error=RuntimeError(self.work.error), place="steps")
        return Outcome(exit_code=0, result=self.work.value, place="steps")

    async def started(self) -> None:
        await self._started.wait()

    async def wait(self) -> Outcome:
        return await asyncio.shield(self._task)

    async def cancel(self, grace: float) -> None:
        self.cancelled_with = grace
        self._task.cancel()
        await asyncio.wait({self._task})

    async def logs(self) -> bytes:
        return f"step {self.ident} printed this\n".encode()

    async def close(self) -> None:
        self.closed += 1
        self.executor.alive.pop(self.ident, None)


class StepExecutor(Executor):
    """Work that lives on in ``alive`` (shared by every StepExecutor, like a host's
    processes) until it is closed."""

    carries = frozenset({Step})
    alive: ClassVar[dict[str, StepHandle]] = {}

    def __init__(self) -> None:
        super().__init__("steps")
        self.handles: list[StepHandle] = []

    async def start(self, work: Work, slot: Slot) -> JobHandle:
        assert isinstance(work, Step) and slot.executor is self
        handle = StepHandle(self, f"{work.key}-{len(self.handles)}", work)
        self.handles.append(handle)
        StepExecutor.alive[handle.ident] = handle
        return handle

    async def recover(self, info: Mapping[str, Any]) -> JobHandle | None:
        return StepExecutor.alive.get(str(info.get("step")))


class StepTask(Task):
    """A task kind of the new shape: prepare, finish; nothing else."""

    def __init__(self, name: str, executor: StepExecutor, **kwargs: Any) -> None:
        self._executor = executor
        self.steps: dict[str, dict[str, Any]] = {}
        self.seen_claims: list[Any] = []
        super().__init__(name, **kwargs)

    @property
    def executor(self) -> Executor:
        return self._executor

    @property
    def resources(self) -> Resources:
        return Resources(cpu=1.0)

    async def prepare(self, job: JobContext) -> Work:
        return Step(job.key, **self.steps.get(job.key, {}))

    async def finish(self, job: JobContext, outcome: Outcome) -> JobOutcome | None:
        self.seen_claims.append(await self.live.get(job.key))
        if outcome.error is not None:
            raise outcome.error
        await self.links["out"].repository.put(job.key, outcome.result)  # type: ignore[attr-defined]
        return JobOutcome(exit_code=outcome.exit_code, host=outcome.place)


def _task(tmp_path: Path, keys: list[str], **kwargs: Any) -> tuple[StepTask, MemoryMetadataRepository]:
    src = MemoryMetadataRepository({k: 1 for k in keys})
    out = MemoryMetadataRepository()
    live = YamlMetadataFileRepository(tmp_path / "live", fsync=False)  # claims outlive the process
    task = StepTask("steps", StepExecutor(), inputs={"src": src}, outputs={"out": out}, live=live, **kwargs)
    return task, out


async def test_the_claim_notes_the_run_before_the_work_ends(tmp_path: Path) -> None:
    task, out = _task(tmp_path, ["a"])
    task.steps["a"] = {"value": "A"}
    summary = await Pipeline([task]).run()
    assert summary.ok and await out.get("a") == "A"
    claim = task.seen_claims[0]
    assert claim["run"] == {"step": "a-0"}  # stored in the claim while the work ran
    record = await task.done.get("a")
    assert record["success"] and record["exit_code"] == 0 and record["host"] == "steps"
    handle = task._executor.handles[0]
    assert handle.closed >= 1 and handle.cancelled_with is None
    assert not await task.live.contains("a")


async def test_the_time_limit_counts_from_started(tmp_path: Path) -> None:
    task, out = _task(tmp_path, ["a"], timeout="1s")
    task.steps["a"] = {"queued": 1.2, "seconds": 0.05, "value": "A"}  # a long queue, a short run
    summary = await Pipeline([task]).run()
    assert summary.ok, await task.done.get("a")
    assert await out.get("a") == "A"


async def test_a_timeout_cancels_the_handle_with_grace(tmp_path: Path) -> None:
    task, out = _task(tmp_path, ["a"], timeout="100ms")
    task.steps["a"] = {"seconds": 30}
    summary = await Pipeline([task]).run()
    assert summary.failed == 1 and not await out.contains("a")
    record = await task.done.get("a")
    assert record["error"]["type"] == "pydatatask.errors.JobTimeoutError"
    handle = task._executor.handles[0]
    assert handle.cancelled_with == CANCEL_GRACE and handle.closed >= 1
    assert "a-0" not in StepExecutor.alive


async def test_a_failed_finish_fails_the_attempt_and_the_log_keeps_what_it_printed(tmp_path: Path) -> None:
    from pydatatask.repository.memory import MemoryBlobRepository

    logs = MemoryBlobRepository()
    task, out = _task(tmp_path, ["a"], logs=logs)
    task.steps["a"] = {"error": "bad input"}
    summary = await Pipeline([task]).run()
    assert summary.failed == 1
    record = await task.done.get("a")
    assert record["error"]["message"] == "bad input" and not await out.contains("a")
    assert "step a-0 printed this" in await logs.read_text("a")


async def test_ctrl_c_cancels_the_handle_and_writes_no_record(tmp_path: Path) -> None:
    task, out = _task(tmp_path, ["a"])
    task.steps["a"] = {"seconds": 30}
    pipeline = Pipeline([task])
    run = asyncio.create_task(pipeline.run(grace="50ms"))
    for _ in range(200):
        if task._executor.handles:
            break
        await asyncio.sleep(0.01)
    pipeline.scheduler.request_stop()
    summary = await run
    assert summary.interrupted
    assert not await task.done.contains("a") and not await task.live.contains("a")
    assert task._executor.handles[0].cancelled_with == CANCEL_GRACE


async def test_recovery_stops_what_a_dead_scheduler_left_and_runs_the_key_again(tmp_path: Path) -> None:
    task, out = _task(tmp_path, ["a"])
    # a scheduler died while its work of "a" ran: the work is still alive, its claim stale
    orphan_executor = StepExecutor()
    orphan = await orphan_executor.start(Step("a", seconds=30), Slot(orphan_executor, Resources(), "steps"))
    assert isinstance(orphan, StepHandle)
    await out.put("a", "partial")
    await task.live.put("a", dict(make_claim("dead", "steps", "a", time.time() - 600), run=orphan.info))
    task.steps["a"] = {"value": "A"}
    summary = await Pipeline([task]).run()
    assert summary.ok, summary
    assert orphan.cancelled_with == CANCEL_GRACE and orphan.closed >= 1
    assert await out.get("a") == "A" and (await task.done.get("a"))["success"]


async def test_slots_come_from_the_executor_for_the_tasks_resources(tmp_path: Path) -> None:
    class Quota(StepExecutor):
        def __init__(self) -> None:
            super().__init__()
            self.given: list[Slot] = []
            self.back: list[Slot] = []

        def acquire(self, resources: Resources) -> Slot | None:
            if len(self.given) - len(self.back) >= 1:
                return None
            slot = Slot(self, resources, "steps")
            self.given.append(slot)
            return slot

        def release(self, slot: Slot) -> None:
            self.back.append(slot)

    src = MemoryMetadataRepository({f"k{i}": 1 for i in range(5)})
    out = MemoryMetadataRepository()
    quota = Quota()
    task = StepTask("steps", quota, inputs={"src": src}, outputs={"out": out}, concurrency=5)
    for i in range(5):
        task.steps[f"k{i}"] = {"seconds": 0.01, "value": i}
    summary = await Pipeline([task]).run()
    assert summary.ok and summary.succeeded == 5
    assert len(quota.given) == 5 and quota.back == quota.given  # one at a time, all given back
    assert all(s.resources == Resources(cpu=1.0) for s in quota.given)


# ---------------------------------------------------------------------------- adoption
class AdoptingStepExecutor(StepExecutor):
    """Steps whose outcome a later scheduler can still wait for (as pods are)."""

    async def recover(self, info: Mapping[str, Any]) -> JobHandle | None:
        handle = StepExecutor.alive.get(str(info.get("step")))
        if handle is not None:
            handle.adoptable = True
        return handle

    async def jobs(self, task: str) -> Mapping[str, dict[str, Any]]:
        return {h.work.key: h.info for h in StepExecutor.alive.values() if h.ident.startswith("orphan-")}


async def _orphan(key: str, **step: Any) -> StepHandle:
    """Work of ``key`` that a dead scheduler started."""
    dead = StepExecutor()
    handle = StepHandle(dead, f"orphan-{key}", Step(key, **step))
    StepExecutor.alive[handle.ident] = handle
    return handle


def _adopting(tmp_path: Path, keys: list[str], live: Any = None, **kwargs: Any) -> tuple[StepTask, Any]:
    src = MemoryMetadataRepository({k: 1 for k in keys})
    out = MemoryMetadataRepository()
    live = live if live is not None else YamlMetadataFileRepository(tmp_path / "live", fsync=False)
    task = StepTask(
        "steps", AdoptingStepExecutor(), inputs={"src": src}, outputs={"out": out}, live=live, **kwargs
    )
    return task, out


async def test_adoptable_work_of_a_dead_scheduler_is_waited_for_not_started_again(tmp_path: Path) -> None:
    task, out = _adopting(tmp_path, ["a", "b"])
    orphan = await _orphan("a", seconds=0.2, value="from the orphan")
    began = time.time() - 600
    dead = dict(make_claim("dead", "steps", "a", began), run=orphan.info, run_at=time.time(), attempt=1)
    await task.live.put("a", dead)
    task.steps["b"] = {"value": "B"}
    summary = await Pipeline([task]).run()
    assert summary.ok and summary.succeeded == 2, summary
    assert await out.get("a") == "from the orphan"  # its outcome, finished by this scheduler
    assert [h.work.key for h in task._executor.handles] == ["b"]  # "a" was not started again
    assert orphan.cancelled_with is None and orphan.closed >= 1
    record = await task.done.get("a")
    assert record["success"] and record["attempts"] == 1 and record["host"] == "steps"
    assert record["duration"] >= 600  # the job began with the dead scheduler's claim
    assert not await task.live.contains("a")


async def test_an_adopted_attempt_keeps_the_time_limit_of_its_start(tmp_path: Path) -> None:
    task, out = _adopting(tmp_path, ["a"], timeout="3s")
    orphan = await _orphan("a", seconds=2, value="late")
    claim = dict(
        make_claim("dead", "steps", "a", time.time() - 600), run=orphan.info, run_at=time.time() - 600
    )
    await task.live.put("a", claim)
    summary = await Pipeline([task]).run()
    assert summary.failed == 1, summary  # started 10 minutes ago: its 3 seconds are over
    record = await task.done.get("a")
    assert record["error"]["type"] == "pydatatask.errors.JobTimeoutError"
    assert orphan.cancelled_with == CANCEL_GRACE and not await out.contains("a")
    assert task._executor.handles == []


async def test_a_failed_adopted_attempt_is_retried_as_the_next_attempt(tmp_path: Path) -> None:
    from pydatatask.task.retry import RetryPolicy

    task, out = _adopting(tmp_path, ["a"], retry=RetryPolicy(max_attempts=3, backoff=0.01))
    orphan = await _orphan("a", seconds=0.05, error="the orphan failed")
    await out.put("a", "partial")
    claim = dict(
        make_claim("dead", "steps", "a", time.time() - 600), run=orphan.info, run_at=time.time(), attempt=2
    )
    await task.live.put("a", claim)
    task.steps["a"] = {"value": "A"}
    summary = await Pipeline([task]).run()
    assert summary.ok, summary
    record = await task.done.get("a")
    assert record["success"] and record["attempts"] == 3  # the adopted one was attempt 2
    assert await out.get("a") == "A" and len(task._executor.handles) == 1
    assert orphan.closed >= 1


async def test_work_its_stale_claim_does_not_name_is_adopted_not_started_again(tmp_path: Path) -> None:
    """A scheduler killed after it started the work of "a" and before the claim noted it:
    the stale claim names no work, the executor still runs it. The takeover finds the work
    in the executor's list and adopts it; freeing the key instead started the job a second
    time beside the first (with pods: the first wrote its output after the cleanup, and the
    key was never run again)."""
    task, out = _adopting(tmp_path, ["a"])
    orphan = await _orphan("a", seconds=0.2, value="from the orphan")
    await task.live.put("a", make_claim("dead", "steps", "a", time.time() - 600))
    task.steps["a"] = {"value": "started again"}
    summary = await Pipeline([task]).run()
    assert summary.ok and summary.succeeded == 1, summary
    assert await out.get("a") == "from the orphan"
    assert task._executor.handles == []  # not started again
    assert orphan.cancelled_with is None and orphan.closed >= 1
    record = await task.done.get("a")
    assert record["success"] and record["attempts"] == 1
    assert not await task.live.contains("a")


async def test_the_next_attempt_its_stale_claim_does_not_name_yet_is_adopted_as_such(tmp_path: Path) -> None:
    """Killed between starting attempt 2 and noting it: the claim names attempt 1's work,
    which is gone; the work the executor still runs is adopted as attempt 2, its time limit
    counted from the takeover (when it began is not known)."""
    from pydatatask.task.retry import RetryPolicy

    retry = RetryPolicy(max_attempts=3, backoff=0.01)
    task, out = _adopting(tmp_path, ["a"], retry=retry, timeout="60s")
    orphan = await _orphan("a", seconds=0.2, value="from attempt 2")
    claim = dict(
        make_claim("dead", "steps", "a", time.time() - 600), run={"step": "gone"}, run_at=0.0, attempt=1
    )
    await task.live.put("a", claim)
    summary = await Pipeline([task]).run()
    assert summary.ok and summary.succeeded == 1, summary
    assert await out.get("a") == "from attempt 2" and task._executor.handles == []
    assert (await task.done.get("a"))["attempts"] == 2
    assert orphan.cancelled_with is None and orphan.closed >= 1


async def test_orphaned_work_no_claim_names_is_adopted_within_capacity(tmp_path: Path) -> None:
    """Claims in memory (gone with their scheduler): the executor's own list finds the
    work; its adoption takes a slot of the executor like a launched job."""

    class OneAtATime(AdoptingStepExecutor):
        def __init__(self) -> None:
            super().__init__()
            self.out: list[Slot] = []
            self.most = 0

        def acquire(self, resources: Resources) -> Slot | None:
            if self.out:
                return None
            slot = Slot(self, resources, "steps")
            self.out.append(slot)
            self.most = max(self.most, len(self.out))
            return slot

        def release(self, slot: Slot) -> None:
            self.out.remove(slot)

    src = MemoryMetadataRepository({"a": 1, "b": 1})
    out = MemoryMetadataRepository()
    await out.put("a", "written by the orphan before the kill")  # not ready: only the executor knows
    executor = OneAtATime()
    task = StepTask("steps", executor, inputs={"src": src}, outputs={"out": out}, concurrency=4)
    orphan = await _orphan("a", seconds=0.1, value="from the orphan")
    task.steps["b"] = {"value": "B", "seconds": 0.05}
    summary = await Pipeline([task]).run()
    assert summary.ok and summary.succeeded == 2, summary
    assert await out.get("a") == "from the orphan" and await out.get("b") == "B"
    assert [h.work.key for h in executor.handles] == ["b"] and orphan.closed >= 1
    assert executor.most == 1 and executor.out == []  # the adoption held the one slot in its turn
    assert (await task.done.get("a"))["success"]


async def test_an_adoption_whose_claim_was_taken_over_leaves_the_work_alone(tmp_path: Path) -> None:
    from pydatatask.task.claims import Claims
    from pydatatask.task.lifecycle import execute
    from pydatatask.task.recovery import recover

    task, out = _adopting(tmp_path, ["a"])
    orphan = await _orphan("a", seconds=30)
    stale = dict(make_claim("dead", "steps", "a", time.time() - 600), run=orphan.info)
    await task.live.put("a", stale)
    adoption = await recover(task, "a", stale)
    assert adoption is not None and adoption.handle is orphan and adoption.key == "a"
    # while it waits for a slot, another scheduler takes the claim over
    assert await Claims(task.live, "steps").take_over("a", adoption.claim.value) is not None
    assert not await task.claims.heartbeat(adoption.claim)
    assert await execute(task, "a", adopt=adoption) is None
    assert orphan.cancelled_with is None and orphan.closed == 0  # the new holder's now
    assert not await task.done.contains("a") and not await out.contains("a")
    await orphan.cancel(0)
    await orphan.close()
