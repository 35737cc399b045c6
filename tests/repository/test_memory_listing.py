"""The listings the in-memory repositories hand to a scheduler tick: no copy of the keys,
the same objects while nothing changes, and never changed under their holder."""

from __future__ import annotations

from pydatatask import MemoryBlobRepository, MemoryMetadataRepository
from pydatatask.repository.listing import cached_keys, cached_versions, listing_scope


async def tick_keys(repo: MemoryMetadataRepository | MemoryBlobRepository) -> set[str]:
    with listing_scope():
        return await cached_keys(repo)


async def tick_versions(repo: MemoryMetadataRepository | MemoryBlobRepository) -> dict[str, str | None]:
    with listing_scope():
        return await cached_versions(repo)


async def test_an_unchanged_repository_hands_out_the_same_listing_at_every_tick() -> None:
    repo = MemoryMetadataRepository({f"k{i}": i for i in range(2000)})
    first = await tick_keys(repo)
    assert first == {f"k{i}" for i in range(2000)}
    assert await tick_keys(repo) is first  # no copy of the keys per listing
    versions = await tick_versions(repo)
    assert await tick_versions(repo) is versions
    with listing_scope():  # the keys of a tick that listed the versions: no copy either
        assert await cached_versions(repo) is versions
        assert await cached_keys(repo) is first


async def test_a_listing_handed_out_never_changes_under_its_holder() -> None:
    repo = MemoryBlobRepository({"a": b"1", "b": b"2"})
    before = await tick_keys(repo)
    await repo.write_bytes("c", b"3")
    await repo.delete("a")
    assert before == {"a", "b"}
    after = await tick_keys(repo)
    assert after == {"b", "c"} and after is not before
    await repo.write_bytes("b", b"again")  # a key already there: the set stays as it is
    assert await tick_keys(repo) is after
    meta = MemoryMetadataRepository()
    empty = await tick_keys(meta)
    meta.create_now("x", {"v": 1})
    meta.put_now("y", {"v": 2})
    assert empty == set() and await tick_keys(meta) == {"x", "y"}
    meta.delete_now("x")
    assert await tick_keys(meta) == {"y"}


async def test_keys_outside_a_tick_is_the_callers_own_set() -> None:
    repo = MemoryMetadataRepository({"a": 1})
    mine = await repo.keys()
    mine.add("not stored")
    assert await tick_keys(repo) == {"a"}
    assert await repo.keys() == {"a"}
    with listing_scope():
        outside = await repo.keys()
    outside.discard("a")
    assert await tick_keys(repo) == {"a"}


async def test_versions_change_with_the_value_only() -> None:
    repo = MemoryMetadataRepository({"a": 1, "b": 2})
    first = await repo.versions()
    assert set(first) == {"a", "b"} and all(isinstance(v, str) for v in first.values())
    await repo.put("a", 10)
    second = await repo.versions()
    assert second["a"] != first["a"] and second["b"] == first["b"]
    await repo.delete("a")
    await repo.put("a", 10)  # the same value again, written anew: a new version
    third = await repo.versions()
    assert third["a"] not in (first["a"], second["a"]) and third["b"] == first["b"]
    assert first == {"a": first["a"], "b": first["b"]}  # what was handed out stays as it was
    blobs = MemoryBlobRepository()
    await blobs.write_bytes("x", b"1")  # written before any listing of versions
    v1 = (await blobs.versions())["x"]
    async with blobs.open("x", "wb") as w:
        await w.write(b"2")
    assert (await blobs.versions())["x"] != v1
