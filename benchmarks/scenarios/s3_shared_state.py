"""Two chained stages over small objects with the pipeline's state in the same bucket.

State in the bucket (records in ``done``, claims in ``live``, as
``YamlMetadataS3Repository``) is what schedulers on several machines need to share the
work; this measures what it costs per job against the job's own reads and writes.
Inputs are uploaded once (``prepare``) under ``shared-in/`` of the bucket ``pdt-bench``;
every measurement writes under its own prefix, removed after it (not timed).

* ``ours``: ``src -> mid -> out``, two ``FunctionTask`` (``concurrency=C`` each, unbatched),
  the client opened by a ``Session`` resource, records and claims of both tasks in the
  bucket. Requests are counted by operation (botocore ``before-call`` events).
* ``batch100``: the same with ``batch=100`` (one call of an async function per 100 keys,
  its reads and writes 16 at once; one record per key).
* ``bare``: one aiobotocore client, one listing of the inputs, then ``2 C`` worker
  coroutines doing per key what the jobs do: get the input, put the middle object, get it
  back, put the output.

Targets (issue 15): >= 0.5x the bare loop's throughput; at most 3 requests of
bookkeeping per job beyond the job's own GetObject and PutObject; batched, >= 0.8x the bare
loop and at most 1.2 requests of bookkeeping per key. ``--size N`` runs N
objects instead of 10,000 (``--quick``: 100).
"""

from __future__ import annotations

import asyncio
import collections
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from . import Options, Point, ScenarioResult, Verdict, _s3, profiled, ratio
from ._s3 import BUCKET
from ._s3 import client as _client
from ._s3 import empty as _empty
from ._s3 import names as _names

NAME = "s3_shared_state"
TITLE = "S3: two chained stages, state (records, claims) in the bucket"
CONCURRENCY = 16
INPUTS = "shared-in/"
FULL = 10_000

#: S3 operations reported per job (the others are summed under "other")
OPERATIONS = ("GetObject", "PutObject", "HeadObject", "DeleteObject", "DeleteObjects", "ListObjectsV2")


def points(opts: Options) -> list[Point]:
    n = opts.size or (100 if opts.quick else FULL)
    return [Point(f"{n} objects", n, {"n": n, "concurrency": CONCURRENCY}, ["ours", "batch100", "bare"])]


def verdicts(res: ScenarioResult) -> list[Verdict]:
    p = res.points[0].label
    r = ratio(res.median(p, "bare"), res.median(p, "ours"))
    extra = res.median(p, "ours", "bookkeeping_per_job")
    rb = ratio(res.median(p, "bare"), res.median(p, "batch100"))
    extra_b = res.median(p, "batch100", "bookkeeping_per_job")
    by_op = _by_operation(res, p, "ours")
    by_op_b = _by_operation(res, p, "batch100")
    return [
        Verdict(
            ">= 0.5x the bare aiobotocore loop (unbatched)",
            "n/a" if r is None else f"{r:.2f}x",
            None if r is None else r >= 0.5,
        ),
        Verdict(
            "<= 3 requests of bookkeeping per job beyond its own GET and PUT",
            "n/a" if extra is None else f"{extra:.2f} (requests per job: {by_op})",
            None if extra is None else extra <= 3,
        ),
        Verdict(
            "batch=100: >= 0.8x the bare aiobotocore loop",
            "n/a" if rb is None else f"{rb:.2f}x",
            None if rb is None else rb >= 0.8,
        ),
        Verdict(
            "batch=100: <= 1.2 requests of bookkeeping per key",
            "n/a" if extra_b is None else f"{extra_b:.2f} (requests per key: {by_op_b})",
            None if extra_b is None else extra_b <= 1.2,
        ),
    ]


def _by_operation(res: ScenarioResult, point: str, series: str) -> str:
    """The requests per job of ``series`` by S3 operation (its own reads and writes included)."""
    return ", ".join(
        f"{op} {value:.2f}"
        for op in (*OPERATIONS, "other")
        if (value := res.median(point, series, f"per_job_{op}")) is not None and value > 0
    )


def prepare(opts: Options) -> dict[str, Any] | str:
    """Upload the inputs once; return the params, or why the scenario cannot run."""
    return _s3.prepare_inputs(max(p.params["n"] for p in points(opts)), INPUTS)


