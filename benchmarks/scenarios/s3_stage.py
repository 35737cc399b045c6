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
import contextlib
import json
import os
import subprocess
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from . import Options, Point, ScenarioResult, Verdict, ratio

NAME = "s3_stage"
TITLE = "S3: one stage over small objects, local S3 server"
CONCURRENCY = 16
BUCKET = "pdt-bench"


def points(opts: Options) -> list[Point]:
    n = 100 if opts.quick else 2_000
    return [Point(f"{n} objects", n, {"n": n, "concurrency": CONCURRENCY}, ["ours", "bare"])]


def verdicts(res: ScenarioResult) -> list[Verdict]:
    p = res.points[0].label
    r = ratio(res.median(p, "bare"), res.median(p, "ours"))
    return [
        Verdict(
            ">= 0.8x the bare aiobotocore loop",
            "n/a" if r is None else f"{r:.2f}x",
            None if r is None else r >= 0.8,
        )
    ]


def _services() -> dict[str, Any] | None:
    path = os.environ.get("PDT_TEST_SERVICES")
    if not path:
        root = Path(__file__).resolve().parents[2]
        try:
            out = subprocess.run(
                ["bash", str(root / "scripts" / "test-services"), "env"],
                capture_output=True,
                text=True,
                timeout=30,
            )
            path = out.stdout.strip().splitlines()[-1] if out.returncode == 0 and out.stdout.strip() else None
        except (OSError, subprocess.TimeoutExpired):
            path = None
    if not path or not Path(path).is_file():
        return None
    return json.loads(Path(path).read_text())  # type: ignore[no-any-return]


@contextlib.asynccontextmanager
async def _client(conf: dict[str, Any]) -> AsyncIterator[Any]:
    from aiobotocore.config import AioConfig
    from aiobotocore.session import get_session

    async with get_session().create_client(
        "s3",
        endpoint_url=conf["endpoint"],
        aws_access_key_id=conf["access_key"],
        aws_secret_access_key=conf["secret_key"],
        region_name=conf.get("region", "us-east-1"),
        config=AioConfig(max_pool_connections=64),
    ) as client:
        yield client


async def _names(client: Any, prefix: str) -> list[str]:
    out = []
    async for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix):
        out.extend(obj["Key"] for obj in page.get("Contents", ()))
    return out


async def _empty(client: Any, prefix: str) -> None:
    names = await _names(client, prefix)
    for i in range(0, len(names), 1000):
        batch = [{"Key": k} for k in names[i : i + 1000]]
        await client.delete_objects(Bucket=BUCKET, Delete={"Objects": batch, "Quiet": True})


def prepare(opts: Options) -> dict[str, Any] | str:
    """Upload the inputs once; return the params, or why the scenario cannot run."""
    services = _services()
    if not services or "s3" not in services:
        return "no S3 test server: run `bash scripts/test-services up` (sets PDT_TEST_SERVICES)"
    conf = services["s3"]
    host = urlparse(conf["endpoint"]).hostname
    if host not in ("127.0.0.1", "localhost", "::1"):
        return f"refusing a non-loopback S3 endpoint {conf['endpoint']}"
    try:
        import aiobotocore  # noqa: F401
    except ImportError:
        return "aiobotocore is not installed (pip install 'pydatatask[s3]')"
    try:
        from pydatatask.repository import S3BucketRepository  # noqa: F401
    except (ImportError, AttributeError) as exc:
        return f"S3BucketRepository not available yet ({exc})"
    n = max(p.params["n"] for p in points(opts))

    async def upload() -> None:
        async with _client(conf) as client:
            with contextlib.suppress(Exception):
                await client.create_bucket(Bucket=BUCKET)
            have = set(await _names(client, "in/"))
            sem = asyncio.Semaphore(32)

            async def put(i: int) -> None:
                name = f"in/k{i:07d}.txt"
                if name not in have:
                    async with sem:
                        await client.put_object(Bucket=BUCKET, Key=name, Body=b"abcdefgh")

            await asyncio.gather(*(put(i) for i in range(n)))

    try:
        asyncio.run(upload())
    except Exception as exc:
        return f"S3 server not usable: {type(exc).__name__}: {exc}"
    return {"s3": conf}


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
                async with _client(conf) as client:
                    yield client

            class Only(S3BucketRepository):  # the first n inputs only (the bucket may hold more)
                async def _list(self) -> Any:
                    return [k for k in await super()._list() if k in wanted]

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
            async with _client(conf) as client:
                t1 = time.perf_counter()
                have = {k[3:-4] for k in await _names(client, "in/")} & wanted
                done = {k[len(out_prefix) : -4] for k in await _names(client, out_prefix)}
                it = iter(sorted(have - done))

                async def worker() -> None:
                    for key in it:
                        resp = await client.get_object(Bucket=BUCKET, Key=f"in/{key}.txt")
                        async with resp["Body"] as body:
                            data = await body.read()
                        await client.put_object(
                            Bucket=BUCKET, Key=f"{out_prefix}{key}.txt", Body=data.upper()
                        )

                async with asyncio.TaskGroup() as tg:
                    for _ in range(conc):
                        tg.create_task(worker())
                seconds = time.perf_counter() - t1
        async with _client(conf) as client:
            assert len(await _names(client, out_prefix)) == n
            await _empty(client, out_prefix)
        return seconds

    seconds = asyncio.run(main())
    return {"seconds": seconds, "jobs_per_s": n / seconds, "import_seconds": import_s}


if __name__ == "__main__":
    from .. import worker_main

    worker_main(run)
