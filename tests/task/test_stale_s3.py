"""Stale keys over the real S3 test server: a re-uploaded object (a new ETag) makes exactly
its key stale, and ``rerun_stale`` redoes it and its downstream key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from pydatatask import FileRepository
from pydatatask.pipeline import Pipeline
from pydatatask.repository.base import BlobRepository
from pydatatask.repository.s3 import S3BucketRepository
from pydatatask.task import FunctionTask
from tests.repository.test_s3 import bucket, client, prefix, s3conf  # noqa: F401 - fixtures

pytestmark = pytest.mark.s3


async def test_a_new_etag_makes_exactly_that_key_stale_and_rerun_redoes_it_and_downstream(
    client: Any,  # noqa: F811 - the fixture
    bucket: str,  # noqa: F811
    prefix: str,  # noqa: F811
    tmp_path: Path,
) -> None:
    src = S3BucketRepository(client, bucket, prefix + "src/", ".txt")
    mid = S3BucketRepository(client, bucket, prefix + "mid/", ".txt")
    out = FileRepository(tmp_path / "out", ".txt")
    calls: list[tuple[str, str]] = []

    async def upper(key: str, src: BlobRepository, mid: BlobRepository) -> None:
        calls.append(("upper", key))
        await mid.write_bytes(key, (await src.read_bytes(key)).upper())

    async def mark(key: str, mid: BlobRepository, out: BlobRepository) -> None:
        calls.append(("mark", key))
        await out.write_bytes(key, (await mid.read_bytes(key)) + b"!")

    t1 = FunctionTask("upper", upper, inputs={"src": src}, outputs={"mid": mid})
    t2 = FunctionTask("mark", mark, inputs={"mid": mid}, outputs={"out": out})
    pipeline = Pipeline([t1, t2])  # records and claims in memory: the versions are S3's
    keys = ["a", "dir/b c", "dir/é"]
    for key in keys:
        await src.write_bytes(key, f"value of {key}".encode())
    assert (await pipeline.run()).succeeded == 6
    response = await client.head_object(Bucket=bucket, Key=src.object_name("dir/b c"))
    etag = response["ETag"]
    assert (await t1.done.get("dir/b c"))["inputs"]["src"] == etag

    await src.write_bytes("dir/b c", b"uploaded again")
    await src.write_bytes("a", b"value of a")  # the same bytes: the same ETag, not stale
    status = await pipeline.status()
    assert status["upper"]["stale"] == ["dir/b c"] and status["mark"]["stale"] == ["dir/b c"]
    (reason,) = status["upper"]["stale_details"]["dir/b c"]
    new_etag = (await client.head_object(Bucket=bucket, Key=src.object_name("dir/b c")))["ETag"]
    assert (reason["kind"], reason["old"], reason["new"]) == ("input", etag, new_etag)

    calls.clear()
    assert (await pipeline.run()).succeeded == 0
    summary = await pipeline.run(rerun_stale=True)
    assert summary.ok and summary.succeeded == 2
    assert sorted(calls) == [("mark", "dir/b c"), ("upper", "dir/b c")]
    assert await out.read_bytes("dir/b c") == b"UPLOADED AGAIN!"
    assert (
        await out.read_bytes("dir/é") == b"VALUE OF DIR/" + "é".encode() + b"!"
    )  # bytes.upper(): ASCII only
    status = await pipeline.status()
    assert status["upper"]["stale"] == [] and status["mark"]["stale"] == []
