"""What S3 repositories send: requests counted by operation on the real test server.

The counts come from botocore's ``before-call`` event of the client in use (observation
of the requests really sent; nothing is replaced). Bookkeeping of a job (claim, record,
release, re-check, listings) is what the issue of shared state in a bucket is about: the
last tests run a two-stage pipeline with its state in the bucket and count per job.
"""

from __future__ import annotations

import asyncio
import collections
import math
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from pydatatask import Session
from pydatatask.pipeline import Pipeline
from pydatatask.repository.s3 import S3BucketRepository, YamlMetadataS3Repository, _bucket
from pydatatask.task import FunctionTask

from . import test_s3
from .test_s3 import make_client

# the S3 fixtures of test_s3 (the session's bucket, a client, a fresh prefix per test)
s3conf = test_s3.s3conf
bucket = test_s3.bucket
client = test_s3.client
prefix = test_s3.prefix

pytestmark = pytest.mark.s3


class Requests:
    """Counts the S3 operations a client sends, by name (``PutObject``, ...)."""

    def __init__(self) -> None:
        self.by_op: collections.Counter[str] = collections.Counter()

    def __call__(self, model: Any, **_: Any) -> None:
        self.by_op[model.name] += 1

    def clear(self) -> None:
        self.by_op.clear()

    def total(self) -> int:
        return sum(self.by_op.values())


@pytest.fixture
def requests(client: Any) -> Iterator[Requests]:
    seen = Requests()
    client.meta.events.register("before-call.s3", seen)
    yield seen
    client.meta.events.unregister("before-call.s3", seen)


async def _seed(client: Any, bucket: str, names: list[str], body: bytes = b"x") -> None:
    gate = asyncio.Semaphore(32)

    async def one(name: str) -> None:
        async with gate:
            await client.put_object(Bucket=bucket, Key=name, Body=body)

    await asyncio.gather(*(one(n) for n in names))


# --- bulk deletes ---------------------------------------------------------------------
@pytest.mark.parametrize("n", [100, 2500])
async def test_delete_many_is_one_delete_objects_per_1000_keys(
    client: Any, bucket: str, prefix: str, requests: Requests, n: int
) -> None:
    repo = YamlMetadataS3Repository(client, bucket, prefix)
    keys = [f"claim {i:05d}" for i in range(n)]
    await _seed(client, bucket, [repo.object_name(k) for k in keys[::50]])  # the others never there
    requests.clear()
    await repo.delete_many(keys)
    assert requests.by_op == {"DeleteObjects": math.ceil(n / 1000)}, requests.by_op
    assert await repo.keys() == set()


async def test_blob_delete_many_aborts_the_uploads_with_one_listing(
    client: Any, bucket: str, prefix: str, requests: Requests
) -> None:
    repo = S3BucketRepository(client, bucket, prefix)
    await _seed(client, bucket, [repo.object_name(f"k{i}") for i in range(20)])
    left = await client.create_multipart_upload(Bucket=bucket, Key=repo.object_name("k3"))
    other = await client.create_multipart_upload(Bucket=bucket, Key=repo.object_name("kept"))
    requests.clear()
    await repo.delete_many([f"k{i}" for i in range(20)])
    assert requests.by_op == {"DeleteObjects": 1, "ListMultipartUploads": 1, "AbortMultipartUpload": 1}
    uploads = (await client.list_multipart_uploads(Bucket=bucket, Prefix=prefix)).get("Uploads", [])
    assert [u["UploadId"] for u in uploads] == [other["UploadId"]]
    assert left["UploadId"] not in {u["UploadId"] for u in uploads}
    await client.abort_multipart_upload(
        Bucket=bucket, Key=repo.object_name("kept"), UploadId=other["UploadId"]
    )


# --- compare-and-swap without reading back -----------------------------------------------
async def test_replace_of_own_write_is_one_conditional_put(
    client: Any, bucket: str, prefix: str, requests: Requests
) -> None:
    repo = YamlMetadataS3Repository(client, bucket, prefix)
    claim = {"owner": "me", "heartbeat": 1.0}
    assert await repo.create("job", claim)
    requests.clear()
    for beat in (2.0, 3.0, 4.0):  # heartbeats: each replaces what the previous one stored
        new = dict(claim, heartbeat=beat)
        assert await repo.replace_if("job", claim, new)
        claim = new
    assert requests.by_op == {"PutObject": 3}, requests.by_op
    assert await repo.get("job") == claim


