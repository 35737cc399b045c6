"""Listings per run on the S3 test server: a two-stage chained pipeline with its records
and claims in the bucket lists each repository about twice per run (at the start, and
to confirm nothing is left), not once per tick. The LIST pages are counted by botocore
event hooks on the real client (an observation of the requests sent)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from pydatatask.pipeline import Pipeline
from pydatatask.repository.base import BlobRepository
from pydatatask.repository.s3 import S3BucketRepository, YamlMetadataS3Repository
from pydatatask.task import FunctionTask
from tests.repository.test_s3 import bucket, client, prefix, s3conf  # noqa: F401 - fixtures

pytestmark = pytest.mark.s3

N = 200
PAGE = 50  # keys per LIST page (the server's default is 1,000): a listing of N keys is several pages


def count_list_pages(s3: Any) -> list[str]:
    """Every listing page the client asks for from now on (its prefix), with pages of
    ``PAGE`` keys. The delimited pages that answer whether a few keys of one directory
    exist (the record check at launch, instead of a ``HeadObject`` each) are not
    listings of a repository and are not counted."""
    sent: list[str] = []

    def page_size(params: dict[str, Any], **_: Any) -> None:
        if "Delimiter" not in params:
            params.setdefault("MaxKeys", PAGE)

    def note(params: dict[str, Any], **_: Any) -> None:
        query = params.get("query_string") or {}  # the request as it is sent
        if "delimiter" not in query:
            sent.append(str(query.get("prefix", "")))

    s3.meta.events.register("before-parameter-build.s3.ListObjectsV2", page_size)
    s3.meta.events.register("before-call.s3.ListObjectsV2", note)
    return sent


async def test_a_chained_s3_pipeline_lists_at_most_twice_per_run(
    client: Any,  # noqa: F811 - the fixture
    bucket: str,  # noqa: F811
    prefix: str,  # noqa: F811
) -> None:
    src = S3BucketRepository(client, bucket, prefix + "src/", ".txt")
    mid = S3BucketRepository(client, bucket, prefix + "mid/", ".txt")
    out = S3BucketRepository(client, bucket, prefix + "out/", ".txt")
    sem = asyncio.Semaphore(32)

    async def put(i: int) -> None:
        async with sem:
            await src.write_bytes(f"dir/k{i:04d}", f"value {i}".encode())

    await asyncio.gather(*(put(i) for i in range(N)))

    async def upper(key: str, src: BlobRepository, mid: BlobRepository) -> None:
        await mid.write_bytes(key, (await src.read_bytes(key)).upper())

    async def mark(key: str, mid: BlobRepository, out: BlobRepository) -> None:
        await out.write_bytes(key, (await mid.read_bytes(key)) + b"!")

    def state(name: str) -> dict[str, Any]:
        return {
            "done": YamlMetadataS3Repository(client, bucket, f"{prefix}{name}.done/"),
            "live": YamlMetadataS3Repository(client, bucket, f"{prefix}{name}.live/"),
        }

    t1 = FunctionTask(
        "upper", upper, inputs={"src": src}, outputs={"mid": mid}, concurrency=32, **state("up")
    )
    t2 = FunctionTask(
        "mark", mark, inputs={"mid": mid}, outputs={"out": out}, concurrency=32, **state("mark")
    )
    pipeline = Pipeline([t1, t2], refresh="1h")  # no refresh falls due during the run
    sent = count_list_pages(client)
    summary = await pipeline.run()
    run_pages = len(sent)
    assert summary.ok and summary.succeeded == 2 * N, summary.as_dict()
    assert await out.read_bytes("dir/k0007") == b"VALUE 7!"
    known = pipeline.scheduler.known
    repositories = [src, mid, out, t1.done, t1.live, t2.done, t2.live]
    assert known.listings() == 2 * len(repositories)  # the first listing and the last one

    sent.clear()
    for repo in repositories:
        await repo.keys()
    full = len(sent)
    assert full == 5 * (N // PAGE) + 2  # five repositories of N keys, two empty ones
    assert run_pages <= 2 * full, (run_pages, full)
    assert (await pipeline.run()).succeeded == 0
