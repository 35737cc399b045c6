"""Regression tests for what the crash/outage harness found left behind (debris, orphaned
outputs), and a lost-reply check of Mongo claims through the harness's proxy."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from pydatatask import Backoff, MemoryBlobRepository, MemoryMetadataRepository
from pydatatask.pipeline import Pipeline
from pydatatask.task import FunctionTask, JobContext, RetryPolicy

from .harness import BUCKET, TcpProxy, ensure_bucket, s3_client, s3_empty, s3_uploads


@pytest.mark.s3
async def test_s3_delete_aborts_the_uploads_a_dead_writer_left(services: dict[str, Any]) -> None:
    from pydatatask import S3BucketRepository

    conf = {k: services["s3"][k] for k in ("endpoint", "access_key", "secret_key", "region")}
    prefix = f"debris{uuid.uuid4().hex[:8]}/"
    async with s3_client(conf) as client:
        await ensure_bucket(client)
        try:
            repo = S3BucketRepository(client, BUCKET, prefix, ".bin")
            # what a SIGKILLed writer (or one that could not abort during an outage) leaves
            for key in ("k", "k2"):
                up = await client.create_multipart_upload(Bucket=BUCKET, Key=repo.object_name(key))
                await client.upload_part(
                    Bucket=BUCKET, Key=repo.object_name(key), UploadId=up["UploadId"], PartNumber=1, Body=b"x"
                )
            assert len(await s3_uploads(client, BUCKET, prefix)) == 2
            await repo.delete("k")
            left = await s3_uploads(client, BUCKET, prefix)
            assert [u["Key"] for u in left] == [repo.object_name("k2")]  # only that key's upload
        finally:
            await s3_empty(client, BUCKET, prefix)


class FlakyDeletes(MemoryBlobRepository):
    """Deletes fail ``failures`` times (a backend that is down), then work."""

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures

    async def _delete(self, key: str) -> None:
        if self.failures:
            self.failures -= 1
            raise ConnectionError("backend down")
        await super()._delete(key)


async def test_failed_cleanup_is_retried_before_the_next_attempt() -> None:
    src, a, b = MemoryBlobRepository(), MemoryBlobRepository(), FlakyDeletes(failures=1)
    await src.write_bytes("k", b"x")

    async def job(key: str, job: JobContext, a: MemoryBlobRepository, b: FlakyDeletes) -> None:
        if job.attempt == 1:
            await b.write_bytes(key, b"partial")
            raise RuntimeError("attempt 1 fails after writing b")
        await a.write_bytes(key, b"done")

    task = FunctionTask(
        "t", job, inputs={"src": src}, outputs={"a": a, "b": b}, retry=RetryPolicy(max_attempts=2, backoff=0)
    )
    summary = await Pipeline([task]).run()
    assert summary.succeeded == 1
    assert not await b.contains("k"), "the failed attempt's partial output survived"


class FlakyPuts(MemoryMetadataRepository):
    """Puts fail ``failures`` times (a backend that is down), then work."""

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures

    async def _put(self, key: str, value: Any) -> None:
        if self.failures:
            self.failures -= 1
            raise ConnectionError("backend down")
        await super()._put(key, value)


async def test_output_left_by_a_failed_cleanup_is_not_orphaned() -> None:
    # the record cannot be written and the partial output cannot be removed (the S3 chaos
    # rounds found this during an outage): the key must not end with an output and no
    # record, which no later run would ever fix
    src, out, done = MemoryBlobRepository(), FlakyDeletes(failures=1), FlakyPuts(failures=1)
    await src.write_bytes("k", b"x")
    runs: list[str] = []

    async def job(key: str, out: FlakyDeletes) -> None:
        runs.append(key)
        await out.write_bytes(key, b"result")

    task = FunctionTask("t", job, inputs={"src": src}, outputs={"out": out}, done=done)
    pipeline = Pipeline([task], claim_check_interval=0)
    first = await pipeline.run()
    assert first.succeeded == 0 and first.errors
    await pipeline.run()  # the next run (here or in another process) cleans up and re-runs
    assert (await done.get("k"))["success"] is True
    assert await out.read_bytes("k") == b"result"
    assert not await task.live.keys()
    assert runs == ["k", "k"]


@pytest.mark.mongo
async def test_mongo_create_whose_reply_was_lost_is_still_ours(services: dict[str, Any]) -> None:
    # a claim whose insert reached the server but whose reply was lost (PyMongo retries the
    # write, or the repository does) must still be reported as ours: otherwise the key
    # stays claimed by a scheduler that believes someone else runs it
    from pymongo import AsyncMongoClient

    from pydatatask import MongoMetadataRepository

    host, _, port = services["mongo"]["uri"].split("//", 1)[1].split("/", 1)[0].rpartition(":")
    async with TcpProxy(host, int(port)) as proxy:
        client: Any = AsyncMongoClient(
            f"mongodb://127.0.0.1:{proxy.port}/?directConnection=true", serverSelectionTimeoutMS=5000
        )
        db = client[f"pdt_lostreply_{uuid.uuid4().hex[:8]}"]
        try:
            repo = MongoMetadataRepository(db["live"], retry=Backoff(initial=0.01))
            await repo.put("warm", 1)  # connections and monitors are established
            proxy.drop_reply_to = b"insert"
            assert await repo.create("k", {"owner": "me"}) is True
            assert proxy.drop_reply_to is None, "no reply was dropped"
            assert await repo.create("k", {"owner": "other"}) is False
        finally:
            await client.drop_database(db.name)
            await client.close()
