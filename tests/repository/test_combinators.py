from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from pydatatask import (
    AndRepository,
    BlockingRepository,
    FallbackRepository,
    FileRepository,
    FilterRepository,
    KeyNotFoundError,
    MapValuesRepository,
    MemoryBlobRepository,
    MemoryMetadataRepository,
    OrRepository,
    ReadOnlyRepository,
    ReadOnlyRepositoryError,
    Repository,
    TranslateKeysRepository,
)
from pydatatask.errors import ConfigurationError


class CountingRepository(MemoryMetadataRepository):
    """Counts bulk listings, to check views list each child once."""

    def __init__(self, data: dict[str, Any]) -> None:
        super().__init__(data)
        self.listings = 0

    async def keys(self) -> set[str]:
        self.listings += 1
        return await super().keys()


async def test_and_or_blocking_sets() -> None:
    a = CountingRepository({"1": 1, "2": 2, "3": 3})
    b = CountingRepository({"2": 20, "3": 30, "4": 40})
    assert await AndRepository(a, b).keys() == {"2", "3"}
    assert await OrRepository(a, b).keys() == {"1", "2", "3", "4"}
    assert await BlockingRepository(a, b).keys() == {"1"}
    assert (a.listings, b.listings) == (3, 3)
    assert await AndRepository(a, b).contains("2")
    assert not await AndRepository(a, b).contains("1")
    assert await OrRepository(a, b).contains("4")
    assert not await BlockingRepository(a, b).contains("2")
    assert await BlockingRepository(a, b).contains("1")


async def test_reads_come_from_the_right_child() -> None:
    a = MemoryMetadataRepository({"1": "a1"})
    b = MemoryMetadataRepository({"1": "b1", "2": "b2"})
    assert await OrRepository(a, b).get("2") == "b2"
    assert await OrRepository(a, b).get("1") == "a1"
    assert await AndRepository(b, a).get("1") == "b1"
    with pytest.raises(KeyNotFoundError):
        await AndRepository(a, b).get("2")
    with pytest.raises(KeyNotFoundError):
        await BlockingRepository(b, a).get("1")
    assert await BlockingRepository(b, a).get("2") == "b2"


async def test_views_refuse_writes() -> None:
    a = MemoryMetadataRepository({"1": 1})
    for view in (AndRepository(a), OrRepository(a), ReadOnlyRepository(a), BlockingRepository(a, a)):
        with pytest.raises(ReadOnlyRepositoryError):
            await view.put("1", 2)
        with pytest.raises(ReadOnlyRepositoryError):
            await view.delete("1")
        assert not view.is_writable
    assert await a.get("1") == 1


async def test_readonly_blob_reads(tmp_path: Path) -> None:
    files = FileRepository(tmp_path)
    await files.write_bytes("k", b"data")
    ro = ReadOnlyRepository(files)
    assert await ro.read_bytes("k") == b"data"
    async with ro.open("k") as f:
        assert await f.read() == b"data"
    with pytest.raises(ReadOnlyRepositoryError):
        await ro.write_bytes("k", b"x")
    with pytest.raises(ReadOnlyRepositoryError):
        async with ro.open("k", "wb") as f:
            await f.write(b"x")
    assert await files.read_bytes("k") == b"data"


async def test_filter_by_key_and_value() -> None:
    repo = MemoryMetadataRepository({f"k{i}": {"size": i} for i in range(10)})
    by_key = FilterRepository(repo, lambda k: k.endswith(("1", "2")))
    assert await by_key.keys() == {"k1", "k2"}

    async def big(value: Any) -> bool:
        return bool(value["size"] >= 7)

    by_value = FilterRepository(repo, value_predicate=big)
    assert await by_value.keys() == {"k7", "k8", "k9"}
    assert await by_value.contains("k8")
    assert not await by_value.contains("k1")
    with pytest.raises(ConfigurationError):
        FilterRepository(MemoryBlobRepository(), value_predicate=big)
    with pytest.raises(ConfigurationError):
        FilterRepository(repo)


async def test_translate_keys_round_trip() -> None:
    inner = MemoryMetadataRepository({"raw-a": 1, "other": 2})
    view = TranslateKeysRepository(
        inner, to_child=lambda k: "raw-" + k, from_child=lambda k: k[4:] if k.startswith("raw-") else None
    )
    assert await view.keys() == {"a"}
    assert await view.get("a") == 1
    await view.put("b", 3)
    assert await inner.get("raw-b") == 3
    assert await view.contains("b")
    await view.delete("a")
    assert await inner.keys() == {"raw-b", "other"}


async def test_map_values() -> None:
    inner = MemoryMetadataRepository({"a": {"n": 1}, "b": {"n": 2}})
    view = MapValuesRepository(inner, lambda v: v["n"] * 10)
    assert await view.get("a") == 10
    assert await view.get_many(["a", "b", "c"]) == {"a": 10, "b": 20}


async def test_fallback(tmp_path: Path) -> None:
    primary = FileRepository(tmp_path / "p")
    fallback = FileRepository(tmp_path / "f")
    await fallback.write_bytes("old", b"from fallback")
    view = FallbackRepository(primary, fallback)
    assert await view.keys() == {"old"}
    assert await view.read_bytes("old") == b"from fallback"
    await view.write_bytes("new", b"to primary")
    assert await primary.read_bytes("new") == b"to primary"
    async with view.open("streamed", "wb") as f:
        await f.write(b"s")
    assert await primary.read_bytes("streamed") == b"s"
    await view.write_bytes("old", b"override")
    assert await view.read_bytes("old") == b"override"
    assert await fallback.read_bytes("old") == b"from fallback"


def test_views_need_repositories() -> None:
    with pytest.raises(ConfigurationError):
        AndRepository()
    with pytest.raises(ConfigurationError):
        OrRepository("not a repository")  # type: ignore[arg-type]


async def test_nested_views() -> None:
    a = MemoryMetadataRepository({"1": 1, "2": 2})
    b = MemoryMetadataRepository({"2": 2})
    c = MemoryMetadataRepository({"1": 1})
    nested: Repository = OrRepository(BlockingRepository(a, b), AndRepository(a, c))
    assert await nested.keys() == {"1"}
    assert await nested.get("1") == 1  # type: ignore[attr-defined]
