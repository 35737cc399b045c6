"""Bundles in the S3 metadata repositories, and one claim per batch over them, on the real
test server: what is stored, what readers of ``live`` see, what is sent (requests counted
with botocore's ``before-call`` event: observation, nothing replaced), and two schedulers
racing for the same keys."""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from pydatatask import Session
from pydatatask.pipeline import Pipeline
from pydatatask.repository.bundles import bundle_store, make_bundle
from pydatatask.repository.s3 import S3BucketRepository, YamlMetadataS3Repository
from pydatatask.task import FunctionTask
from pydatatask.task.claims import Claims
from tests.reliability.harness import finish, kill_group, start_script

from . import test_s3
from .s3_batch_pipeline import build, runs
from .test_s3 import make_client
from .test_s3_requests import Requests, _names, _seed

SCRIPT = Path(__file__).with_name("s3_batch_pipeline.py")
ROOT = str(Path(__file__).resolve().parents[2])

s3conf = test_s3.s3conf
bucket = test_s3.bucket
client = test_s3.client
prefix = test_s3.prefix

pytestmark = pytest.mark.s3


@pytest.fixture
def requests(client: Any) -> Iterator[Requests]:
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
    assert await other.get_many(["a", "alone", "zz"]) == {
        "a": {"owner": "me", "lease": 5},
        "alone": {"owner": "x"},
    }
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


def _batched(
    session: Session, s3: Any, bucket: str, prefix: str, batch: int, ran: list[str], stages: int = 2
) -> Pipeline:
    """``src -> mid -> out`` (or ``src -> mid`` with one stage) with ``batch`` keys per call,
    records and claims in the bucket."""

    def blobs(name: str) -> S3BucketRepository:
        return S3BucketRepository(s3, bucket, f"{prefix}{name}/")

    def state(name: str) -> YamlMetadataS3Repository:
        return YamlMetadataS3Repository(s3, bucket, f"{prefix}{name}/")

    async def upper(keys: list[str], a: S3BucketRepository, b: S3BucketRepository) -> None:
        ran.extend(keys)
        for key in keys:
            await b.write_bytes(key, (await a.read_bytes(key)).upper())
            await asyncio.sleep(0)  # let another scheduler interleave

    tasks = [
        FunctionTask(
            name,
            upper,
            inputs={"a": blobs(src)},
            outputs={"b": blobs(dst)},
            done=state(f"done-{name}"),
            live=state(f"live-{name}"),
            batch=batch,
            concurrency=2,
        )
        for name, src, dst in (("one", "src", "mid"), ("two", "mid", "out"))[:stages]
    ]
    return Pipeline(tasks, session)


async def test_batch_bookkeeping_is_at_most_1_2_requests_per_key(
    client: Any, bucket: str, prefix: str, requests: Requests
) -> None:
    keys = [f"k{i:04d}" for i in range(200)]
    await _seed(client, bucket, [f"{prefix}src/{k}" for k in keys], b"abc")
    session = Session()

    @session.resource
    async def s3() -> AsyncIterator[Any]:
        yield client

    ran: list[str] = []
    pipeline = _batched(session, s3, bucket, prefix, 100, ran)
    async with pipeline:
        requests.clear()
        summary = await pipeline.run()
    assert summary.succeeded == 2 * len(keys), summary
    jobs = summary.succeeded
    counts = dict(requests.by_op)
    own = {"GetObject": jobs, "PutObject": jobs}  # each key's input read, its output written
    bookkeeping = {op: n - own.get(op, 0) for op, n in counts.items()}
    per_key = {op: round(n / jobs, 3) for op, n in bookkeeping.items()}
    print("bookkeeping per key:", per_key, "total", round(sum(bookkeeping.values()) / jobs, 3))
    # a record each (PutObject); a claim, its release, the re-check of done and the
    # listings are shared by the 100 keys of a batch
    assert sum(bookkeeping.values()) <= 1.2 * jobs, per_key
    requests.clear()
    assert sorted(await _names(client, bucket, f"{prefix}out/")) == [f"{prefix}out/{k}" for k in keys]
    assert await _names(client, bucket, f"{prefix}live-one/") == []
    assert await _names(client, bucket, f"{prefix}live-two/") == []
    assert sorted(ran) == sorted(keys * 2)


