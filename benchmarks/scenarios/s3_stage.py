"""One stage over 2,000 small objects on the local S3 test server.

Inputs are uploaded once (``prepare``) under ``in/`` of the bucket ``pdt-bench``; every
measurement writes to its own output prefix, removed after it (not timed).

* ``ours``: ``S3BucketRepository`` in/out, ``FunctionTask`` (``concurrency=C``), the
  client opened by a ``Session`` resource, in-memory done records. Timed from the open
  pipeline (client created, bucket checked), as the bare loop is timed from its client.
* ``bare``: one aiobotocore client, one paginated listing of each prefix, then ``C``
  worker coroutines doing ``get_object`` + ``put_object`` per key.

The server comes from ``$PDT_TEST_SERVICES`` (``scripts/test-services``), loopback only.
Target: >= 0.8x the bare loop's throughput.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from . import Options, Point, ScenarioResult, Verdict, _s3, ratio
from ._common import at_least, run_workers
from ._s3 import BUCKET

NAME = "s3_stage"
TITLE = "S3: one stage over small objects, local S3 server"
CONCURRENCY = 16


def points(opts: Options) -> list[Point]:
    n = 100 if opts.quick else 2_000
    return [Point(f"{n} objects", n, {"n": n, "concurrency": CONCURRENCY}, ["ours", "bare"])]


def verdicts(res: ScenarioResult) -> list[Verdict]:
    p = res.points[0].label
    r = ratio(res.median(p, "bare"), res.median(p, "ours"))
    return [at_least(">= 0.8x the bare aiobotocore loop", r, 0.8)]


def prepare(opts: Options) -> dict[str, Any] | str:
    """Upload the inputs once; return the params, or why the scenario cannot run."""
    return _s3.prepare_inputs(max(p.params["n"] for p in points(opts)), "in/", ".txt")


# ---------------------------------------------------------------------- workers
def run(series: str, params: dict[str, Any]) -> dict[str, Any]:
    conf, n, conc = params["s3"], params["n"], params["concurrency"]
    out_prefix = f"out-{uuid.uuid4().hex[:10]}/"
    wanted = {f"k{i:07d}" for i in range(n)}
    if series == "ours":
        t0 = time.perf_counter()
        from pydatatask import Session
        from pydatatask.pipeline import Pipeline
        from pydatatask.repository import S3BucketRepository
        from pydatatask.task import FunctionTask

        import_s = time.perf_counter() - t0
    else:
        t0 = time.perf_counter()
        import aiobotocore.session  # noqa: F401

        import_s = time.perf_counter() - t0

    async def main() -> float:
        if series == "ours":
            session = Session()

            @session.resource
            async def s3() -> AsyncIterator[Any]:
                async with _s3.client(conf) as client:
                    yield client

            class Only(S3BucketRepository):  # the first n inputs only (the bucket may hold more)
                async def _list(self) -> Any:
                    return [k for k in await super()._list() if k in wanted]

                async def _list_versions(self) -> dict[str, str | None]:
                    # (the scheduler lists the versions of inputs, for the records' ``inputs``)
                    return {k: v for k, v in (await super()._list_versions()).items() if k in wanted}

            async def upper(key: str, src: Any, dst: Any) -> None:
                await dst.write_bytes(key, (await src.read_bytes(key)).upper())

            task = FunctionTask(
                "upper",
                upper,
                inputs={"src": Only(s3, BUCKET, "in/", ".txt")},
                outputs={"dst": S3BucketRepository(s3, BUCKET, out_prefix, ".txt")},
                concurrency=conc,
            )
            pipeline = Pipeline([task], session)
            # timed like the bare loop: from an open client (the session's) to the end
            async with pipeline:
                t1 = time.perf_counter()
                summary = await pipeline.run()
                seconds = time.perf_counter() - t1
            assert summary.succeeded == n, summary
        else:
            async with _s3.client(conf) as client:
                t1 = time.perf_counter()
                have = {k[3:-4] for k in await _s3.names(client, "in/")} & wanted
                done = {k[len(out_prefix) : -4] for k in await _s3.names(client, out_prefix)}
                it = iter(sorted(have - done))

                async def worker() -> None:
                    for key in it:
                        resp = await client.get_object(Bucket=BUCKET, Key=f"in/{key}.txt")
                        async with resp["Body"] as body:
                            data = await body.read()
                        await client.put_object(
                            Bucket=BUCKET, Key=f"{out_prefix}{key}.txt", Body=data.upper()
                        )

                await run_workers(conc, worker)
                seconds = time.perf_counter() - t1
        async with _s3.client(conf) as client:
            assert len(await _s3.names(client, out_prefix)) == n
            await _s3.empty(client, out_prefix)
        return seconds

    seconds = asyncio.run(main())
    return {"seconds": seconds, "jobs_per_s": n / seconds, "import_seconds": import_s}


if __name__ == "__main__":
    from .. import worker_main

    worker_main(run)
