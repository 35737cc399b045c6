"""S3 repositories against the real S3 test server (SeaweedFS from scripts/test-services).

Every test gets a fresh prefix in one bucket made for this test session; the prefix is
emptied (objects and in-progress uploads) after the test and the bucket dropped at the
end. Without $PDT_TEST_SERVICES these tests fail, they never skip.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
import os
import secrets
import time
import tracemalloc
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from pydatatask import (
    BackendUnavailableError,
    Backoff,
    ConfigurationError,
    KeyNotFoundError,
    RepositoryError,
    Session,
    SessionClosedError,
)
from pydatatask.repository.s3 import (
    JsonMetadataS3Repository,
    S3BucketRepository,
    YamlMetadataS3Repository,
)
from pydatatask.testing import BlobRepositoryTests, MetadataRepositoryTests
from tests.conftest import service

pytestmark = pytest.mark.s3

MiB = 1 << 20


@functools.cache
def _aio_session() -> Any:
    from aiobotocore.session import get_session

    return get_session()  # one per process: it caches the parsed S3 service model


def make_client(conf: dict[str, Any], **config: Any) -> Any:
    from aiobotocore.config import AioConfig

    # botocore's own retries off: the repository's retry layer is the one under test
    options: dict[str, Any] = {"max_pool_connections": 64, "retries": {"total_max_attempts": 1}}
    options.update(config)
    return _aio_session().create_client(
        "s3",
        endpoint_url=conf.get("endpoint_override", conf["endpoint"]),
        aws_access_key_id=conf["access_key"],
        aws_secret_access_key=conf["secret_key"],
        region_name=conf.get("region", "us-east-1"),
        config=AioConfig(**options),
    )


async def empty_prefix(client: Any, bucket: str, prefix: str) -> None:
    """Delete every object and abort every upload under ``prefix`` (``""``: the whole bucket)."""
    names = [obj["Key"] async for obj in _objects(client, bucket, prefix)]
    for start in range(0, len(names), 1000):
        batch = [{"Key": n} for n in names[start : start + 1000]]
        await client.delete_objects(Bucket=bucket, Delete={"Objects": batch, "Quiet": True})
    for upload in await _uploads(client, bucket, prefix):
        await client.abort_multipart_upload(Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"])


async def _objects(client: Any, bucket: str, prefix: str = "") -> AsyncIterator[dict[str, Any]]:
    async for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", ()):
            yield obj


async def _uploads(client: Any, bucket: str, prefix: str = "") -> list[dict[str, Any]]:
    response = await client.list_multipart_uploads(Bucket=bucket, Prefix=prefix)
    return list(response.get("Uploads", ()))


async def _outside_prefix(repo: S3BucketRepository) -> set[str]:
    """The objects of the test's bucket outside the repository's prefix."""
    return {n for n in await raw_bucket_names(repo.client, repo.bucket) if not n.startswith(repo.prefix)}


async def raw_bucket_names(client: Any, bucket: str) -> set[str]:
    """Every object in the bucket plus every in-progress multipart upload."""
    names = {obj["Key"] async for obj in _objects(client, bucket)}
    names |= {f"upload:{u['Key']}:{u['UploadId']}" for u in await _uploads(client, bucket)}
    return names


async def _drop_bucket(conf: dict[str, Any], bucket: str) -> None:
    async with make_client(conf) as client:
        try:
            await empty_prefix(client, bucket, "")
            await client.delete_bucket(Bucket=bucket)
        except Exception as exc:
            if "NoSuchBucket" not in str(exc):
                raise


@pytest.fixture(scope="session")
def s3conf(services: dict[str, Any]) -> dict[str, Any]:
    return service(services, "s3")


@pytest.fixture(scope="session")
def bucket(s3conf: dict[str, Any]) -> Iterator[str]:
    name = f"pdt-test-{secrets.token_hex(4)}"
    yield name
    asyncio.run(_drop_bucket(s3conf, name))


@pytest.fixture
async def client(s3conf: dict[str, Any], bucket: str) -> AsyncIterator[Any]:
    async with make_client(s3conf) as c:
        try:
            await c.head_bucket(Bucket=bucket)
        except c.exceptions.ClientError:
            await c.create_bucket(Bucket=bucket)
        yield c


@pytest.fixture
async def prefix(client: Any, bucket: str) -> AsyncIterator[str]:
    p = f"t-{secrets.token_hex(4)}/"
    yield p
    await empty_prefix(client, bucket, p)


# --- the conformance suites --------------------------------------------------------


class TestS3Blob(BlobRepositoryTests):
    @pytest.fixture
    async def repo(self, client: Any, bucket: str, prefix: str) -> AsyncIterator[S3BucketRepository]:
        yield S3BucketRepository(client, bucket, prefix, ".bin")

    async def raw_names(self, repo: Any) -> set[str] | None:
        return await raw_bucket_names(repo.client, repo.bucket)

    async def outside(self, repo: Any) -> set[str] | None:
        return await _outside_prefix(repo)


class TestS3BlobMultipartThroughSession(BlobRepositoryTests):
    """Every non-empty write is a multipart upload; the client comes from a Session."""

    @pytest.fixture
    async def repo(
        self, s3conf: dict[str, Any], bucket: str, prefix: str
    ) -> AsyncIterator[S3BucketRepository]:
        session = Session()

        @session.resource
        async def s3() -> AsyncIterator[Any]:
            async with make_client(s3conf) as c:
                yield c

        repo = S3BucketRepository(s3, bucket, prefix, multipart_threshold=0, part_size=5 * MiB)
        async with session:
            yield repo

    async def raw_names(self, repo: Any) -> set[str] | None:
        return await raw_bucket_names(repo.client, repo.bucket)

    async def outside(self, repo: Any) -> set[str] | None:
        return await _outside_prefix(repo)


class TestS3Yaml(MetadataRepositoryTests):
    @pytest.fixture
    async def repo(self, client: Any, bucket: str, prefix: str) -> AsyncIterator[YamlMetadataS3Repository]:
        yield YamlMetadataS3Repository(client, bucket, prefix)

    async def outside(self, repo: Any) -> set[str] | None:
        return await _outside_prefix(repo.s3)


class TestS3Flat(BlobRepositoryTests):
    """Only the objects directly under the prefix are keys; keys with '/' are refused."""

    stores_path_keys = False

    @pytest.fixture
    async def repo(self, client: Any, bucket: str, prefix: str) -> AsyncIterator[S3BucketRepository]:
        yield S3BucketRepository(client, bucket, prefix, flat=True)

    async def outside(self, repo: Any) -> set[str] | None:
        return await _outside_prefix(repo)


class TestS3Json(MetadataRepositoryTests):
    @pytest.fixture
    async def repo(self, client: Any, bucket: str, prefix: str) -> AsyncIterator[JsonMetadataS3Repository]:
        yield JsonMetadataS3Repository(client, bucket, prefix)


# --- S3-specific behaviour -----------------------------------------------------------


async def test_naming(client: Any, bucket: str, s3conf: dict[str, Any]) -> None:
    repo = S3BucketRepository(client, bucket, "data/", ".bin")
    assert repo.describe() == f"s3://{bucket}/data/*.bin"
    assert repo.object_name("k1") == "data/k1.bin"
    assert repo.url("k1") == f"s3://{bucket}/data/k1.bin"
    assert (repo.bucket, repo.prefix, repo.suffix) == (bucket, "data/", ".bin")
    assert repo.endpoint_url == s3conf["endpoint"]
    meta = YamlMetadataS3Repository(client, bucket, "meta/")
    assert meta.url("k") == f"s3://{bucket}/meta/k.yaml"
    assert meta.object_name("k") == "meta/k.yaml"
    assert (meta.bucket, meta.prefix, meta.suffix, meta.endpoint_url) == (
        bucket,
        "meta/",
        ".yaml",
        s3conf["endpoint"],
    )
    assert JsonMetadataS3Repository(client, bucket).url("k") == f"s3://{bucket}/k.json"


async def test_accessor_outside_session(s3conf: dict[str, Any], bucket: str) -> None:
    session = Session()

    @session.resource
    async def s3() -> AsyncIterator[Any]:
        async with make_client(s3conf) as c:
            yield c

    repo = S3BucketRepository(s3, bucket)
    assert repo.endpoint_url is None
    assert repo.describe() == f"s3://{bucket}/*"
    with pytest.raises(SessionClosedError):
        await repo.keys()
    async with session:
        assert repo.endpoint_url == s3conf["endpoint"]
        await repo.validate()


def test_bad_configuration() -> None:
    with pytest.raises(ConfigurationError, match="5 MiB"):
        S3BucketRepository(object(), "b", part_size=MiB)
    with pytest.raises(ConfigurationError):
        S3BucketRepository(object(), "")
    with pytest.raises(ConfigurationError):
        S3BucketRepository(object(), "a/b")


async def test_pagination_2500_objects(client: Any, bucket: str, prefix: str) -> None:
    repo = S3BucketRepository(client, bucket, prefix, ".txt")
    keys = {f"obj-{i:05d}" for i in range(2500)}
    sem = asyncio.Semaphore(50)

    async def put(key: str) -> None:
        async with sem:
            await repo.write_bytes(key, key.encode())

    started = time.perf_counter()
    async with asyncio.TaskGroup() as tg:
        for key in keys:
            tg.create_task(put(key))
    written = time.perf_counter()
    listed = await repo.keys()
    done = time.perf_counter()
    assert listed == keys
    assert sorted([k async for k in repo])[:2] == ["obj-00000", "obj-00001"]
    print(f"\n2,500 objects: written in {written - started:.2f}s, listed in {done - written:.3f}s")


async def test_prefix_and_suffix_isolation(
    client: Any, bucket: str, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    outside = {
        f"{prefix[:-1]}-sibling/a.bin",  # shares the prefix text without the slash
        f"{prefix[:-1]}a.bin",
        "elsewhere-" + prefix + "a.bin",
        f"{prefix}b.txt",  # wrong suffix
        f"{prefix}a.bin.old",  # suffix not at the end
        f"{prefix}.bin",  # empty key
        f"{prefix}tab\there.bin",  # a control character: not a key
    }
    for name in outside:
        await client.put_object(Bucket=bucket, Key=name, Body=b"not mine")
    try:
        repo = S3BucketRepository(client, bucket, prefix, ".bin")
        await repo.write_bytes("a", b"mine")
        await repo.write_bytes("deeper/c", b"mine too")  # a level below: a nested key
        with caplog.at_level(logging.WARNING, logger="pydatatask.repository"):
            assert await repo.keys() == {"a", "deeper/c"}
        assert repr("tab\there") in caplog.text
        flat = S3BucketRepository(client, bucket, prefix, ".bin", flat=True)
        assert await flat.keys() == {"a"}
        assert set(await flat.versions()) == {"a"}
        for key in ("a", "b", "c", "deeper", "bin", "old", "deeper/c"):
            await repo.delete(key)
        assert await repo.keys() == set()
        for name in outside:
            head = await client.head_object(Bucket=bucket, Key=name)
            assert head["ContentLength"] == len(b"not mine"), name
        # without a suffix every name under the prefix counts (".bin" is a key there)
        assert await S3BucketRepository(client, bucket, prefix).keys() == {"b.txt", "a.bin.old", ".bin"}
    finally:
        for name in outside:
            await client.delete_object(Bucket=bucket, Key=name)


async def test_large_write_goes_multipart(client: Any, bucket: str, prefix: str) -> None:
    repo = S3BucketRepository(client, bucket, prefix, multipart_threshold=5 * MiB, part_size=5 * MiB)
    data = os.urandom(12 * MiB)
    async with repo.open("big", "wb") as f:
        await f.write(data[: 6 * MiB])
        uploads = await _uploads(client, bucket, prefix)
        assert [u["Key"] for u in uploads] == [repo.object_name("big")]
        assert not await repo.contains("big")
        await f.write(data[6 * MiB :])
    assert await _uploads(client, bucket, prefix) == []
    assert await repo.read_bytes("big") == data
    head = await client.head_object(Bucket=bucket, Key=repo.object_name("big"))
    assert head["ContentLength"] == len(data)
    # exactly at the threshold: one PutObject, never an upload
    async with repo.open("small", "wb") as f:
        await f.write(data[: 5 * MiB])
        assert await _uploads(client, bucket, prefix) == []
    assert await repo.read_bytes("small") == data[: 5 * MiB]


async def test_multipart_abort_leaves_nothing(client: Any, bucket: str, prefix: str) -> None:
    repo = S3BucketRepository(client, bucket, prefix, multipart_threshold=5 * MiB, part_size=5 * MiB)
    chunk = os.urandom(MiB)
    with pytest.raises(RuntimeError, match="boom"):
        async with repo.open("aborted", "wb") as f:
            for _ in range(12):
                await f.write(chunk)
            assert len(await _uploads(client, bucket, prefix)) == 1
            raise RuntimeError("boom")
    assert await _uploads(client, bucket, prefix) == []
    assert [o async for o in _objects(client, bucket, prefix)] == []
    assert not await repo.contains("aborted")


async def test_one_big_write_call_is_split_into_parts(client: Any, bucket: str, prefix: str) -> None:
    repo = S3BucketRepository(client, bucket, prefix, multipart_threshold=MiB, part_size=5 * MiB)
    data = os.urandom(11 * MiB + 7)
    await repo.write_bytes("one-call", data)
    assert await repo.read_bytes("one-call") == data


@pytest.mark.slow
async def test_200mb_streams_with_bounded_memory(client: Any, bucket: str, prefix: str) -> None:
    repo = S3BucketRepository(client, bucket, prefix, ".bin")
    size = 200 * 1000 * 1000
    chunk = os.urandom(MiB)
    digest = hashlib.sha256()
    tracemalloc.start()
    try:
        started = time.perf_counter()
        async with repo.open("huge", "wb") as f:
            written = 0
            while written < size:
                piece = chunk[: min(len(chunk), size - written)]
                await f.write(piece)
                digest.update(piece)
                written += len(piece)
        write_done = time.perf_counter()
        check = hashlib.sha256()
        total = 0
        async with repo.open("huge", "rb") as f:
            while piece := await f.read(MiB):
                check.update(piece)
                total += len(piece)
        read_done = time.perf_counter()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert total == size
    assert check.hexdigest() == digest.hexdigest()
    assert peak < 64 * MiB, f"peak Python memory {peak} bytes for a {size}-byte blob"
    print(
        f"\n200 MB: write {write_done - started:.1f}s, read {read_done - write_done:.1f}s, "
        f"peak traced memory {peak / MiB:.1f} MiB"
    )


async def test_wrong_secret_is_refused_without_leaking_it(s3conf: dict[str, Any], bucket: str) -> None:
    secret = "wrong-" + secrets.token_hex(12)
    async with make_client({**s3conf, "secret_key": secret}) as bad:
        repo = S3BucketRepository(bad, bucket, retry=Backoff(attempts=2))
        for attempt in (repo.keys(), repo.validate(), repo.contains("k"), repo.write_bytes("k", b"x")):
            with pytest.raises(BackendUnavailableError) as info:
                await attempt
            text = str(info.value)
            assert secret not in text and secret not in repr(info.value)
            assert bucket in text and s3conf["endpoint"] in text
            assert info.value.__cause__ is not None and secret not in str(info.value.__cause__)


async def test_unknown_access_key_is_refused(s3conf: dict[str, Any], bucket: str) -> None:
    async with make_client({**s3conf, "access_key": "nobody-" + secrets.token_hex(4)}) as bad:
        repo = S3BucketRepository(bad, bucket, retry=Backoff(attempts=1))
        with pytest.raises(BackendUnavailableError, match="access refused") as info:
            await repo.keys()
        assert s3conf["secret_key"] not in str(info.value)


async def test_missing_bucket(client: Any, s3conf: dict[str, Any]) -> None:
    name = f"pdt-missing-{secrets.token_hex(4)}"
    repo = S3BucketRepository(client, name)
    try:
        with pytest.raises(RepositoryError, match=name) as info:
            await repo.validate()
        assert s3conf["endpoint"] in str(info.value) and "does not exist" in str(info.value)
        with pytest.raises(RepositoryError, match=f"{name}.*does not exist"):
            await repo.keys()
        with pytest.raises(RepositoryError, match=f"{name}.*does not exist"):
            await repo.delete("k")
        # (no write here: SeaweedFS creates a missing bucket on PutObject, AWS refuses)
        await S3BucketRepository(client, name, create_bucket=True).validate()
        await repo.validate()
        assert await repo.keys() == set()
        await repo.validate(create=True)  # already there: fine
    finally:
        try:
            await client.delete_bucket(Bucket=name)
        except client.exceptions.NoSuchBucket:
            pass


async def test_connection_refused_is_fast_and_bounded(
    s3conf: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    conf = {**s3conf, "endpoint_override": "http://127.0.0.1:1"}
    async with make_client(conf, connect_timeout=2) as dead:
        repo = S3BucketRepository(dead, "anything", retry=Backoff(attempts=4, initial=0.05))
        started = time.perf_counter()
        with caplog.at_level(logging.DEBUG, logger="pydatatask.repository.s3"):
            with pytest.raises(BackendUnavailableError) as info:
                await repo.keys()
        elapsed = time.perf_counter() - started
    assert elapsed < 10
    assert len([r for r in caplog.records if "retry" in r.getMessage()]) == 3
    text = str(info.value)
    assert "127.0.0.1:1" in text and "anything" in text and "after 4 attempts" in text


async def test_missing_key_reads(client: Any, bucket: str, prefix: str) -> None:
    repo = S3BucketRepository(client, bucket, prefix)
    with pytest.raises(KeyNotFoundError, match="nope"):
        await repo.read_bytes("nope")
    assert not await repo.contains("nope")


async def test_read_resumes_after_a_dropped_connection(
    client: Any, bucket: str, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    repo = S3BucketRepository(client, bucket, prefix)
    data = os.urandom(32 * MiB)
    await repo.write_bytes("k", data)
    with caplog.at_level(logging.DEBUG, logger="pydatatask.repository.s3"):
        async with repo.open("k", "rb") as f:
            first = await f.read(1000)
            # cut the real TCP connection under the reader: the next read fails mid-body
            f._body.raw_stream.connection.transport.abort()  # type: ignore[attr-defined]
            rest = await f.read()
    assert first + rest == data
    assert "resuming" in caplog.text