async def test_two_batched_schedulers_run_each_key_once(
    s3conf: dict[str, Any], client: Any, bucket: str, prefix: str
) -> None:
    keys = [f"k{i:04d}" for i in range(200)]
    await _seed(client, bucket, [f"{prefix}src/{k}" for k in keys], b"abc")
    ran: list[str] = []

    async def one_scheduler() -> int:
        session = Session()

        @session.resource
        async def s3() -> AsyncIterator[Any]:
            async with make_client(s3conf) as own:  # each scheduler its own client
                yield own

        pipeline = _batched(session, s3, bucket, prefix, 50, ran, stages=1)
        async with pipeline:
            summary = await pipeline.run()
        assert not summary.failed and not summary.errors, summary
        return summary.succeeded

    done = await asyncio.gather(one_scheduler(), one_scheduler())
    twice = sorted(k for k, n in collections.Counter(ran).items() if n > 1)
    assert not twice, twice
    assert sorted(ran) == keys
    assert sum(done) == len(keys)
    assert len(await _names(client, bucket, f"{prefix}done-one/")) == len(keys)
    assert await _names(client, bucket, f"{prefix}live-one/") == []


async def test_a_scheduler_killed_mid_batch_is_recovered_key_by_key(
    s3conf: dict[str, Any], client: Any, bucket: str, prefix: str, tmp_path: Path
) -> None:
    keys = [f"k{i:03d}" for i in range(30)]
    await _seed(client, bucket, [f"{prefix}src/{k}" for k in keys], b"abc")
    hold = tmp_path / "hold"
    hold.touch()
    env = {"PYTHONPATH": ROOT}
    proc = await start_script(SCRIPT, [str(tmp_path), bucket, prefix, "10"], env)
    try:
        for _ in range(600):
            # both batches of the first wave wrote their outputs and wait
            if len(await _names(client, bucket, f"{prefix}out/")) >= 20:
                break
            assert proc.returncode is None
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("the batches never wrote their outputs")
    finally:
        kill_group(proc.pid)
        await finish(proc, 30)
    hold.unlink()
    killed = {k for event, k in runs(tmp_path) if event == "start"}
    assert len(killed) == 20
    assert await _names(client, bucket, f"{prefix}done/") == []
    assert len(await _names(client, bucket, f"{prefix}live/")) == 2  # one claim object per batch
    live = YamlMetadataS3Repository(client, bucket, f"{prefix}live/")
    assert await live.keys() == killed  # read as one claim per key
    # a new run takes the dead scheduler's claims over key by key and finishes every key once
    assert (await build(tmp_path, s3conf, bucket, prefix, 10).run()).ok
    ends = collections.Counter(k for event, k in runs(tmp_path) if event == "end")
    assert ends == collections.Counter(dict.fromkeys(keys, 1))
    starts = collections.Counter(k for event, k in runs(tmp_path) if event == "start")
    assert all(starts[k] == (2 if k in killed else 1) for k in keys)
    done = YamlMetadataS3Repository(client, bucket, f"{prefix}done/")
    records = await done.get_many(keys)
    assert sorted(records) == keys and all(r["success"] for r in records.values())
    out = S3BucketRepository(client, bucket, f"{prefix}out/")
    assert {k: await out.read_bytes(k) for k in keys} == dict.fromkeys(keys, b"ABC")
    assert await _names(client, bucket, f"{prefix}live/") == []


class _PausingBundles(YamlMetadataS3Repository):
    """A real S3 metadata repository whose next replace of a bundle waits, before it is
    sent, until told to go on: a batch's renewal under way."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.armed = False
        self.reached = asyncio.Event()
        self.go = asyncio.Event()

    async def replace_bundle_if(self, name: str, expected: dict[str, Any], bundle: dict[str, Any]) -> bool:
        if self.armed:
            self.armed = False
            self.reached.set()
            await self.go.wait()
        return await super().replace_bundle_if(name, expected, bundle)


@pytest.mark.parametrize("how", ["release_many", "release"])
async def test_a_batch_released_during_its_renewal_has_lost_no_claim(
    client: Any, bucket: str, prefix: str, how: str
) -> None:
    """The batch ends (records written, claims released) while the scheduler's heartbeat
    renews its object: the heartbeat must not report the released claims lost (it used to,
    and the scheduler then cancelled the finished batch: "claim lost")."""
    live = _PausingBundles(client, bucket, prefix)
    claims = Claims(live, "t", "me", lease=30)
    keys = ["a", "b", "c"]
    held = await claims.acquire_many(keys, batch="b1")
    assert set(held) == set(keys)
    batch = held["a"].batch
    assert batch is not None
    batch.renewed = 0.0  # due for renewal
    live.armed = True
    beat = asyncio.create_task(claims.heartbeat(held["a"]))
    await asyncio.wait_for(live.reached.wait(), 30)
    if how == "release_many":
        end = asyncio.create_task(claims.release_many([held[k] for k in keys]))
    else:
        end = asyncio.gather(*(claims.release(held[k]) for k in keys))
    await asyncio.sleep(0.1)  # the release has let go of the claims, and waits for the renewal
    live.go.set()
    assert await beat is True, "a released claim was reported lost"
    await end
    assert claims.held() == {}
    assert await YamlMetadataS3Repository(client, bucket, prefix).keys() == set()
    assert await _names(client, bucket, prefix) == []