async def test_replace_after_another_writer_reads_and_refuses(
    client: Any, bucket: str, prefix: str, requests: Requests
) -> None:
    repo = YamlMetadataS3Repository(client, bucket, prefix)
    other = YamlMetadataS3Repository(client, bucket, prefix)  # another scheduler
    mine = {"owner": "me", "heartbeat": 1.0}
    assert await repo.create("job", mine)
    taken = {"owner": "them", "heartbeat": 9.0}
    assert await other.replace_if("job", mine, taken)
    requests.clear()
    # the remembered ETag no longer matches: the conditional put fails, the value is read
    # and found changed; nothing is overwritten
    assert not await repo.replace_if("job", mine, dict(mine, heartbeat=2.0))
    assert await repo.get("job") == taken
    # an equal value written by someone else (another ETag is possible) still compares equal
    await other.put("job", dict(mine))
    assert await repo.replace_if("job", mine, {"owner": "me", "heartbeat": 5.0})
    assert await repo.get("job") == {"owner": "me", "heartbeat": 5.0}
    # gone: False, nothing created
    await other.delete("job")
    assert not await repo.replace_if("job", {"owner": "me", "heartbeat": 5.0}, {"owner": "me"})
    assert not await repo.contains("job")


# --- concurrent checks and deletes go together ---------------------------------------------
ODD_KEYS = ["a", "a-b", "a.b", "a/b", "a/b c", "a\u00e9", "b", "z/\u00fcber/x", "zz"]


async def test_concurrent_contains_share_listings(
    client: Any, bucket: str, prefix: str, requests: Requests
) -> None:
    repo = YamlMetadataS3Repository(client, bucket, prefix)  # suffix ".yaml": name order != key order
    present = [k for i, k in enumerate(ODD_KEYS) if i % 2 == 0] + [f"p{i:03d}" for i in range(0, 200, 2)]
    absent = [k for i, k in enumerate(ODD_KEYS) if i % 2 == 1] + [f"p{i:03d}" for i in range(1, 200, 2)]
    await _seed(client, bucket, [repo.object_name(k) for k in present])
    await _seed(client, bucket, [f"{prefix}p001.yam", f"{prefix}p003.yaml.old", f"{prefix}a"])  # near misses
    requests.clear()
    asked = present + absent
    answers = await asyncio.gather(*(repo.contains(k) for k in asked))
    assert dict(zip(asked, answers, strict=True)) == {k: k in present for k in asked}
    assert requests.total() <= len(asked) // 4, requests.by_op  # far fewer than one per key
    assert set(requests.by_op) <= {"HeadObject", "ListObjectsV2"}


async def test_contains_past_a_truncated_page_asks_each_key(
    client: Any, bucket: str, prefix: str, requests: Requests, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_bucket, "BULK_NAMES", 5)  # a page of 5 names (the S3 maximum is 1,000)
    repo = S3BucketRepository(client, bucket, prefix)
    await _seed(client, bucket, [repo.object_name(f"k{i:02d}") for i in range(0, 30, 3)])
    asked = [f"k{i:02d}" for i in range(30)]
    answers = await asyncio.gather(*(repo.contains(k) for k in asked))
    assert dict(zip(asked, answers, strict=True)) == {k: int(k[1:]) % 3 == 0 for k in asked}


async def test_concurrent_deletes_share_delete_objects(
    client: Any, bucket: str, prefix: str, requests: Requests
) -> None:
    repo = YamlMetadataS3Repository(client, bucket, prefix)
    keys = [f"c{i:03d}" for i in range(200)]
    await _seed(client, bucket, [repo.object_name(k) for k in keys])
    requests.clear()
    await asyncio.gather(*(repo.delete(k) for k in keys))
    assert await repo.keys() == set()
    assert requests.by_op["DeleteObjects"] + requests.by_op["DeleteObject"] <= len(keys) // 4, requests.by_op


async def test_a_cancelled_check_leaves_the_others_answered(client: Any, bucket: str, prefix: str) -> None:
    repo = S3BucketRepository(client, bucket, prefix)
    await _seed(client, bucket, [repo.object_name("here")])
    first = asyncio.ensure_future(repo.contains("here"))
    waiting = [asyncio.ensure_future(repo.contains(k)) for k in ("here", "gone", "also gone")]
    await asyncio.sleep(0)
    waiting[1].cancel()
    assert await first
    assert await waiting[0]
    assert not await waiting[2]
    with pytest.raises(asyncio.CancelledError):
        await waiting[1]


