"""The ready rule, success gating, records, retries, cleanup, hooks, limits."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from pydatatask import (
    AndRepository,
    ConfigurationError,
    FileRepository,
    MemoryBlobRepository,
    MemoryMetadataRepository,
    YamlMetadataFileRepository,
)
from pydatatask.executor import PoolExecutor
from pydatatask.pipeline import Pipeline
from pydatatask.repository.base import MetadataRepository
from pydatatask.task import Event, FunctionTask, Hooks, JobState, RetryPolicy
from tests.counting import CountingMetadata


async def copy(key: str, src: MetadataRepository, dst: MetadataRepository) -> None:
    await dst.put(key, await src.get(key))


async def test_ready_rule_chain_and_fan_in() -> None:
    a = MemoryMetadataRepository({k: k for k in ("1", "2", "3")})
    b = MemoryMetadataRepository({k: k for k in ("2", "3", "4")})
    ab = MemoryMetadataRepository()
    out = MemoryMetadataRepository()

    async def join(key: str, a: Any, b: Any, ab: Any) -> None:
        await ab.put(key, [await a.get(key), await b.get(key)])

    t1 = FunctionTask("join", join, inputs={"a": a, "b": b}, outputs={"ab": ab})
    t2 = FunctionTask("copy", copy, inputs={"src": ab}, outputs={"dst": out})
    pipeline = Pipeline([t2, t1])
    views = await pipeline.figures()
    assert views["join"].ready == {"2", "3"}
    assert views["copy"].ready == set()
    summary = await pipeline.run()
    assert summary.ok and summary.succeeded == 4
    assert await out.get_many(["1", "2", "3", "4"]) == {"2": ["2", "2"], "3": ["3", "3"]}
    # nothing left: a rerun does nothing
    again = await pipeline.run()
    assert again.succeeded == 0 and again.ok
    assert pipeline.graph.upstream["copy"] == ["join"]


async def test_one_listing_per_repository_per_tick() -> None:
    shared = CountingMetadata({f"k{i}": i for i in range(50)})
    outs = [MemoryMetadataRepository() for _ in range(3)]
    tasks = [
        FunctionTask(f"t{i}", copy, inputs={"src": shared}, outputs={"dst": outs[i]}, concurrency=100)
        for i in range(3)
    ]
    # a view over the shared repository is listed through the same tick cache
    view_task = FunctionTask(
        "view",
        copy,
        inputs={"src": AndRepository(shared, shared)},
        outputs={"dst": MemoryMetadataRepository()},
    )
    pipeline = Pipeline([*tasks, view_task])
    with_ticks = pipeline.run()
    summary = await with_ticks
    assert summary.succeeded == 200
    # once in each tick that listed it (not once per task or view), never more often
    assert 1 <= shared.listings == pipeline.scheduler.known.listings(shared) <= pipeline.scheduler.ticks


async def test_unchained_run_lists_only_when_its_queue_runs_dry() -> None:
    """No periodic re-listing while work is queued when no task reads another's outputs
    (it would find nothing new to start and cost every backend a listing per interval);
    a chained pipeline re-lists while running so the downstream task starts early."""

    async def slow_copy(key: str, src: MetadataRepository, dst: MetadataRepository) -> None:
        await asyncio.sleep(0.01)
        await dst.put(key, await src.get(key))

    src = CountingMetadata({f"k{i:03d}": i for i in range(120)})
    one = FunctionTask(
        "one", slow_copy, inputs={"src": src}, outputs={"dst": MemoryMetadataRepository()}, concurrency=4
    )
    pipeline = Pipeline([one], poll_interval="0.05s")
    t0 = time.monotonic()
    summary = await pipeline.run()
    assert summary.succeeded == 120
    assert time.monotonic() - t0 > 0.2  # long enough for several re-listings had they been due
    # at the start, then when all is done (a tick from what is known finds nothing left first)
    assert src.listings == pipeline.scheduler.known.listings(src) == 2

    src2 = CountingMetadata({f"k{i:03d}": i for i in range(120)})
    mid, end = MemoryMetadataRepository(), MemoryMetadataRepository()
    first = FunctionTask("first", slow_copy, inputs={"src": src2}, outputs={"dst": mid}, concurrency=4)
    second = FunctionTask("second", slow_copy, inputs={"src": mid}, outputs={"dst": end}, concurrency=4)
    chained = Pipeline([first, second], poll_interval="0.05s")
    summary = await chained.run()
    assert summary.succeeded == 240
    assert chained.scheduler.ticks > 3  # re-listed while the first task's queue was not dry


async def test_downstream_waits_for_upstream_success_record() -> None:
    src = MemoryMetadataRepository({"good": 1, "bad": 2, "slow": 3})
    mid = MemoryMetadataRepository()
    out = MemoryMetadataRepository()
    seen_by_b: list[str] = []
    release = asyncio.Event()

    async def a_fn(key: str, src: Any, mid: Any) -> None:
        await mid.put(key, await src.get(key))  # the output exists ...
        if key == "bad":
            raise RuntimeError("A failed after writing")  # ... but the job fails
        if key == "slow":
            await release.wait()  # ... or is not finished

    async def b_fn(key: str, mid: Any, out: Any) -> None:
        seen_by_b.append(key)
        await out.put(key, await mid.get(key))

    a = FunctionTask("a", a_fn, inputs={"src": src}, outputs={"mid": mid})
    b = FunctionTask("b", b_fn, inputs={"mid": mid}, outputs={"out": out})
    pipeline = Pipeline([a, b])
    run = asyncio.create_task(pipeline.run())
    for _ in range(200):
        await asyncio.sleep(0.01)
        if "good" in seen_by_b:
            break
    # slow's output exists, but A has not finished it: B must not have started it
    assert await mid.contains("slow")
    assert "slow" not in seen_by_b
    release.set()
    summary = await run
    assert sorted(seen_by_b) == ["good", "slow"]
    assert summary.failed == 1
    assert not await mid.contains("bad"), "partial output of the failed job was not removed"
    record = await a.done.get("bad")
    assert record["success"] is False and record["state"] == "failed"
    assert record["error"]["type"] == "RuntimeError"
    assert "A failed after writing" in record["error"]["message"]
    assert "Traceback" in record["error"]["traceback"] and "a_fn" in record["error"]["traceback"]
    why = await pipeline.why("b", "bad")
    assert any("upstream task 'a'" in r for r in why)


async def test_seeded_intermediate_data_is_used_when_upstream_cannot_make_it() -> None:
    src = MemoryMetadataRepository({"x": 1})
    mid = MemoryMetadataRepository({"seeded": 5})  # A has no input for "seeded"
    out = MemoryMetadataRepository()
    a = FunctionTask("a", copy, inputs={"src": src}, outputs={"dst": mid})
    b = FunctionTask("b", copy, inputs={"src": mid}, outputs={"dst": out})
    summary = await Pipeline([a, b]).run()
    assert summary.ok
    assert await out.keys() == {"x", "seeded"}


async def test_job_records_and_states() -> None:
    src = MemoryMetadataRepository({"k": 1})
    states: list[tuple[str, Any]] = []
    hooks = Hooks()

    @hooks.on("job_started")
    def started(ev: Event) -> None:
        states.append(("started", ev.attempt))

    @hooks.on("job_succeeded")
    async def succeeded(ev: Event) -> None:
        states.append(("succeeded", ev.record["attempts"] if ev.record else None))

    hooks.on("pipeline_started", lambda ev: states.append(("pipeline_started", None)))
    hooks.on(
        "pipeline_finished",
        lambda ev: states.append(("pipeline_finished", ev.summary["succeeded"] if ev.summary else None)),
    )

    task = FunctionTask("t", copy, inputs={"src": src}, outputs={"dst": MemoryMetadataRepository()})
    summary = await Pipeline([task], hooks=hooks).run()
    assert summary.ok
    record = await task.done.get("k")
    assert record["success"] is True and record["state"] == JobState.SUCCEEDED
    assert record["attempts"] == 1 and record["runner"] == "in-process"
    assert record["host"] and record["start_time"] <= record["end_time"] and record["duration"] >= 0
    assert states == [("pipeline_started", None), ("started", 1), ("succeeded", 1), ("pipeline_finished", 1)]
    assert await task.live.keys() == set()


async def test_retries_with_backoff_then_success() -> None:
    src = MemoryMetadataRepository({"k": 1})
    dst = MemoryMetadataRepository()
    attempts: list[float] = []
    retrying: list[float] = []

    async def flaky(key: str, src: Any, dst: Any) -> None:
        attempts.append(time.monotonic())
        await dst.put(key, "partial")
        if len(attempts) < 3:
            raise ConnectionError("transient")

    hooks = Hooks()
    hooks.on("job_retrying", lambda ev: retrying.append(ev.delay or 0))
    task = FunctionTask(
        "t",
        flaky,
        inputs={"src": src},
        outputs={"dst": dst},
        retry=RetryPolicy(max_attempts=3, backoff="50ms", factor=2, jitter=0, retry_on=(ConnectionError,)),
    )
    summary = await Pipeline([task], hooks=hooks).run()
    assert summary.ok
    assert len(attempts) == 3
    assert retrying == pytest.approx([0.05, 0.1])
    assert attempts[1] - attempts[0] >= 0.05 and attempts[2] - attempts[1] >= 0.1
    record = await task.done.get("k")
    assert record["attempts"] == 3 and record["success"]


async def test_retry_only_listed_exceptions() -> None:
    src = MemoryMetadataRepository({"k": 1})
    calls = []

    async def broken(key: str) -> None:
        calls.append(key)
        raise ValueError("not transient")

    task = FunctionTask(
        "t", broken, inputs={"src": src}, retry=RetryPolicy(max_attempts=5, retry_on=(ConnectionError,))
    )
    summary = await Pipeline([task]).run()
    assert summary.failed == 1 and not summary.ok
    assert calls == ["k"]


def test_backoff_policy_caps_and_jitter() -> None:
    import random

    policy = RetryPolicy(max_attempts=10, backoff=1, factor=3, max_backoff="10s", jitter=0.5)
    rng = random.Random(1)
    delays = [policy.delay(n, rng) for n in range(1, 8)]
    assert all(0.5 <= d <= 1.5 for d in delays[:1])
    assert all(5 <= d <= 15 for d in delays[3:])
    with pytest.raises(ConfigurationError):
        RetryPolicy(max_attempts=0)
    with pytest.raises(ConfigurationError):
        RetryPolicy(backoff="soon")


async def test_recorded_failures_are_not_rerun_until_removed() -> None:
    src = MemoryMetadataRepository({"k": 1})
    calls = []

    async def fails_once(key: str, dst: Any) -> None:
        calls.append(key)
        if len(calls) == 1:
            raise RuntimeError("first time")
        await dst.put(key, 1)

    task = FunctionTask("t", fails_once, inputs={"src": src}, outputs={"dst": MemoryMetadataRepository()})
    pipeline = Pipeline([task])
    assert (await pipeline.run()).failed == 1
    assert (await pipeline.run()).failed == 0 and calls == ["k"]
    status = await pipeline.status()
    assert status["t"]["failed"] == ["k"]
    removed = await pipeline.remove("t", ["k"])
    assert ("t", "done", "k") in removed
    assert (await pipeline.run()).succeeded == 1 and calls == ["k", "k"]


async def test_concurrency_limits() -> None:
    src = MemoryMetadataRepository({f"k{i}": i for i in range(40)})
    running = 0
    peak = 0

    async def slow(key: str) -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.01)
        running -= 1

    t = FunctionTask("t", slow, inputs={"src": src}, concurrency=3)
    assert (await Pipeline([t]).run()).succeeded == 40
    assert peak == 3
    running = peak = 0
    t1 = FunctionTask("a", slow, inputs={"src": src}, concurrency=10)
    t2 = FunctionTask("b", slow, inputs={"src": src}, concurrency=10)
    assert (await Pipeline([t1, t2], max_jobs=4).run()).succeeded == 80
    assert peak == 4


async def test_completion_wakes_the_loop_without_polling() -> None:
    src = MemoryMetadataRepository({f"k{i}": i for i in range(30)})
    mids = MemoryMetadataRepository()
    out = MemoryMetadataRepository()
    a = FunctionTask("a", copy, inputs={"src": src}, outputs={"dst": mids}, concurrency=1)
    b = FunctionTask("b", copy, inputs={"src": mids}, outputs={"dst": out}, concurrency=1)
    t0 = time.monotonic()
    summary = await Pipeline([a, b], poll_interval="5s").run()
    assert summary.succeeded == 60
    assert time.monotonic() - t0 < 2.5, "the scheduler waited for the poll interval"


def _upper(key: str, src: bytes) -> dict[str, Any]:
    return {"dst": src.upper(), "meta": {"len": len(src), "key": key}}


@pytest.mark.parametrize("kind", ["thread", "process"])
async def test_executor_task(tmp_path: Path, kind: str) -> None:
    src = FileRepository(tmp_path / "src", ".txt")
    for i in range(20):
        await src.write_bytes(f"doc{i}", f"text {i}".encode())
    dst = FileRepository(tmp_path / "dst", ".txt")
    meta = YamlMetadataFileRepository(tmp_path / "meta")
    pool = ThreadPoolExecutor(4) if kind == "thread" else ProcessPoolExecutor(2)
    with pool:
        task = FunctionTask(
            "upper",
            _upper,
            executor=PoolExecutor(pool),
            inputs={"src": src},
            outputs={"dst": dst, "meta": meta},
        )
        summary = await Pipeline([task]).run()
    assert summary.ok and summary.succeeded == 20
    assert await dst.read_bytes("doc7") == b"TEXT 7"
    assert await meta.get("doc7") == {"len": 6, "key": "doc7"}
    assert (await task.done.get("doc7"))["runner"].startswith("function:")


def _bad_return(key: str, src: bytes) -> Any:
    return {"wrong": 1}


async def test_executor_task_bad_return_is_a_failure_record() -> None:
    src = MemoryBlobRepository({"k": b"x"})
    dst = MemoryBlobRepository()
    with ThreadPoolExecutor(1) as pool:
        task = FunctionTask(
            "t", _bad_return, executor=PoolExecutor(pool), inputs={"src": src}, outputs={"dst": dst}
        )
        summary = await Pipeline([task]).run()
    assert summary.failed == 1
    record = await task.done.get("k")
    assert "expected exactly ['dst']" in record["error"]["message"]


def test_dask_executor(tmp_path: Path) -> None:
    distributed = pytest.importorskip("distributed", reason="installed by pydatatask[test] ([dask] extra)")
    src = MemoryBlobRepository({f"k{i}": b"abc" for i in range(5)})
    dst = MemoryBlobRepository()
    with distributed.Client(
        processes=False, n_workers=1, threads_per_worker=2, dashboard_address=None
    ) as client:
        task = FunctionTask(
            "t", _upper_only, executor=PoolExecutor(client), inputs={"src": src}, outputs={"dst": dst}
        )
        summary = Pipeline([task]).run_sync()
    assert summary.ok and summary.succeeded == 5
    assert asyncio.run(dst.read_bytes("k3")) == b"ABC"


def _upper_only(key: str, src: bytes) -> dict[str, bytes]:
    return {"dst": src.upper()}


async def test_configuration_errors() -> None:
    repo = MemoryMetadataRepository()
    with pytest.raises(ConfigurationError, match="already has a link named 'src'"):
        FunctionTask("t", copy, inputs={"src": repo}).link("src", repo)
    with pytest.raises(ConfigurationError, match="unique"):
        Pipeline([FunctionTask("t", copy), FunctionTask("t", copy)])

    async def wrong(key: str, nonexistent: Any) -> None:
        pass

    with pytest.raises(ConfigurationError, match="'nonexistent'.*match no link"):
        await Pipeline([FunctionTask("t", wrong, inputs={"src": repo})]).run()
    with pytest.raises(ConfigurationError, match="no task named"):
        await Pipeline([FunctionTask("t", copy)]).run(tasks=["nope"])
    with pytest.raises(ConfigurationError, match="link name"):
        FunctionTask("t", copy, inputs={"not an identifier": repo})
    with pytest.raises(ConfigurationError, match="task name"):
        FunctionTask("bad name!", copy)


async def test_timeout_records_failure() -> None:
    src = MemoryMetadataRepository({"k": 1})

    async def hang(key: str) -> None:
        await asyncio.sleep(30)

    task = FunctionTask("t", hang, inputs={"src": src}, timeout="100ms")
    summary = await Pipeline([task]).run()
    assert summary.failed == 1
    record = await task.done.get("k")
    assert record["error"]["type"] == "pydatatask.errors.JobTimeoutError"


async def test_stop_cancels_and_cleans_up(tmp_path: Path) -> None:
    src = MemoryMetadataRepository({f"k{i}": i for i in range(5)})
    dst = FileRepository(tmp_path / "dst")
    started = asyncio.Event()

    async def slow(key: str, dst: Any) -> None:
        async with dst.open(key, "wb") as f:
            await f.write(b"half")
            started.set()
            await asyncio.sleep(60)

    task = FunctionTask("t", slow, inputs={"src": src}, outputs={"dst": dst}, concurrency=5)
    pipeline = Pipeline([task], state_dir=tmp_path / "state")
    run = asyncio.create_task(pipeline.run(grace="100ms"))
    await started.wait()
    await asyncio.sleep(0.05)
    pipeline.scheduler.request_stop()
    summary = await run
    assert summary.interrupted and not summary.ok
    assert list((tmp_path / "dst").iterdir()) == []
    assert await task.done.keys() == set()
    assert await task.live.keys() == set()


async def test_stale_claims_are_recovered(tmp_path: Path) -> None:
    src = MemoryMetadataRepository({"k": 1})
    dst = FileRepository(tmp_path / "dst")
    await dst.write_bytes("k", b"partial from a dead run")
    live = YamlMetadataFileRepository(tmp_path / "live")
    # a claim by a process that no longer exists on this host (same boot, same PID namespace)
    from pydatatask.task.records import make_claim

    await live.put("k", dict(make_claim("dead", "t", "k", time.time()), pid=2**22 + 12345, pid_start=1))

    async def make(key: str, dst: Any) -> None:
        await dst.write_bytes(key, b"complete")

    task = FunctionTask("t", make, inputs={"src": src}, outputs={"dst": dst}, live=live)
    summary = await Pipeline([task]).run()
    assert summary.succeeded == 1
    assert await dst.read_bytes("k") == b"complete"
    # a live claim from another host is respected
    await task.done.delete("k")
    await dst.delete("k")
    await live.put("k", {"owner": "other", "host": "elsewhere", "pid": 1})
    summary = await Pipeline([task]).run()
    assert summary.succeeded == 0
    assert not await dst.contains("k")


async def test_two_schedulers_never_run_a_job_twice(tmp_path: Path) -> None:
    src = MemoryMetadataRepository({f"k{i}": i for i in range(300)})
    dst = YamlMetadataFileRepository(tmp_path / "dst")
    live = YamlMetadataFileRepository(tmp_path / "live")
    done = YamlMetadataFileRepository(tmp_path / "done")
    runs: list[str] = []

    async def job(key: str, dst: Any) -> None:
        runs.append(key)
        await asyncio.sleep(0.001)
        await dst.put(key, 1)

    def make() -> Pipeline:
        return Pipeline(
            [
                FunctionTask(
                    "t", job, inputs={"src": src}, outputs={"dst": dst}, live=live, done=done, concurrency=16
                )
            ]
        )

    s1, s2 = await asyncio.gather(make().run(), make().run())
    assert sorted(runs) == sorted(f"k{i}" for i in range(300))
    assert s1.succeeded + s2.succeeded == 300


async def test_chain_always_completes_in_one_run(tmp_path: Path) -> None:
    """Jobs ending while the scheduler lists repositories must not end the run early."""
    import random

    rng = random.Random(7)
    for attempt in range(6):
        first = MemoryMetadataRepository({f"k{i}": i for i in range(120)})
        repos: list[Any] = [first] + [
            YamlMetadataFileRepository(tmp_path / f"{attempt}-{i}") for i in range(3)
        ]

        async def step(key: str, src: Any, dst: Any) -> None:
            await asyncio.sleep(rng.random() / 500)
            await dst.put(key, await src.get(key))

        tasks = [
            FunctionTask(
                f"s{i}",
                step,
                inputs={"src": repos[i]},
                outputs={"dst": repos[i + 1]},
                done=YamlMetadataFileRepository(tmp_path / f"{attempt}-done{i}"),
                concurrency=7,
            )
            for i in range(3)
        ]
        summary = await Pipeline(tasks).run()
        assert summary.succeeded == 360, summary.as_dict()
        assert len(await repos[3].keys()) == 120


async def test_expired_lease_from_another_host_is_taken_over(tmp_path: Path) -> None:
    src = MemoryMetadataRepository({"k": 1})
    dst = FileRepository(tmp_path / "dst")
    await dst.write_bytes("k", b"partial")
    live = YamlMetadataFileRepository(tmp_path / "live")
    old = time.time() - 100
    await live.put("k", {"owner": "gone", "host": "elsewhere", "pid": 1, "heartbeat": old, "lease": 30})

    async def make(key: str, dst: Any) -> None:
        await dst.write_bytes(key, b"complete")

    task = FunctionTask("t", make, inputs={"src": src}, outputs={"dst": dst}, live=live)
    summary = await Pipeline([task]).run()
    assert summary.succeeded == 1
    assert await dst.read_bytes("k") == b"complete"
    assert await live.keys() == set()


async def test_heartbeats_renew_claims_and_a_lost_claim_stops_the_job(tmp_path: Path) -> None:
    src = MemoryMetadataRepository({"k": 1})
    live = YamlMetadataFileRepository(tmp_path / "live")
    beats: list[float] = []
    started = asyncio.Event()

    async def slow(key: str) -> None:
        started.set()
        await asyncio.sleep(30)

    task = FunctionTask("t", slow, inputs={"src": src}, live=live)
    pipeline = Pipeline([task], claim_lease="300ms")
    run = asyncio.create_task(pipeline.run())
    await started.wait()
    for _ in range(3):
        await asyncio.sleep(0.12)
        beats.append((await live.get("k"))["heartbeat"])
    assert beats[0] < beats[-1], "the claim was not renewed"
    # another scheduler takes the claim over (as it would after our lease expired)
    await live.put("k", {"owner": "thief", "host": "elsewhere", "heartbeat": time.time(), "lease": 300})
    summary = await asyncio.wait_for(run, 5)
    assert any("claim lost" in e for e in summary.errors)
    assert (await live.get("k"))["owner"] == "thief", "the job's cleanup removed the new owner's claim"
    assert await task.done.keys() == set()


async def test_stale_claim_of_a_finished_job_keeps_its_outputs(tmp_path: Path) -> None:
    """A run killed between writing the success record and dropping the claim."""
    from pydatatask.task.records import make_claim

    src = MemoryMetadataRepository({"k": 1})
    dst = FileRepository(tmp_path / "dst")
    live = YamlMetadataFileRepository(tmp_path / "live")
    calls: list[str] = []

    async def make(key: str, dst: Any) -> None:
        calls.append(key)
        await dst.write_bytes(key, b"complete")

    task = FunctionTask("t", make, inputs={"src": src}, outputs={"dst": dst}, live=live)
    assert (await Pipeline([task]).run()).succeeded == 1
    await live.put("k", dict(make_claim("dead", "t", "k", time.time()), pid=2**22 + 54321, pid_start=1))
    summary = await Pipeline([task]).run()
    assert summary.ok and summary.succeeded == 0
    assert await dst.read_bytes("k") == b"complete"
    assert await live.keys() == set()
    assert calls == ["k"]


async def test_heartbeats_racing_with_job_ends_lose_nothing(tmp_path: Path) -> None:
    """A heartbeat that meets a claim being released is not a lost claim."""
    src = MemoryMetadataRepository({f"k{i}": i for i in range(400)})
    live = YamlMetadataFileRepository(tmp_path / "live")

    async def quick(key: str, dst: Any) -> None:
        await asyncio.sleep(0.002)
        await dst.put(key, 1)

    task = FunctionTask(
        "t",
        quick,
        inputs={"src": src},
        outputs={"dst": MemoryMetadataRepository()},
        live=live,
        concurrency=16,
    )
    summary = await Pipeline([task], claim_lease="150ms").run()
    assert summary.errors == []
    assert summary.succeeded == 400
