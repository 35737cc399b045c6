"""Batches in one process: settings, a batch on every executor of function calls, partial
failure, retries as a smaller batch, timeouts, cancellation, the scheduler's batches."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from pydatatask import ConfigurationError, FileRepository, MemoryMetadataRepository
from pydatatask.executor import InLoopExecutor, PoolExecutor
from pydatatask.pipeline import Pipeline
from pydatatask.repository.base import BlobRepository, MetadataRepository
from pydatatask.task import BatchOutcome, FanOut, FunctionTask, Hooks, JobState, RetryPolicy
from pydatatask.task.lifecycle import execute_batch

KEYS = [f"k{i:02d}" for i in range(12)]


def double(keys: list[str], src: dict[str, Any]) -> dict[str, Any]:
    """Module level, for process pools: each key's value doubled, with the batch's size."""
    return {k: {"out": {"v": src[k] * 2, "n": len(keys), "pid": os.getpid()}} for k in keys}


def _inputs() -> MemoryMetadataRepository:
    return MemoryMetadataRepository({k: i for i, k in enumerate(KEYS)})


# ---------------------------------------------------------------- settings
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"batch": 0}, "batch must be a whole number of keys >= 1, got 0"),
        ({"batch": "10"}, "batch must be a whole number of keys >= 1, got '10'"),
        ({"batch": True}, "batch must be a whole number of keys >= 1, got True"),
        ({"batch": 2, "group_by": lambda k: k}, "a fan-in task (group_by) cannot take batch=2"),
        ({"batch": 2, "batch_wait": "soon"}, "batch_wait: invalid duration 'soon'"),
        ({"batch": 2, "batch_wait": -1}, "batch_wait: a duration cannot be negative"),
    ],
)
def test_bad_batch_settings_are_one_line_errors(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        FunctionTask(
            "t", double, inputs={"src": _inputs()}, outputs={"out": MemoryMetadataRepository()}, **kwargs
        )
    assert message in str(info.value) and "\n" not in str(info.value)


def test_a_fan_out_task_refuses_batches() -> None:
    with pytest.raises(ConfigurationError, match="a fan-out task cannot take batch=3"):
        FunctionTask(
            "t",
            double,
            inputs={"src": _inputs()},
            outputs={"out": FanOut(MemoryMetadataRepository())},
            batch=3,
        )


def test_batch_wait_takes_durations() -> None:
    task = FunctionTask(
        "t",
        double,
        inputs={"src": _inputs()},
        outputs={"out": MemoryMetadataRepository()},
        batch=4,
        batch_wait="1.5s",
    )
    assert (task.batch, task.batch_wait) == (4, 1.5)
    plain = FunctionTask("p", double, inputs={"src": _inputs()}, outputs={"out": MemoryMetadataRepository()})
    assert (plain.batch, plain.batch_wait) == (1, None)


def test_keys_is_a_parameter_of_batched_functions_only() -> None:
    plain = FunctionTask("p", double, inputs={"src": _inputs()}, outputs={"out": MemoryMetadataRepository()})
    with pytest.raises(ConfigurationError, match="parameter\\(s\\) 'keys'"):
        plain.check_parameters()
    FunctionTask(
        "b", double, inputs={"src": _inputs()}, outputs={"out": MemoryMetadataRepository()}, batch=2
    ).check_parameters()


# ---------------------------------------------------------------- every executor
@pytest.fixture(scope="module")
def thread_pool() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(2) as pool:
        yield pool


@pytest.fixture(scope="module")
def process_pool() -> Iterator[ProcessPoolExecutor]:
    with ProcessPoolExecutor(2) as pool:
        yield pool


@pytest.fixture(scope="module")
def dask_client() -> Iterator[Any]:
    import distributed

    with distributed.Client(
        processes=False, n_workers=1, threads_per_worker=2, dashboard_address=None
    ) as client:
        yield client


@pytest.fixture(params=["loop-threads", "thread-pool", "process-pool", "dask"])
def where(request: pytest.FixtureRequest) -> tuple[str, Any]:
    """An executor of plain function calls (None: the task's own threads in the loop)."""
    if request.param == "loop-threads":
        return request.param, None
    pool = request.getfixturevalue(
        request.param.replace("-", "_") if request.param != "dask" else "dask_client"
    )
    return request.param, PoolExecutor(pool)


async def test_a_plain_function_gets_a_batch_on_every_executor(where: tuple[str, Any]) -> None:
    kind, executor = where
    out = MemoryMetadataRepository()
    task = FunctionTask(
        "double", double, inputs={"src": _inputs()}, outputs={"out": out}, batch=5, executor=executor
    )
    summary = await Pipeline([task]).run()
    assert summary.ok and summary.succeeded == len(KEYS)  # counted per key
    values = await out.get_many(KEYS)
    assert {k: v["v"] for k, v in values.items()} == {k: 2 * i for i, k in enumerate(KEYS)}
    assert sorted(v["n"] for v in values.values()) == [2, 2] + [5] * 10  # batches of 5, 5 and 2
    if kind == "process-pool":
        assert all(v["pid"] != os.getpid() for v in values.values())
    records = await task.done.get_many(KEYS)
    assert all(r["success"] and r["batch"]["size"] == values[k]["n"] for k, r in records.items())
    assert len({r["batch"]["id"] for r in records.values()}) == 3


async def test_an_async_function_gets_the_repositories_and_the_keys() -> None:
    calls: list[list[str]] = []

    async def copy(keys: list[str], src: MetadataRepository, out: MetadataRepository) -> None:
        calls.append(keys)
        for key in keys:
            await out.put(key, await src.get(key))

    out = MemoryMetadataRepository()
    task = FunctionTask("copy", copy, inputs={"src": _inputs()}, outputs={"out": out}, batch=8, concurrency=1)
    assert (await Pipeline([task]).run()).ok
    assert calls == [KEYS[:8], KEYS[8:]]
    assert await out.get_many(KEYS) == {k: i for i, k in enumerate(KEYS)}


# ---------------------------------------------------------------- partial failure
async def test_a_failed_key_loses_only_its_outputs_and_is_retried_alone(tmp_path: Path) -> None:
    calls: list[list[str]] = []

    async def write(keys: list[str], src: MetadataRepository, out: BlobRepository) -> dict[str, Exception]:
        calls.append(keys)
        for key in keys:
            await out.write_bytes(key, b"x")
            await out.write_bytes(f"{key}/extra", b"y")  # beyond its key: journaled, removed too
        return {"k03": ValueError("k03 is bad"), "k07": ValueError("k07 is bad")} if "k03" in keys else {}

    out = FileRepository(tmp_path / "out", ".bin")
    task = FunctionTask(
        "write",
        write,
        inputs={"src": _inputs()},
        outputs={"out": out},
        batch=12,
        retry=RetryPolicy(max_attempts=3, backoff=0),
    )
    states: list[tuple[str, JobState, int]] = []
    records = await execute_batch(task, KEYS, on_state=lambda t, k, s, a: states.append((k, s, a)))
    assert calls == [KEYS, ["k03", "k07"], ["k03", "k07"]]  # the failed keys again, as a smaller batch
    failed = {k for k, r in records.items() if not r["success"]}
    assert failed == {"k03", "k07"}
    assert records["k03"]["attempts"] == 3 and "k03 is bad" in records["k03"]["error"]["message"]
    assert records["k00"]["attempts"] == 1 and records["k00"]["batch"]["size"] == 12
    assert await out.keys() == {k for k in KEYS if k not in failed} | {
        f"{k}/extra" for k in KEYS if k not in failed
    }
    assert (await task.done.get_many(KEYS)).keys() == set(KEYS)
    assert await task.live.keys() == set()
    assert ("k03", JobState.RETRYING, 1) in states and ("k03", JobState.FAILED, 3) in states
    assert ("k00", JobState.SUCCEEDED, 1) in states and ("k00", JobState.RETRYING, 1) not in states


async def test_a_plain_function_fails_a_key_by_an_exception_or_by_leaving_it_out() -> None:
    def pick(keys: list[str], src: dict[str, Any]) -> dict[str, Any]:
        assert len(keys) == 12
        result: dict[str, Any] = {k: {"out": src[k]} for k in keys if k not in ("k01", "k02")}
        result["k01"] = KeyError("no k01 here")
        return result

    out = MemoryMetadataRepository()
    task = FunctionTask("pick", pick, inputs={"src": _inputs()}, outputs={"out": out}, batch=12)
    records = await execute_batch(task, KEYS)
    assert {k for k, r in records.items() if not r["success"]} == {"k01", "k02"}
    assert records["k01"]["error"]["type"] == "KeyError"
    assert "the batched function returned no result for 'k02'" in records["k02"]["error"]["message"]
    assert await out.keys() == set(KEYS) - {"k01", "k02"}


async def test_an_input_that_cannot_be_read_fails_its_key_alone() -> None:
    calls: list[list[str]] = []

    def both(keys: list[str], src: dict[str, Any], more: dict[str, Any]) -> dict[str, Any]:
        calls.append(keys)
        assert sorted(src) == sorted(more) == keys
        return {k: {"out": src[k] + more[k]} for k in keys}

    more = MemoryMetadataRepository({k: 100 for k in KEYS if k != "k05"})
    out = MemoryMetadataRepository()
    task = FunctionTask("both", both, inputs={"src": _inputs(), "more": more}, outputs={"out": out}, batch=12)
    records = await execute_batch(task, KEYS)
    assert calls == [[k for k in KEYS if k != "k05"]]
    assert (
        not records["k05"]["success"]
        and records["k05"]["error"]["type"] == "pydatatask.errors.KeyNotFoundError"
    )
    assert await out.keys() == set(KEYS) - {"k05"}
    # every key unreadable: no call, each key fails with its own error
    gone = FunctionTask("gone", both, inputs={"src": _inputs(), "more": MemoryMetadataRepository()}, batch=12)
    records = await execute_batch(gone, KEYS[:3])
    assert len(calls) == 1
    assert [repr(k) in records[k]["error"]["message"] for k in KEYS[:3]] == [True] * 3


async def test_an_exception_fails_every_key_of_the_batch() -> None:
    def broken(keys: list[str], src: dict[str, Any]) -> dict[str, Any]:
        assert len(keys) == 12
        raise RuntimeError("the whole batch is broken")

    task = FunctionTask(
        "broken", broken, inputs={"src": _inputs()}, outputs={"out": MemoryMetadataRepository()}, batch=12
    )
    records = await execute_batch(task, KEYS)
    assert sorted(records) == KEYS
    assert all(
        not r["success"] and r["error"]["message"] == "the whole batch is broken" for r in records.values()
    )


class FinishSays(FunctionTask):
    """A task whose finish names failed keys itself (as a task kind's finish does)."""

    async def finish(self, job: Any, outcome: Any) -> BatchOutcome:
        await super().finish(job, outcome)
        return BatchOutcome(failed={job.keys[-1]: OSError("the last one")}, extra={"note": len(job.keys)})


async def test_finish_may_return_a_batch_outcome() -> None:
    async def nothing(keys: list[str]) -> None:
        return None

    task = FinishSays("says", nothing, inputs={"src": _inputs()}, batch=12)
    records = await execute_batch(task, KEYS)
    assert not records["k11"]["success"] and records["k11"]["error"]["type"] == "OSError"
    assert all(records[k]["success"] and records[k]["note"] == 12 for k in KEYS[:-1])


# ---------------------------------------------------------------- time limit, cancellation
async def test_a_batch_that_times_out_fails_every_key_and_leaves_no_output() -> None:
    async def slow(keys: list[str], out: MetadataRepository) -> None:
        for key in keys:
            await out.put(key, 1)
        await asyncio.sleep(30)

    out = MemoryMetadataRepository()
    task = FunctionTask("slow", slow, inputs={"src": _inputs()}, outputs={"out": out}, batch=12, timeout=0.2)
    records = await execute_batch(task, KEYS)
    assert sorted(records) == KEYS
    for record in records.values():
        assert not record["success"] and record["error"]["type"] == "pydatatask.errors.JobTimeoutError"
        assert "batch of 12 keys from 'k00' timed out after 0.2s" in record["error"]["message"]
    assert await out.keys() == set()


async def test_a_cancelled_batch_removes_every_partial_output_and_claim(tmp_path: Path) -> None:
    started = asyncio.Event()

    async def stuck(keys: list[str], out: BlobRepository) -> None:
        for key in keys:
            await out.write_bytes(key, b"partial")
        started.set()
        await asyncio.sleep(30)

    out = FileRepository(tmp_path / "out", ".bin")
    task = FunctionTask("stuck", stuck, inputs={"src": _inputs()}, outputs={"out": out}, batch=12)
    run = asyncio.create_task(execute_batch(task, KEYS))
    await started.wait()
    assert await out.keys() == set(KEYS) and await task.live.keys() == set(KEYS)
    run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await run
    assert await out.keys() == set() and await task.live.keys() == set() and await task.done.keys() == set()


# ---------------------------------------------------------------- claims
async def test_keys_claimed_elsewhere_or_done_leave_the_batch() -> None:
    calls: list[list[str]] = []

    def double_seen(keys: list[str], src: dict[str, Any]) -> dict[str, Any]:
        calls.append(keys)
        return double(keys, src)

    task = FunctionTask(
        "double",
        double_seen,
        inputs={"src": _inputs()},
        outputs={"out": MemoryMetadataRepository()},
        batch=12,
    )
    await task.live.put("k01", {"owner": "someone else"})
    await task.done.put("k02", {"success": True})
    records = await execute_batch(task, KEYS)
    assert calls == [[k for k in KEYS if k not in ("k01", "k02")]]
    assert sorted(records) == [k for k in KEYS if k not in ("k01", "k02")]
    assert await task.live.keys() == {"k01"}  # the other's claim stays; the done key's went
    assert await execute_batch(task, ["k01", "k02"]) == {}


async def test_a_key_whose_claim_is_taken_over_meanwhile_leaves_the_batch() -> None:
    async def work(keys: list[str], job: Any, out: MetadataRepository) -> dict[str, Exception]:
        # another scheduler took the claim on k05 over: this one learns it at its next update
        claims = job.task.claims
        await job.task.live.put("k05", {"owner": "the other scheduler"})
        assert not await claims.update(claims.get("k05"))
        for key in keys:
            if key != "k05":
                await out.put(key, 1)
        return {"k05": RuntimeError("not ours any more"), "k06": RuntimeError("bad")}

    out = MemoryMetadataRepository()
    task = FunctionTask("work", work, inputs={"src": _inputs()}, outputs={"out": out}, batch=12)
    records = await execute_batch(task, KEYS)
    assert "k05" not in records and not records["k06"]["success"]
    assert sorted(k for k, r in records.items() if r["success"]) == [
        k for k in KEYS if k not in ("k05", "k06")
    ]
    assert await task.live.get_many(["k05"]) == {"k05": {"owner": "the other scheduler"}}
    assert await task.live.keys() == {"k05"} and "k05" not in await task.done.keys()


async def test_claims_of_a_batch_name_it_and_hooks_run_per_key() -> None:
    seen: dict[str, Any] = {}
    hooks = Hooks()
    ended: list[str] = []
    hooks.on("job_succeeded", lambda e: ended.append(e.key))

    async def look(keys: list[str], job: Any) -> None:
        seen.update(await job.task.live.get_many(keys))
        seen["job"] = (job.key, list(job.keys), job.batched)

    task = FunctionTask("look", look, inputs={"src": _inputs()}, batch=12)
    await execute_batch(task, KEYS, hooks=hooks)
    assert seen.pop("job") == ("k00", KEYS, True)
    assert sorted(seen) == KEYS and len({c["batch"] for c in seen.values()}) == 1
    assert ended == KEYS


# ---------------------------------------------------------------- the scheduler
async def test_the_scheduler_counts_keys_and_max_jobs_counts_batches() -> None:
    sizes: list[int] = []
    running: list[int] = []

    async def work(keys: list[str], out: MetadataRepository) -> None:
        sizes.append(len(keys))
        running.append(len(keys))
        await asyncio.sleep(0.01)
        for key in keys:
            await out.put(key, 1)
        running.remove(len(keys))

    src = MemoryMetadataRepository({f"k{i:03d}": i for i in range(100)})
    out = MemoryMetadataRepository()
    task = FunctionTask("work", work, inputs={"src": src}, outputs={"out": out}, batch=20, concurrency=3)
    progress: list[int] = []
    pipeline = Pipeline([task], max_jobs=2)
    summary = await pipeline.run(on_progress=lambda s: progress.append(len(s.running)))
    assert summary.ok and summary.succeeded == 100 and summary.per_task["work"]["succeeded"] == 100
    assert sizes == [20] * 5
    assert max(progress) == 40  # two batches at once (max_jobs), their keys shown running
    assert len(await out.keys()) == 100


async def test_batch_wait_lets_a_batch_fill_from_upstream() -> None:
    sizes: list[int] = []

    async def produce(key: str, src: MetadataRepository, mid: MetadataRepository) -> None:
        await mid.put(key, await src.get(key))

    async def consume(keys: list[str], mid: MetadataRepository, out: MetadataRepository) -> None:
        sizes.append(len(keys))
        for key in keys:
            await out.put(key, await mid.get(key))

    src = MemoryMetadataRepository({f"k{i:02d}": i for i in range(20)})
    mid, out = MemoryMetadataRepository(), MemoryMetadataRepository()
    up = FunctionTask("up", produce, inputs={"src": src}, outputs={"mid": mid}, concurrency=1)
    down = FunctionTask("down", consume, inputs={"mid": mid}, outputs={"out": out}, batch=10, batch_wait=30)
    assert (await Pipeline([up, down]).run()).ok
    assert sizes == [10, 10]  # never launched with the first key or two that were ready
    assert len(await out.keys()) == 20


async def test_an_unbatched_job_sees_its_key_as_its_keys() -> None:
    seen: list[Any] = []

    async def look(key: str, job: Any) -> None:
        seen.append((key, job.keys, job.batched))

    task = FunctionTask(
        "look", look, inputs={"src": MemoryMetadataRepository({"a": 1})}, executor=InLoopExecutor()
    )
    assert (await Pipeline([task]).run()).ok
    assert seen == [("a", ["a"], False)]


class _ReleaseWatch(MemoryMetadataRepository):
    """Claims in memory (a subclass: every step of the claims protocol), noting which keys
    the scheduler's records index did not know when their claims were released."""

    def __init__(self) -> None:
        super().__init__()
        self.scheduler: Any = None
        self.unknown: list[str] = []
        self.released: list[str] = []

    def _watch(self, keys: list[str]) -> None:
        index = self.scheduler.records["work"]
        self.released += keys
        self.unknown += [k for k in keys if k not in index.success]

    async def delete(self, key: str) -> None:
        self._watch([key])
        await super().delete(key)

    async def delete_many(self, keys: Any) -> None:
        self._watch(list(keys))
        await super().delete_many(keys)


async def test_the_records_of_a_batch_are_known_to_the_scheduler_before_its_claims_go() -> None:
    # a tick that lists done between a batch's records and the release of its claims must
    # not read those records back (one GetObject per key in a bucket)
    async def work(keys: list[str], out: MetadataRepository) -> None:
        for key in keys:
            await out.put(key, 1)

    live = _ReleaseWatch()
    src = MemoryMetadataRepository({f"k{i:03d}": i for i in range(30)})
    out = MemoryMetadataRepository()
    task = FunctionTask("work", work, inputs={"src": src}, outputs={"out": out}, batch=10, live=live)

    def seen(scheduler: Any) -> None:
        live.scheduler = scheduler

    summary = await Pipeline([task]).run(on_progress=seen)
    assert summary.ok and summary.succeeded == 30, summary
    assert sorted(live.released) == sorted(await src.keys())
    assert live.unknown == []
