"""The claim/lease protocol (``pydatatask.task.claims``) on every kind of live repository:
memory, files, S3 (the real test server) and Mongo (the real test server)."""

from __future__ import annotations

import asyncio
import secrets
import threading
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from pydatatask.repository.base import MetadataRepository
from pydatatask.repository.filesystem import FileRepository
from pydatatask.repository.memory import MemoryMetadataRepository
from pydatatask.repository.serialized import YamlMetadataFileRepository, YamlMetadataRepository
from pydatatask.task import FunctionTask
from pydatatask.task.claims import Claim, Claims
from pydatatask.task.records import make_claim
from pydatatask.task.recovery import recover
from tests.conftest import service
from tests.repository.test_s3 import empty_prefix, make_client

BACKENDS = [
    "memory",
    "files",
    pytest.param("s3", marks=pytest.mark.s3),
    pytest.param("mongo", marks=pytest.mark.mongo),
]


@pytest.fixture(params=BACKENDS)
async def live(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[MetadataRepository]:
    kind = request.param
    if kind == "memory":
        yield MemoryMetadataRepository()
    elif kind == "files":
        yield YamlMetadataFileRepository(tmp_path / "live", fsync=False)
    elif kind == "s3":
        from pydatatask.repository.s3 import JsonMetadataS3Repository

        conf = service(request.getfixturevalue("services"), "s3")
        bucket = "pdt-claims-test"
        prefix = f"claims-{secrets.token_hex(4)}/"
        async with make_client(conf) as client:
            try:
                await client.head_bucket(Bucket=bucket)
            except client.exceptions.ClientError:
                await client.create_bucket(Bucket=bucket)
            try:
                yield JsonMetadataS3Repository(client, bucket, prefix)
            finally:
                await empty_prefix(client, bucket, prefix)
    else:
        from pymongo import AsyncMongoClient

        from pydatatask.repository.mongo import MongoMetadataRepository

        uri = str(service(request.getfixturevalue("services"), "mongo")["uri"])
        client: AsyncMongoClient[Any] = AsyncMongoClient(uri, serverSelectionTimeoutMS=5000)
        coll = client["pdt_test"][f"claims_{uuid.uuid4().hex}"]
        try:
            yield MongoMetadataRepository(coll)
        finally:
            await coll.drop()
            await client.close()


async def test_acquire_is_create_if_absent_among_20_racers(live: MetadataRepository) -> None:
    racers = [Claims(live, "t", owner=f"s{i}") for i in range(20)]
    got = await asyncio.gather(*(c.acquire("k") for c in racers))
    winners = [c for c, claim in zip(racers, got, strict=True) if claim is not None]
    assert len(winners) == 1
    stored = await live.get("k")
    assert stored["owner"] == winners[0].owner and stored["task"] == "t" and stored["key"] == "k"
    assert list(winners[0].held()) == ["k"]
    assert all(not c.held() for c in racers if c is not winners[0])


async def test_update_and_heartbeat_renew_the_stored_claim(live: MetadataRepository) -> None:
    claims = Claims(live, "t", lease=30.0)
    claim = await claims.acquire("k", extra="x")
    assert claim is not None and claim.value["lease"] == 30.0 and claim.value["extra"] == "x"
    first = claim.value["heartbeat"]
    assert await claims.update(claim, state="retrying", attempt=2)
    assert await claims.heartbeat(claim)
    stored = await live.get("k")
    assert stored == claim.value
    assert stored["state"] == "retrying" and stored["attempt"] == 2 and stored["heartbeat"] >= first


async def test_a_claim_taken_over_is_lost_and_never_overwritten(live: MetadataRepository) -> None:
    old = Claims(live, "t", owner="old")
    new = Claims(live, "t", owner="new")
    claim = await old.acquire("k")
    assert claim is not None
    assert new.is_stale(dict(claim.value, heartbeat=0.0))
    # the old owner is presumed dead: its stored claim is expired, then taken over
    expired = dict(claim.value, heartbeat=0.0)
    await live.put("k", expired)
    taken = await new.take_over("k", expired)
    assert taken is not None and taken.value["owner"] == "new-recovery"
    assert not await old.heartbeat(claim)
    assert "k" not in old.held()
    assert (await live.get("k"))["owner"] == "new-recovery"


async def test_a_claim_in_this_processs_memory_is_renewed_in_place_and_lost_when_replaced() -> None:
    """Claims in memory of this process are renewed without a round trip, with the same
    compare-and-swap: a claim someone replaced meanwhile is lost, not overwritten."""
    store = MemoryMetadataRepository()
    claims = Claims(store, "t")
    claim = claims.acquire_local(store, "k")
    assert claim is not None
    assert await claims.update(claim, run={"dir": "/jobs/x"}, attempt=1)
    stored = await store.get("k")
    assert stored == claim.value and stored["run"] == {"dir": "/jobs/x"} and stored["attempt"] == 1
    other = dict(claim.value, owner="someone else")
    await store.put("k", other)
    assert not await claims.update(claim, attempt=2)
    assert claims.get("k") is None
    assert await store.get("k") == other


async def test_stale_takeover_by_compare_and_swap_has_one_winner_of_20(live: MetadataRepository) -> None:
    value = make_claim("dead", "t", "k", time.time() - 120, lease=60.0)
    await live.put("k", value)
    racers = [Claims(live, "t", owner=f"s{i}") for i in range(20)]
    assert all(c.is_stale(value) for c in racers)
    got = await asyncio.gather(*(c.take_over("k", value) for c in racers))
    won = [claim for claim in got if claim is not None]
    assert len(won) == 1
    assert (await live.get("k")) == won[0].value


async def test_lease_and_owner_rules(live: MetadataRepository) -> None:
    claims = Claims(live, "t", owner="me", lease=5.0)
    now = time.time()
    fresh = make_claim("other", "t", "k", now, lease=5.0)
    assert not claims.is_stale(fresh, now)
    assert claims.is_stale(fresh, now + 6)
    assert claims.expires(fresh) == pytest.approx(now + 5)
    # a claim without a lease of its own is judged by this lease
    no_lease = {k: v for k, v in fresh.items() if k != "lease"}
    assert claims.is_stale(no_lease, now + 6) and not claims.is_stale(no_lease, now + 4)
    # ours is never stale; a value that is not a claim always is; no heartbeat: never by lease
    assert not claims.is_stale(dict(fresh, owner="me"), now + 1000)
    assert claims.is_stale(["not", "a", "claim"])
    assert claims.expires({"owner": "x"}) is None


async def test_release_and_abandon(live: MetadataRepository) -> None:
    claims = Claims(live, "t", owner="me")
    claim = await claims.acquire("a")
    assert claim is not None
    await claims.release(claim)
    assert not await live.contains("a") and not claims.held()

    claim = await claims.acquire("b")
    assert claim is not None
    assert await claims.update(claim, wrote=[["out", "b-part-1"]])
    await claims.abandon(claim)
    assert not claims.held()
    stored = await live.get("b")
    assert stored["owner"] == "me-abandoned" and stored["heartbeat"] == 0.0
    assert stored["wrote"] == [["out", "b-part-1"]]  # the next recovery removes them
    # anyone (even this process, under its own owner name) finds it stale at once
    assert claims.is_stale(stored) and Claims(live, "t").is_stale(stored)


async def test_an_update_after_release_is_not_a_loss(live: MetadataRepository) -> None:
    claims = Claims(live, "t")
    claim = await claims.acquire("k")
    assert claim is not None
    await claims.release(claim)
    assert await claims.update(claim, state="running")  # the job ended: nothing was lost
    assert not await live.contains("k")


async def _noop(key: str, out: Any) -> None:
    await out.put(key, 1)


async def test_recovery_of_an_orphan_removes_its_outputs_and_frees_the_key(live: MetadataRepository) -> None:
    out = MemoryMetadataRepository()
    task = FunctionTask(
        "t", _noop, inputs={"src": MemoryMetadataRepository()}, outputs={"out": out}, live=live
    )
    await out.put("k", "partial")
    await out.put("k-extra", "partial")
    orphan = dict(make_claim("dead", "t", "k", time.time() - 600), wrote=[["out", "k-extra"]])
    await live.put("k", orphan)
    assert task.claims.is_stale(orphan, owner="me")
    await recover(task, "k", orphan)
    assert not await live.contains("k")
    assert not await out.contains("k") and not await out.contains("k-extra")
    assert not task.claims.held()


async def test_recovery_keeps_the_outputs_of_a_recorded_job(live: MetadataRepository) -> None:
    out = MemoryMetadataRepository()
    task = FunctionTask(
        "t", _noop, inputs={"src": MemoryMetadataRepository()}, outputs={"out": out}, live=live
    )
    await out.put("k", "complete")
    await task.done.put("k", {"success": True})
    orphan = make_claim("dead", "t", "k", time.time() - 600)
    await live.put("k", orphan)
    await recover(task, "k", orphan)
    assert not await live.contains("k") and await out.get("k") == "complete"


async def test_recovery_by_20_schedulers_cleans_up_once(live: MetadataRepository) -> None:
    removed: list[str] = []

    class Counting(MemoryMetadataRepository):
        async def delete(self, key: str) -> None:
            removed.append(key)
            await super().delete(key)

    out = Counting()
    tasks = [
        FunctionTask("t", _noop, inputs={"src": MemoryMetadataRepository()}, outputs={"out": out}, live=live)
        for _ in range(20)
    ]
    orphan = make_claim("dead", "t", "k", time.time() - 600)
    await live.put("k", orphan)
    await asyncio.gather(*(recover(t, "k", orphan) for t in tasks))
    assert removed == ["k"]
    assert not await live.contains("k")


class _PausingFiles(FileRepository):
    """A real file repository whose next conditional replace stops after its compare and
    before its write until told to go on: the window in which a release used to delete the
    claim, which the write then put back (a claim of a finished job, holding its key)."""

    def __init__(self, root: Path) -> None:
        super().__init__(root, ".yaml", fsync=False)
        self.armed = False
        self.reached = threading.Event()
        self.go = threading.Event()
        self.written = threading.Event()

    def _write_sync(self, path: str, data: bytes) -> None:
        if self.armed:
            self.armed = False
            self.reached.set()
            self.go.wait(30)
            super()._write_sync(path, data)
            self.written.set()
            return
        super()._write_sync(path, data)


async def _heartbeat_paused_in_its_write(
    tmp_path: Path,
) -> tuple[_PausingFiles, Claims, Claim, asyncio.Task[bool]]:
    """A claim held in a real file repository, and its heartbeat stopped between the
    replace's compare and its write."""
    files = _PausingFiles(tmp_path / "live")
    claims = Claims(YamlMetadataRepository(files), "t", lease=60.0)
    claim = await claims.acquire("k")
    assert claim is not None
    files.armed = True
    beat = asyncio.create_task(claims.heartbeat(claim))
    assert await asyncio.to_thread(files.reached.wait, 30)
    return files, claims, claim, beat


@pytest.mark.parametrize("how", ["release", "release_many", "abandon"])
async def test_a_release_during_a_heartbeat_is_not_undone_by_it(tmp_path: Path, how: str) -> None:
    files, claims, claim, beat = await _heartbeat_paused_in_its_write(tmp_path)
    if how == "release":
        end = asyncio.create_task(claims.release(claim))
    elif how == "release_many":
        end = asyncio.create_task(claims.release_many([claim]))
    else:
        end = asyncio.create_task(claims.abandon(claim))
    await asyncio.sleep(0.2)  # the release is under way (before the fix: done) meanwhile
    files.go.set()
    assert await beat is True
    await end
    if how == "abandon":
        left = await claims.live.get("k")
        assert left["heartbeat"] == 0.0 and str(left["owner"]).endswith("-abandoned"), left
    else:
        assert not await claims.live.contains("k"), "the heartbeat wrote the released claim back"


async def test_a_cancelled_heartbeat_still_holds_back_the_release(tmp_path: Path) -> None:
    files, claims, claim, beat = await _heartbeat_paused_in_its_write(tmp_path)
    beat.cancel()  # the write in its thread goes on
    with pytest.raises(asyncio.CancelledError):
        await beat
    end = asyncio.create_task(claims.release(claim))
    await asyncio.sleep(0.2)
    files.go.set()
    await end
    assert await asyncio.to_thread(files.written.wait, 30)  # the heartbeat's write is over
    assert not await claims.live.contains("k"), "the cancelled heartbeat wrote the released claim back"


async def test_the_heartbeat_after_a_cancelled_one_compares_with_what_that_one_stored(tmp_path: Path) -> None:
    files, claims, claim, beat = await _heartbeat_paused_in_its_write(tmp_path)
    beat.cancel()  # its write goes on, and stores a new heartbeat
    with pytest.raises(asyncio.CancelledError):
        await beat
    files.go.set()
    assert await asyncio.to_thread(files.written.wait, 30)
    assert await claims.heartbeat(claim) is True, "the claim was judged lost after a cancelled heartbeat"
    assert claims.held().get("k") is claim
    assert await claims.live.get("k") == claim.value
