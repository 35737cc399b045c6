"""LIST pages per run: a two-stage chained pipeline over small objects on the local S3
server, its outputs, records and claims in the bucket, against one full listing.

Inputs are uploaded once (``prepare``) under ``listing-in/`` of the bucket ``pdt-bench``;
each measurement writes its outputs and state under a prefix of its own, removed after
it (not timed). The ``ListObjectsV2`` requests are counted by botocore's
``before-call`` event on the client (an observation of what is sent): listing pages
apart from the delimited pages that check whether a few keys exist (the record check
at launch; ``check_pages``).

* ``ours``: ``refresh="1h"``, so no refresh falls due: what the scheduler lists to learn
  its own writes, and nothing else. Target: at most 2x the pages of one full listing of
  each of the pipeline's seven repositories (inputs, two outputs, two ``done``, two
  ``live``), taken right after the run.
* ``default``: the refresh interval by kind (30 s for S3): the same plus the refreshes a
  run of that length makes (``refresh_listings`` counts the listings beyond the first
  and the last of each repository).

``--size N`` sets the number of objects (default 10,000; ``--quick`` 60).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

from . import Options, Point, ScenarioResult, Verdict, _s3
from ._s3 import BUCKET

NAME = "s3_listing"
TITLE = "S3: LIST pages per run of a chained two-stage pipeline, state in the bucket"
CONCURRENCY = 32
IN = "listing-in/"


def points(opts: Options) -> list[Point]:
    n = opts.size or (60 if opts.quick else 10_000)
    return [Point(f"{n} objects", n, {"n": n, "concurrency": CONCURRENCY}, ["ours", "default"])]


def verdicts(res: ScenarioResult) -> list[Verdict]:
    p = res.points[0].label
    pages, full = res.median(p, "ours", "list_pages"), res.median(p, "ours", "full_pages")
    r = None if pages is None or not full else pages / full
    out = [
        Verdict(
            "<= 2x the LIST pages of one full listing",
            "n/a" if r is None else f"{r:.2f}x ({pages:.0f} pages, one full listing {full:.0f})",
            None if r is None else r <= 2.0,
        )
    ]
    dpages, dfull = res.median(p, "default", "list_pages"), res.median(p, "default", "full_pages")
    refreshes = res.median(p, "default", "refresh_listings")
    if dpages is not None and dfull:
        out.append(
            Verdict(
                "default refresh: the same plus the refreshes (reported)",
                f"{dpages / dfull:.2f}x ({dpages:.0f} pages, {refreshes or 0:.0f} refresh listings)",
                None,
            )
        )
    return out


def prepare(opts: Options) -> dict[str, Any] | str:
    """Upload the inputs once; return the params, or why the scenario cannot run."""
    return _s3.prepare_inputs(max(p.params["n"] for p in points(opts)), IN, ".txt")


def run(series: str, params: dict[str, Any]) -> dict[str, Any]:
    conf, n, conc = params["s3"], params["n"], params["concurrency"]
    base = f"listing-{uuid.uuid4().hex[:10]}/"
    wanted = {f"k{i:07d}" for i in range(n)}

    from pydatatask.pipeline import Pipeline
    from pydatatask.repository import S3BucketRepository
    from pydatatask.repository.s3 import YamlMetadataS3Repository
    from pydatatask.task import FunctionTask

    async def main() -> dict[str, Any]:
        async with _s3.client(conf) as client:
            sent: list[str] = []  # listing pages (not the delimited pages that check a few keys)
            checks: list[str] = []

            def note(params: dict[str, Any], **_: Any) -> None:
                query = params.get("query_string") or {}  # the request as it is sent
                (checks if "delimiter" in query else sent).append(str(query.get("prefix")))

            client.meta.events.register("before-call.s3.ListObjectsV2", note)

            class Only(S3BucketRepository):  # the first n inputs only (the bucket may hold more)
                async def _list(self) -> Any:
                    return [k for k in await super()._list() if k in wanted]

                async def _list_versions(self) -> dict[str, str | None]:
                    return {k: v for k, v in (await super()._list_versions()).items() if k in wanted}

            src = Only(client, BUCKET, IN, ".txt")
            mid = S3BucketRepository(client, BUCKET, base + "mid/", ".txt")
            out = S3BucketRepository(client, BUCKET, base + "out/", ".txt")

            async def upper(key: str, src: Any, mid: Any) -> None:
                await mid.write_bytes(key, (await src.read_bytes(key)).upper())

            async def mark(key: str, mid: Any, out: Any) -> None:
                await out.write_bytes(key, (await mid.read_bytes(key)) + b"!")

            def state(name: str) -> dict[str, Any]:
                return {
                    "done": YamlMetadataS3Repository(client, BUCKET, f"{base}{name}.done/"),
                    "live": YamlMetadataS3Repository(client, BUCKET, f"{base}{name}.live/"),
                }

            t1 = FunctionTask(
                "upper", upper, inputs={"src": src}, outputs={"mid": mid}, concurrency=conc, **state("up")
            )
            t2 = FunctionTask(
                "mark", mark, inputs={"mid": mid}, outputs={"out": out}, concurrency=conc, **state("mark")
            )
            pipeline = Pipeline([t1, t2], refresh="1h" if series == "ours" else None)
            t0 = time.perf_counter()
            summary = await pipeline.run()
            seconds = time.perf_counter() - t0
            assert summary.ok and summary.succeeded == 2 * n, summary.as_dict()
            list_pages = len(sent)
            repositories = [src, mid, out, t1.done, t1.live, t2.done, t2.live]
            listings = pipeline.scheduler.known.listings()
            sent.clear()
            for repo in repositories:
                await repo.keys()
            full_pages = len(sent)
            for prefix in (base,):
                await _s3.empty(client, prefix)
            return {
                "seconds": seconds,
                "jobs_per_s": 2 * n / seconds,
                "list_pages": list_pages,
                "full_pages": full_pages,
                "refresh_listings": listings - 2 * len(repositories),
                "check_pages": len(checks),
            }

    return asyncio.run(main())


if __name__ == "__main__":
    from .. import worker_main

    worker_main(run)