# --- a pipeline with its state in the bucket ---------------------------------------------
def _pipeline(
    session: Session, s3: Any, bucket: str, prefix: str, ran: list[str] | None = None, concurrency: int = 16
) -> Pipeline:
    """Two chained stages ``src -> mid -> out`` over small objects; both tasks keep their
    records and claims in the bucket (as schedulers on several machines must)."""

    def blobs(name: str) -> S3BucketRepository:
        return S3BucketRepository(s3, bucket, f"{prefix}{name}/")

    def state(name: str) -> YamlMetadataS3Repository:
        return YamlMetadataS3Repository(s3, bucket, f"{prefix}{name}/")

    async def upper(key: str, a: S3BucketRepository, b: S3BucketRepository) -> None:
        if ran is not None:
            ran.append(key)
        await b.write_bytes(key, (await a.read_bytes(key)).upper())

    one = FunctionTask(
        "one",
        upper,
        inputs={"a": blobs("src")},
        outputs={"b": blobs("mid")},
        done=state("done1"),
        live=state("live1"),
        logs=S3BucketRepository(s3, bucket, f"{prefix}logs1/"),
        concurrency=concurrency,
    )
    two = FunctionTask(
        "two",
        upper,
        inputs={"a": blobs("mid")},
        outputs={"b": blobs("out")},
        done=state("done2"),
        live=state("live2"),
        logs=S3BucketRepository(s3, bucket, f"{prefix}logs2/"),
        concurrency=concurrency,
    )
    return Pipeline([one, two], session)


#: keys of the pipeline tests: enough jobs that a listing per tick is shared by many
PIPELINE_KEYS = 120


async def test_bookkeeping_is_at_most_three_requests_per_job(
    client: Any, bucket: str, prefix: str, requests: Requests
) -> None:
    keys = [f"k{i:04d}" for i in range(PIPELINE_KEYS)]
    await _seed(client, bucket, [f"{prefix}src/{k}" for k in keys], b"abc")
    session = Session()

    @session.resource
    async def s3() -> AsyncIterator[Any]:
        yield client

    pipeline = _pipeline(session, s3, bucket, prefix)
    async with pipeline:
        requests.clear()
        summary = await pipeline.run()
    assert summary.succeeded == 2 * len(keys), summary
    jobs = summary.succeeded
    counts = dict(requests.by_op)
    # each job's own work: one GetObject of its input, one PutObject of its output
    own = {"GetObject": jobs, "PutObject": jobs}
    bookkeeping = {op: n - own.get(op, 0) for op, n in counts.items()}
    per_job = {op: round(n / jobs, 2) for op, n in bookkeeping.items()}
    # a claim (conditional PutObject), a record (PutObject), and the rest shared by many
    # jobs: the re-check of done and the releases of claims, listings of every repository
    print("bookkeeping per job:", per_job, "total", round(sum(bookkeeping.values()) / jobs, 2))
    assert sum(bookkeeping.values()) <= 3 * jobs, per_job
    assert counts.get("HeadObject", 0) < jobs / 2, per_job
    assert counts.get("DeleteObject", 0) + counts.get("DeleteObjects", 0) < jobs / 2, per_job
    requests.clear()
    assert sorted(await _names(client, bucket, f"{prefix}out/")) == [f"{prefix}out/{k}" for k in keys]
    assert await _names(client, bucket, f"{prefix}live1/") == []
    assert await _names(client, bucket, f"{prefix}live2/") == []
    assert len(await _names(client, bucket, f"{prefix}done2/")) == len(keys)


async def test_two_schedulers_sharing_state_in_the_bucket_run_each_job_once(
    s3conf: dict[str, Any], client: Any, bucket: str, prefix: str
) -> None:
    """Coalesced re-checks and releases keep the claim protocol: a scheduler whose listing
    is older than another's finished job finds its record after claiming the key."""
    keys = [f"k{i:04d}" for i in range(PIPELINE_KEYS)]
    await _seed(client, bucket, [f"{prefix}src/{k}" for k in keys], b"abc")
    ran: list[str] = []

    async def one_scheduler() -> int:
        session = Session()

        @session.resource
        async def s3() -> AsyncIterator[Any]:
            async with make_client(s3conf) as own:  # each scheduler its own client
                yield own

        pipeline = _pipeline(session, s3, bucket, prefix, ran, concurrency=8)
        async with pipeline:
            summary = await pipeline.run()
        assert not summary.failed and not summary.errors, summary
        return summary.succeeded

    done = await asyncio.gather(one_scheduler(), one_scheduler())
    twice = sorted(k for k, n in collections.Counter(ran).items() if n > 2)  # a key runs in 2 stages
    assert not twice, twice
    assert len(ran) == 2 * len(keys)
    assert sum(done) == 2 * len(keys)
    assert sorted(await _names(client, bucket, f"{prefix}out/")) == [f"{prefix}out/{k}" for k in keys]
    assert await _names(client, bucket, f"{prefix}live1/") == []
    assert await _names(client, bucket, f"{prefix}live2/") == []


async def _names(client: Any, bucket: str, prefix: str) -> list[str]:
    names: list[str] = []
    async for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        names.extend(obj["Key"] for obj in page.get("Contents", ()))
    return names
