"""MongoMetadataRepository against the real MongoDB-wire test server (scripts/test-services)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from pymongo import AsyncMongoClient, monitoring
from pymongo.asynchronous.collection import AsyncCollection

from pydatatask import BackendUnavailableError, Backoff, ConfigurationError, KeyNotFoundError
from pydatatask.repository.mongo import MongoMetadataRepository
from pydatatask.testing import MetadataRepositoryTests
from tests.conftest import service

pytestmark = pytest.mark.mongo

DB = "pdt_test"


class CommandCounter(monitoring.CommandListener):
    """Counts the commands a client sends (to check round trips)."""

    def __init__(self) -> None:
        self.names: list[str] = []

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        self.names.append(event.command_name)

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


@pytest.fixture
def mongo_uri(services: dict[str, Any]) -> str:
    return str(service(services, "mongo")["uri"])


@pytest.fixture
def counter() -> CommandCounter:
    return CommandCounter()


@pytest.fixture
async def client(mongo_uri: str, counter: CommandCounter) -> AsyncIterator[AsyncMongoClient[Any]]:
    c: AsyncMongoClient[Any] = AsyncMongoClient(
        mongo_uri, serverSelectionTimeoutMS=5000, event_listeners=[counter]
    )
    try:
        yield c
    finally:
        await c.close()


@pytest.fixture
async def collection(client: AsyncMongoClient[Any]) -> AsyncIterator[AsyncCollection[Any]]:
    coll = client[DB][f"t_{uuid.uuid4().hex}"]
    try:
        yield coll
    finally:
        await coll.drop()


class TestMongoConformance(MetadataRepositoryTests):
    @pytest.fixture
    async def repo(self, collection: AsyncCollection[Any]) -> AsyncIterator[MongoMetadataRepository]:
        yield MongoMetadataRepository(collection)

    async def make_corrupt(self, repo: Any, key: str) -> bool:
        # a document another program wrote: no "value" field
        await repo.collection.insert_one({"_id": key, "task": "A"})
        return True


@pytest.fixture
async def repo(collection: AsyncCollection[Any]) -> MongoMetadataRepository:
    return MongoMetadataRepository(collection)


async def test_storage_format_and_non_dict_values(
    repo: MongoMetadataRepository, collection: AsyncCollection[Any]
) -> None:
    values: dict[str, Any] = {"list": [1, [2, {"x": None}]], "str": "s", "int": 3, "none": None, "f": 2.5}
    for key, value in values.items():
        await repo.put(key, value)
    for key, value in values.items():
        assert await repo.get(key) == value
    doc = await collection.find_one({"_id": "list"})
    assert doc is not None and set(doc) == {"_id", "value", "token"}
    assert doc["value"] == [1, [2, {"x": None}]]
    versions = await repo.versions()
    assert versions["list"] == doc["token"]  # the version is the token of the last write
    await repo.put("nested/k\u00e9y with spaces", 1)
    assert (await collection.find_one({"_id": "nested/k\u00e9y with spaces"}) or {})["value"] == 1
    await repo.delete("nested/k\u00e9y with spaces")
    # a document another program wrote, without a token: listed, version unknown
    await collection.insert_one({"_id": "foreign", "value": 1})
    assert (await repo.versions())["foreign"] is None
    await collection.delete_one({"_id": "foreign"})
    assert await collection.count_documents({}) == len(values)
    assert repo.describe() == f"mongo {DB}.{collection.name}"


async def test_foreign_documents_are_skipped(
    repo: MongoMetadataRepository, collection: AsyncCollection[Any], caplog: pytest.LogCaptureFixture
) -> None:
    await collection.insert_many([{"x": 1}, {"_id": "bad//name", "value": 1}, {"_id": "ok", "value": 2}])
    assert await repo.keys() == {"ok"}
    assert "not valid keys" in caplog.text


async def test_accessor_is_resolved_at_call_time(collection: AsyncCollection[Any]) -> None:
    holder: list[AsyncCollection[Any]] = []
    repo = MongoMetadataRepository(lambda: holder[0])
    holder.append(collection)
    await repo.put("k", 1)
    assert await repo.get("k") == 1


async def test_concurrent_upserts_on_one_key(
    repo: MongoMetadataRepository, collection: AsyncCollection[Any]
) -> None:
    await asyncio.gather(*(repo.put("hot", {"writer": i}) for i in range(100)))
    final = await repo.get("hot")
    assert final["writer"] in range(100)
    assert await collection.count_documents({}) == 1


async def test_listing_10k_keys(
    repo: MongoMetadataRepository, collection: AsyncCollection[Any], counter: CommandCounter
) -> None:
    await collection.insert_many([{"_id": f"key-{i:05d}", "value": i} for i in range(10_000)])
    counter.names.clear()
    start = time.perf_counter()
    keys = await repo.keys()
    elapsed = time.perf_counter() - start
    print(f"10k-key listing: {elapsed:.3f}s, commands {counter.names}")
    assert keys == {f"key-{i:05d}" for i in range(10_000)}
    assert counter.names.count("find") == 1  # one query (getMore batches of the same cursor only)
    assert elapsed < 10


async def test_get_many_is_one_round_trip(
    repo: MongoMetadataRepository, collection: AsyncCollection[Any], counter: CommandCounter
) -> None:
    await collection.insert_many([{"_id": f"k{i}", "value": {"i": i}} for i in range(1000)])
    counter.names.clear()
    wanted = [f"k{i}" for i in range(1000)] + ["absent"]
    got = await repo.get_many(wanted)
    assert got == {f"k{i}": {"i": i} for i in range(1000)}
    assert counter.names == ["find"], counter.names


async def test_missing_key(repo: MongoMetadataRepository) -> None:
    with pytest.raises(KeyNotFoundError):
        await repo.get("nope")
    assert not await repo.contains("nope")


async def test_validate_pings(repo: MongoMetadataRepository) -> None:
    await repo.validate()
    await repo.validate(create=True)


def test_motor_collection_is_refused() -> None:
    fake_type = type("AsyncIOMotorCollection", (), {"__module__": "motor.motor_asyncio"})
    with pytest.raises(ConfigurationError, match=r"pymongo\.AsyncMongoClient\(\.\.\.\)\[db\]\[coll\]"):
        MongoMetadataRepository(fake_type())


async def test_motor_collection_from_accessor_is_refused() -> None:
    fake_type = type("AsyncIOMotorCollection", (), {"__module__": "motor.motor_asyncio"})
    repo = MongoMetadataRepository(lambda: fake_type())
    with pytest.raises(ConfigurationError, match="Motor"):
        await repo.keys()


def _unused_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_unreachable_server() -> None:
    port = _unused_port()
    secret = "s3cretPassw0rd"
    client: AsyncMongoClient[Any] = AsyncMongoClient(
        f"mongodb://pdtuser:{secret}@127.0.0.1:{port}/?authSource=admin",
        serverSelectionTimeoutMS=200,
        connectTimeoutMS=200,
    )
    try:
        repo = MongoMetadataRepository(client[DB]["unreachable"], retry=Backoff(attempts=3, initial=0.05))
        start = time.perf_counter()
        with pytest.raises(BackendUnavailableError) as info:
            await repo.get("k")
        elapsed = time.perf_counter() - start
        message = str(info.value)
        assert f"127.0.0.1:{port}" in message
        assert "failed after 3 attempt(s)" in message  # the Backoff's attempts, not more
        assert secret not in message and "pdtuser" not in message
        assert info.value.__cause__ is not None
        assert elapsed < 5, elapsed
        with pytest.raises(BackendUnavailableError):
            await repo.validate()
    finally:
        await client.close()


async def test_cancellation_propagates() -> None:
    port = _unused_port()
    client: AsyncMongoClient[Any] = AsyncMongoClient(
        f"mongodb://127.0.0.1:{port}", serverSelectionTimeoutMS=5000
    )
    try:
        repo = MongoMetadataRepository(client[DB]["c"])
        task = asyncio.create_task(repo.keys())
        await asyncio.sleep(0.2)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    finally:
        await client.close()


# --- bulk writes: one round trip per batch (commands seen by the real server) ---
BULK_KEYS = [f"batch/k{i:03d}" for i in range(100)]


async def test_put_many_is_one_bulk_write(collection: AsyncCollection[Any], counter: CommandCounter) -> None:
    repo = MongoMetadataRepository(collection)
    await repo.put("batch/k007", {"old": True})
    counter.names.clear()
    await repo.put_many({k: {"n": i} for i, k in enumerate(BULK_KEYS)})
    assert counter.names == ["update"], counter.names  # replaces with upsert: one command
    assert await repo.get("batch/k007") == {"n": 7}
    assert await repo.keys() == set(BULK_KEYS)
    versions = await repo.versions()
    assert len(set(versions.values())) == len(BULK_KEYS)  # each document got its own token


async def test_create_many_is_one_insert(collection: AsyncCollection[Any], counter: CommandCounter) -> None:
    repo = MongoMetadataRepository(collection)
    counter.names.clear()
    assert await repo.create_many({k: {"n": i} for i, k in enumerate(BULK_KEYS)}) == set(BULK_KEYS)
    assert counter.names == ["insert"], counter.names
    # a second batch over taken and free keys: only the free ones are created, the taken
    # ones keep their values
    more = {f"batch/x{i}": {"n": i} for i in range(5)}
    made = await repo.create_many({"batch/k001": {"n": "again"}, "batch/k050": {"n": "again"}} | more)
    assert made == set(more)
    assert await repo.get("batch/k001") == {"n": 1}


async def test_delete_many_is_one_command(collection: AsyncCollection[Any], counter: CommandCounter) -> None:
    repo = MongoMetadataRepository(collection)
    await repo.put_many({k: 1 for k in BULK_KEYS})
    counter.names.clear()
    await repo.delete_many([*BULK_KEYS[:60], "batch/never-there"])
    assert counter.names == ["delete"], counter.names
    assert await repo.keys() == set(BULK_KEYS[60:])