# ---------------------------------------------------------------------- workers
def run(series: str, params: dict[str, Any]) -> dict[str, Any]:
    conf, n, conc = params["s3"], params["n"], params["concurrency"]
    base = f"shared-{uuid.uuid4().hex[:10]}/"
    wanted = {f"k{i:07d}" for i in range(n)}
    counts: collections.Counter[str] = collections.Counter()

    def count(model: Any, **_: Any) -> None:
        counts[model.name] += 1

    async def ours(batch: int = 1) -> float:
        from pydatatask import Session
        from pydatatask.pipeline import Pipeline
        from pydatatask.repository import S3BucketRepository, YamlMetadataS3Repository
        from pydatatask.task import FunctionTask

        session = Session()

        @session.resource
        async def s3() -> AsyncIterator[Any]:
            async with _client(conf) as client:
                client.meta.events.register("before-call.s3", count)
                yield client

        class Only(S3BucketRepository):  # the first n inputs only (the bucket may hold more)
            async def _scan(self) -> dict[str, str | None]:  # under keys() and versions()
                return {k: v for k, v in (await super()._scan()).items() if k in wanted}

        async def upper(key: str, src: Any, dst: Any) -> None:
            await dst.write_bytes(key, (await src.read_bytes(key)).upper())

        async def upper_many(keys: list[str], src: Any, dst: Any) -> None:
            gate = asyncio.Semaphore(16)

            async def one(key: str) -> None:
                async with gate:
                    await dst.write_bytes(key, (await src.read_bytes(key)).upper())

            await asyncio.gather(*(one(k) for k in keys))

        def state(task: str, kind: str) -> Any:
            return YamlMetadataS3Repository(s3, BUCKET, f"{base}state/{task}/{kind}/")

        mid = S3BucketRepository(s3, BUCKET, f"{base}mid/")
        tasks = [
            FunctionTask(
                name,
                upper if batch == 1 else upper_many,
                inputs={"src": src},
                outputs={"dst": dst},
                done=state(name, "done"),
                live=state(name, "live"),
                concurrency=conc if batch == 1 else 2,
                batch=batch,
            )
            for name, src, dst in (
                ("one", Only(s3, BUCKET, INPUTS), mid),
                ("two", mid, S3BucketRepository(s3, BUCKET, f"{base}out/")),
            )
        ]
        pipeline = Pipeline(tasks, session)
        async with pipeline:  # timed like the bare loop: from an open client to the end
            counts.clear()
            t1 = time.perf_counter()
            summary = await pipeline.run()
            seconds = time.perf_counter() - t1
        assert summary.succeeded == 2 * n, summary
        return seconds

    async def bare() -> float:
        async with _client(conf) as client:
            client.meta.events.register("before-call.s3", count)
            t1 = time.perf_counter()
            have = {k[len(INPUTS) :] for k in await _names(client, INPUTS)} & wanted
            it = iter(sorted(have))

            async def copy(src: str, dst: str) -> None:
                resp = await client.get_object(Bucket=BUCKET, Key=src)
                async with resp["Body"] as body:
                    data = await body.read()
                await client.put_object(Bucket=BUCKET, Key=dst, Body=data.upper())

            async def worker() -> None:
                for key in it:
                    await copy(f"{INPUTS}{key}", f"{base}mid/{key}")
                    await copy(f"{base}mid/{key}", f"{base}out/{key}")

            async with asyncio.TaskGroup() as tg:
                for _ in range(2 * conc):  # the pipeline runs C jobs of each stage at once
                    tg.create_task(worker())
            return time.perf_counter() - t1

    async def main() -> float:
        try:
            if series == "bare":
                return await bare()
            return await ours(100 if series == "batch100" else 1)
        finally:
            async with _client(conf) as client:
                got = len(await _names(client, f"{base}out/"))
                await _empty(client, base)
            assert got == n, f"{got} outputs of {n}"

    seconds, profile = profiled(params, lambda: asyncio.run(main()))
    jobs = 2 * n
    metrics: dict[str, Any] = {"seconds": seconds, "jobs_per_s": jobs / seconds}
    if profile is not None:
        metrics["profile"] = profile
    metrics["requests_per_job"] = sum(counts.values()) / jobs
    # each job's own work: one GetObject of its input, one PutObject of its output
    metrics["bookkeeping_per_job"] = (sum(counts.values()) - 2 * jobs) / jobs
    for op in OPERATIONS:
        metrics[f"per_job_{op}"] = counts.get(op, 0) / jobs
    metrics["per_job_other"] = sum(v for k, v in counts.items() if k not in OPERATIONS) / jobs
    return metrics


if __name__ == "__main__":
    from .. import worker_main

    worker_main(run)
