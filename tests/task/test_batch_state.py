"""Batches with the state (claims and records) on the real servers: S3 (YAML objects in the
bucket) and MongoDB; outputs in the same backend. Partial failure, retries as a smaller
batch, a second scheduler's batch over keys done meanwhile."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from pymongo import AsyncMongoClient

from pydatatask import MemoryMetadataRepository
from pydatatask.repository.base import MetadataRepository
from pydatatask.repository.mongo import MongoMetadataRepository
from pydatatask.repository.s3 import YamlMetadataS3Repository
from pydatatask.task import FunctionTask, RetryPolicy
from pydatatask.task.lifecycle import execute_batch
from tests.repository.test_mongo import DB, mongo_uri  # noqa: F401 - fixture
from tests.repository.test_s3 import bucket, client, prefix, s3conf  # noqa: F401 - fixtures

KEYS = [f"dir/k {i:02d}" for i in range(20)]  # nested, with a space
BAD = {"dir/k 04", "dir/k 13"}


@pytest.fixture
async def mongo(mongo_uri: str) -> AsyncIterator[dict[str, MetadataRepository]]:  # noqa: F811
    """``out``, ``done`` and ``live`` collections on the MongoDB test server."""
    c: AsyncMongoClient[Any] = AsyncMongoClient(mongo_uri, serverSelectionTimeoutMS=5000)
    names = {n: f"t_{uuid.uuid4().hex}" for n in ("out", "done", "live")}
    try:
        yield {n: MongoMetadataRepository(c[DB][coll]) for n, coll in names.items()}
    finally:
        for coll in names.values():
            await c[DB][coll].drop()
        await c.close()


@pytest.mark.s3
async def test_a_batch_with_state_in_the_bucket_fails_only_its_bad_keys(
    client: Any,  # noqa: F811 - the fixture
    bucket: str,  # noqa: F811
    prefix: str,  # noqa: F811
) -> None:
    await _check(
        {n: YamlMetadataS3Repository(client, bucket, f"{prefix}{n}/") for n in ("out", "done", "live")}
    )


@pytest.mark.mongo
async def test_a_batch_with_state_in_mongo_fails_only_its_bad_keys(
    mongo: dict[str, MetadataRepository],
) -> None:
    await _check(mongo)


async def _check(stores: dict[str, MetadataRepository]) -> None:
    calls: list[list[str]] = []

    async def work(keys: list[str], src: MetadataRepository, out: MetadataRepository) -> dict[str, Exception]:
        calls.append(keys)
        for key in keys:
            await out.put(key, {"v": await src.get(key)})
        return {k: ValueError(f"{k} is bad") for k in keys if k in BAD}

    src = MemoryMetadataRepository({k: i for i, k in enumerate(KEYS)})
    task = FunctionTask(
        "work",
        work,
        inputs={"src": src},
        outputs={"out": stores["out"]},
        done=stores["done"],
        live=stores["live"],
        batch=20,
        retry=RetryPolicy(max_attempts=2, backoff=0),
    )
    records = await execute_batch(task, KEYS)
    assert calls == [KEYS, sorted(BAD)]
    assert {k for k, r in records.items() if not r["success"]} == BAD
    assert all(
        r["attempts"] == (2 if k in BAD else 1) and r["batch"]["size"] == 20 for k, r in records.items()
    )
    assert await stores["out"].keys() == set(KEYS) - BAD
    stored = await stores["done"].get_many(KEYS)
    assert {k: r["success"] for k, r in stored.items()} == {k: k not in BAD for k in KEYS}
    assert await stores["live"].keys() == set()
    # a second scheduler's batch over the same keys: every key is done, nothing runs
    assert await execute_batch(task, KEYS, owner="another-scheduler") == {}
    assert len(calls) == 2 and await stores["live"].keys() == set()
