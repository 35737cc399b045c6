"""Claims and records of a batch in MongoDB: a fixed number of round trips per batch, not
one per key (counted with a PyMongo command listener on the real test server)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from pymongo import AsyncMongoClient

from pydatatask import MemoryMetadataRepository
from pydatatask.pipeline import Pipeline
from pydatatask.repository.mongo import MongoMetadataRepository
from pydatatask.task import FunctionTask, RetryPolicy
from pydatatask.task.claims import Claims
from pydatatask.task.lifecycle import execute_batch
from tests.repository.test_mongo import DB, CommandCounter, mongo_uri  # noqa: F401 - fixture

pytestmark = pytest.mark.mongo


@pytest.fixture
async def state(mongo_uri: str) -> AsyncIterator[tuple[CommandCounter, dict[str, MongoMetadataRepository]]]:  # noqa: F811
    """``done`` and ``live`` collections, with the counter of the commands sent to them."""
    counter = CommandCounter()
    c: AsyncMongoClient[Any] = AsyncMongoClient(
        mongo_uri, serverSelectionTimeoutMS=5000, event_listeners=[counter]
    )
    names = {n: f"t_{uuid.uuid4().hex}" for n in ("done", "live")}
    try:
        await c[DB].command("ping")
        yield counter, {n: MongoMetadataRepository(c[DB][coll]) for n, coll in names.items()}
    finally:
        for coll in names.values():
            await c[DB][coll].drop()
        await c.close()


async def test_update_many_renews_a_batch_of_claims_in_two_commands(
    state: tuple[CommandCounter, dict[str, MongoMetadataRepository]],
) -> None:
    counter, repos = state
    live = repos["live"]
    claims = Claims(live, "work")
    keys = [f"dir/k {i:02d}" for i in range(30)]
    held = await claims.acquire_many(keys, batch="b1")
    assert set(held) == set(keys)
    # another scheduler took one key over meanwhile: that claim is lost, the others renewed
    stolen = keys[7]
    assert await live.replace_if(stolen, held[stolen].value, {"owner": "someone else"})
    counter.names.clear()
    lost = await claims.update_many(list(held.values()), run={"where": "here"})
    assert [c.key for c in lost] == [stolen]
    # one find (the stolen claim is not the one expected: not sent), one bulk write
    assert counter.names == ["find", "update"]
    assert stolen not in claims.held() and len(claims.held()) == 29
    stored = await live.get_many(keys)
    assert stored[stolen] == {"owner": "someone else"}
    for key in keys:
        if key != stolen:
            assert stored[key] == claims.held()[key].value and stored[key]["run"] == {"where": "here"}
    # nothing changed by others: one find and one bulk write for the 29
    counter.names.clear()
    assert await claims.update_many(list(claims.held().values())) == []
    assert counter.names == ["find", "update"]


@pytest.mark.parametrize("size", [10, 40])
async def test_a_retried_batch_makes_the_same_commands_at_any_size(
    state: tuple[CommandCounter, dict[str, MongoMetadataRepository]], size: int
) -> None:
    """Every key fails once then succeeds: the claims note the retry (state, attempt) and
    the second attempt; the records of the batch are written, its claims dropped, all in
    bulk."""
    counter, repos = state
    keys = [f"k{i:03d}" for i in range(size)]
    tries: dict[str, int] = {}

    async def work(
        keys: list[str], src: MemoryMetadataRepository, out: MemoryMetadataRepository
    ) -> dict[str, Exception]:
        failed: dict[str, Exception] = {}
        for key in keys:
            tries[key] = tries.get(key, 0) + 1
            if tries[key] == 1:
                failed[key] = ValueError(f"{key}: first try")
            else:
                await out.put(key, await src.get(key))
        return failed

    out = MemoryMetadataRepository()
    task = FunctionTask(
        "work",
        work,
        inputs={"src": MemoryMetadataRepository({k: i for i, k in enumerate(keys)})},
        outputs={"out": out},
        done=repos["done"],
        live=repos["live"],
        batch=size,
        retry=RetryPolicy(max_attempts=2, backoff=0),
    )
    counter.names.clear()
    records = await execute_batch(task, keys)
    sent = list(counter.names)
    assert sorted(records) == keys and all(r["success"] and r["attempts"] == 2 for r in records.values())
    assert await out.keys() == set(keys)
    assert await repos["live"].keys() == set()
    # claims: insert; retrying and running again: a find and a bulk write each; release:
    # delete. Records: one find (done already?), one bulk write.
    assert sent == ["insert", "find", "find", "update", "find", "update", "update", "delete"], sent


async def test_the_heartbeats_of_a_running_batch_are_one_bulk_write_per_round(
    state: tuple[CommandCounter, dict[str, MongoMetadataRepository]],
    mongo_uri: str,  # noqa: F811
) -> None:
    """The scheduler renews the 30 claims of a running batch together: per round one find
    and one bulk write to ``live``, not two commands per key."""
    counter, repos = state
    keys = [f"k{i:02d}" for i in range(30)]
    watcher: AsyncMongoClient[Any] = AsyncMongoClient(mongo_uri, serverSelectionTimeoutMS=5000)
    live = MongoMetadataRepository(watcher[DB][repos["live"].collection.name])  # not counted
    done = MongoMetadataRepository(watcher[DB][repos["done"].collection.name])
    renewals: list[float] = []

    async def work(keys: list[str], src: MemoryMetadataRepository) -> None:
        # run until the scheduler has renewed the batch's claims twice
        first = (await live.get(keys[0]))["heartbeat"]
        while len(renewals) < 2:
            await asyncio.sleep(0.02)
            beat = (await live.get(keys[0]))["heartbeat"]
            if beat != (renewals[-1] if renewals else first):
                renewals.append(beat)

    task = FunctionTask(
        "work",
        work,
        inputs={"src": MemoryMetadataRepository(dict.fromkeys(keys, 1))},
        done=done,
        live=repos["live"],
        batch=len(keys),
    )
    try:
        counter.names.clear()
        summary = await asyncio.wait_for(Pipeline([task], claim_lease="600ms").run(), 100)
    finally:
        await watcher.close()
    assert summary.succeeded == len(keys) and not summary.errors, summary
    updates = counter.names.count("update")
    # per key, it was 2 updates at least (two rounds of 30 replace_one); now one per round,
    # and the rounds are few (the job ends two rounds after it starts)
    assert 2 <= updates < len(keys), counter.names
