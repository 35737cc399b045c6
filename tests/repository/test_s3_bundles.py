"""Bundles in the S3 metadata repositories, and one claim per batch over them, on the real
test server: what is stored, what readers of ``live`` see, what is sent (requests counted
with botocore's ``before-call`` event: observation, nothing replaced), and two schedulers
racing for the same keys."""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncIterator
from typing import Any

import pytest

from pydatatask import Session
from pydatatask.pipeline import Pipeline
from pydatatask.repository.bundles import bundle_store, make_bundle
from pydatatask.repository.s3 import S3BucketRepository, YamlMetadataS3Repository
from pydatatask.task import FunctionTask
from pydatatask.task.claims import Claims

from . import test_s3
from .test_s3 import make_client
from .test_s3_requests import Requests, _names, _seed

s3conf = test_s3.s3conf
bucket = test_s3.bucket
client = test_s3.client
prefix = test_s3.prefix

pytestmark = pytest.mark.s3


@pytest.fixture
def requests(client: Any) -> Any:
    seen = Requests()
    client.meta.events.register("before-call.s3", seen)
    yield seen
    client.meta.events.unregister("before-call.s3", seen)


async def test_a_bundle_reads_as_one_value_per_key(client: Any, bucket: str, prefix: str) -> None:
    live = YamlMetadataS3Repository(client, bucket, prefix)
    store = bundle_store(live)
    assert store is not None
    await live.put("alone", {"owner": "x"})
    bundle = make_bundle({"owner": "me", "lease": 5}, ["a", "b/c"], {"b/c": {"run": 1}})
    assert await store.create_bundle("b1", bundle)
    assert not await store.create_bundle("b1", bundle)  # exclusive
    other = YamlMetadataS3Repository(client, bucket, prefix)  # another process: never saw it
    assert await other.keys() == {"alone", "a", "b/c"}
    assert set(await other.versions()) == {"alone", "a", "b/c"}
    assert await other.get("b/c") == {"owner": "me", "lease": 5, "run": 1}
    assert await other.get_many(["a", "alone", "zz"]) == {"a": {"owner": "me", "lease": 5}, "alone": {"owner": "x"}}
    assert await other.contains("a") and not await other.contains("zz")
    assert not await other.create("a", {"owner": "y"})  # a bundle holds it
    assert await other.keys() == {"alone", "a", "b/c"}
    # the bundle is one object, apart from every key's
    names = await _names(client, bucket, prefix)
    assert len(names) == 2 and f"{prefix}alone.yaml" in names


async def test_delete_and_takeover_of_a_bundled_key(client: Any, bucket: str, prefix: str) -> None:
    live = YamlMetadataS3Repository(client, bucket, prefix)
    store = bundle_store(live)
    assert store is not None
    assert await store.create_bundle("b1", make_bundle({"owner": "me"}, ["a", "b", "c"]))
    other = YamlMetadataS3Repository(client, bucket, prefix)
    await other.keys()
    await other.delete("a")
    assert await live.keys() == {"b", "c"}
    # a compare-and-swap on a bundled key moves it out; of two, one wins
    won = await asyncio.gather(
        other.replace_if("b", {"owner": "me"}, {"owner": "r1"}),
        YamlMetadataS3Repository(client, bucket, prefix).replace_if("b", {"owner": "me"}, {"owner": "r2"}),
    )
    assert sorted(won) == [False, True]
    assert (await live.get("b"))["owner"] in ("r1", "r2")
    assert not await other.replace_if("c", {"owner": "other"}, {"owner": "r3"})
    assert await store.get_bundle("b1") == make_bundle({"owner": "me"}, ["c"])
    await other.delete_many(["c", "b"])
    assert await live.keys() == set()
    assert await _names(client, bucket, prefix) == []


async def test_one_claim_object_per_batch(client: Any, bucket: str, prefix: str, requests: Requests) -> None:
    live = YamlMetadataS3Repository(client, bucket, prefix)
    claims = Claims(live, "t", "me", lease=30)
    keys = [f"k{i:03d}" for i in range(100)]
    requests.clear()
    held = await claims.acquire_many(keys, batch="b1")
    assert sorted(held) == keys
    # the bundle, then one listing to see who else claims the keys
    assert requests.by_op == {"PutObject": 1, "ListObjectsV2": 1}, requests.by_op
    assert len(await _names(client, bucket, prefix)) == 1
    other = Claims(YamlMetadataS3Repository(client, bucket, prefix), "t", "you")
    theirs = await other.acquire_many([*keys[:10], "new"], batch="b2")
    assert sorted(theirs) == ["new"]  # the keys another claim names are given up
    assert await live.keys() == {*keys, "new"}
    requests.clear()
    assert await claims.update_many(list(held.values()), run={"id": 7}) == []
    assert all(h.value["run"] == {"id": 7} for h in held.values())
    assert await claims.heartbeat(held["k005"])  # renewed just now: nothing sent
    await claims.release_many([held[k] for k in keys[:50]])
    assert requests.by_op == {"PutObject": 2}, requests.by_op
    assert (await other.live.get("k077"))["run"] == {"id": 7}
    assert await other.live.get_many(keys[:50]) == {}
    requests.clear()
    await claims.release_many([held[k] for k in keys[50:]])
    assert requests.by_op == {"DeleteObject": 1}, requests.by_op
    assert await live.keys() == {"new"}
    assert not claims.held()
