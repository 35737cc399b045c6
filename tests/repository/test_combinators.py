from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from pydatatask import (
    AndRepository,
    BlobRepository,
    BlockingRepository,
    CorruptValueError,
    DirectoryRepository,
    FallbackRepository,
    FileRepository,
    FilterRepository,
    KeyNotFoundError,
    MapValuesRepository,
    MemoryBlobRepository,
    MemoryMetadataRepository,
    MetadataRepository,
    OrRepository,
    ReadOnlyRepository,
    ReadOnlyRepositoryError,
    Repository,
    TranslateKeysRepository,
    YamlMetadataFileRepository,
)
from pydatatask.errors import ConfigurationError
from pydatatask.repository import RepositoryView
from pydatatask.repository.combinators import ReadOnlyBlobView
from pydatatask.repository.listing import cached_keys, listing_scope
from pydatatask.repository.view import read_source


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
        AndRepository()  # type: ignore[call-overload]
    with pytest.raises(ConfigurationError):
        OrRepository("not a repository")  # type: ignore[arg-type]


async def test_nested_views() -> None:
    a = MemoryMetadataRepository({"1": 1, "2": 2})
    b = MemoryMetadataRepository({"2": 2})
    c = MemoryMetadataRepository({"1": 1})
    nested = OrRepository(BlockingRepository(a, b), AndRepository(a, c))
    assert await nested.keys() == {"1"}
    assert await nested.get("1") == 1


# ---------------------------------------------------------------- kinds
def _kinds(repo: Repository) -> tuple[bool, bool]:
    return isinstance(repo, MetadataRepository), isinstance(repo, BlobRepository)


def test_a_view_is_the_kind_its_reads_come_from(tmp_path: Path) -> None:
    files = FileRepository(tmp_path / "f")
    meta = YamlMetadataFileRepository(tmp_path / "m")
    dirs = DirectoryRepository(tmp_path / "d")
    same = lambda k: k  # noqa: E731
    for child, kind in ((files, (False, True)), (meta, (True, False)), (dirs, (False, False))):
        views: list[Repository] = [
            ReadOnlyRepository(child),
            FilterRepository(child, lambda k: True),
            TranslateKeysRepository(child, same, same),
            AndRepository(child, files, meta),
            BlockingRepository(child, meta),
            OrRepository(child, child),
            FallbackRepository(child, child),
            ReadOnlyRepository(ReadOnlyRepository(child)),
        ]
        for view in views:
            assert _kinds(view) == kind, view
            assert isinstance(view, RepositoryView)
    assert _kinds(MapValuesRepository(meta, str)) == (True, False)
    assert isinstance(ReadOnlyRepository(files), ReadOnlyRepository)
    # or/fallback read from whichever child holds the key: mixed children make a key-only view
    for view in (OrRepository(files, meta), FallbackRepository(meta, files)):
        assert _kinds(view) == (False, False)
        assert not hasattr(view, "get") and not hasattr(view, "read_bytes")


async def test_mixed_and_reads_from_its_first_child(tmp_path: Path) -> None:
    files = FileRepository(tmp_path / "f")
    records = YamlMetadataFileRepository(tmp_path / "r")
    await files.write_bytes("k1", b"one")
    await files.write_bytes("k2", b"two")
    await records.put("k1", {"success": True})
    view = AndRepository(files, records)
    assert await view.keys() == {"k1"}
    assert await view.read_bytes("k1") == b"one"
    with pytest.raises(KeyNotFoundError):
        await view.read_bytes("k2")
    ro = ReadOnlyRepository(records)
    assert await ro.get("k1") == {"success": True}


def test_views_report_their_construction_errors_in_one_line() -> None:
    with pytest.raises(ConfigurationError, match="^AndRepository needs at least one repository$"):
        AndRepository()  # type: ignore[call-overload]
    with pytest.raises(ConfigurationError, match="^ReadOnlyRepository: 3 is not a Repository$"):
        ReadOnlyRepository(3)  # type: ignore[call-overload]
    with pytest.raises(ConfigurationError, match="MapValuesRepository needs a MetadataRepository"):
        MapValuesRepository(MemoryBlobRepository(), str)  # type: ignore[arg-type]


# ---------------------------------------------------------------- one listing per tick
async def test_single_child_views_list_their_child_through_the_tick_cache() -> None:
    child = CountingRepository({"a": 1, "b": 2})
    same = lambda k: k  # noqa: E731
    views: list[Repository] = [
        ReadOnlyRepository(child),
        FilterRepository(child, lambda k: k != "b"),
        TranslateKeysRepository(child, same, same),
        MapValuesRepository(child, str),
    ]
    with listing_scope():
        listed = [await v.keys() for v in views]
        assert await cached_keys(child) == {"a", "b"}
    assert listed == [{"a", "b"}, {"a"}, {"a", "b"}, {"a", "b"}]
    assert child.listings == 1
    listed[0].add("not in the child")  # a view's listing is the caller's to change
    with listing_scope():
        assert await views[0].keys() == {"a", "b"}


# ---------------------------------------------------------------- what a key reads
def test_underlying_and_view_keys_follow_nested_views(tmp_path: Path) -> None:
    files = FileRepository(tmp_path / "f")
    other = MemoryBlobRepository()
    translated = TranslateKeysRepository(
        files, lambda k: "raw-" + k, lambda k: k[4:] if k.startswith("raw-") else None
    )
    view = OrRepository(ReadOnlyRepository(translated), other)
    assert view.underlying("a") == [(files, "raw-a"), (other, "a")]
    assert view.view_keys(files, "raw-a") == {"a"}
    assert view.view_keys(files, "cooked-a") == set()
    assert view.view_keys(other, "a") == {"a"}
    assert view.view_keys(MemoryBlobRepository(), "a") == set()
    assert view.repositories() == [files, other]
    assert not view.keeps_keys and OrRepository(files, other).keeps_keys
    assert read_source(ReadOnlyRepository(translated), "a") == (files, "raw-a")
    assert read_source(view, "a") == (view, "a")


async def test_translated_missing_key_names_the_view_key() -> None:
    view = TranslateKeysRepository(MemoryMetadataRepository(), lambda k: "raw-" + k, lambda k: k[4:])
    with pytest.raises(KeyNotFoundError) as info:
        await view.get("absent")
    assert info.value.key == "absent" and info.value.repository == view.describe()


# ---------------------------------------------------------------- corrupt values
class BrokenValues(MemoryMetadataRepository):
    """A backend keeping the bulk-read contract: a value that does not decode comes back
    as a CorruptValueError instance in the dict, not raised."""

    def __init__(self, data: dict[str, Any], broken: set[str]) -> None:
        super().__init__(data)
        self.broken = broken

    def _error(self, key: str) -> CorruptValueError:
        return self._corrupt(key, "not valid YAML")

    async def _get(self, key: str) -> Any:
        if key in self.broken:
            raise self._error(key)
        return await super()._get(key)

    async def _get_many(self, keys: list[str]) -> dict[str, Any]:
        got = await super()._get_many(keys)
        return {k: self._error(k) if k in self.broken else v for k, v in got.items()}


async def test_corrupt_values_pass_through_views_bulk_reads(caplog: pytest.LogCaptureFixture) -> None:
    child = BrokenValues({"ok": {"n": 1}, "bad": {"n": 2}}, broken={"bad"})
    views: list[Any] = [
        ReadOnlyRepository(child),
        MapValuesRepository(child, lambda v: v["n"]),
        AndRepository(child, child),
        OrRepository(MemoryMetadataRepository(), child),
        TranslateKeysRepository(child, str, str),
        FilterRepository(child, value_predicate=lambda v: True),
    ]
    for view in views:
        got = await view._get_many(["ok", "bad", "absent"])
        assert set(got) == {"ok", "bad"}, view
        assert isinstance(got["bad"], CorruptValueError)
        with pytest.raises(CorruptValueError):
            await view.get("bad")
    # a value predicate cannot judge a corrupt value: the key is left out, named once
    judged = FilterRepository(child, value_predicate=lambda v: v["n"] > 0)
    with caplog.at_level("WARNING", logger="pydatatask.repository"):
        assert await judged.keys() == {"ok"}
        assert await judged.keys() == {"ok"}
    warnings = [r.getMessage() for r in caplog.records if "'bad'" in r.getMessage()]
    assert len(warnings) == 1 and "leaves the key out" in warnings[0]


# ---------------------------------------------------------------- fallback writes
async def test_fallback_exclusive_writes_see_the_fallback() -> None:
    primary = MemoryMetadataRepository()
    view = FallbackRepository(primary, MemoryMetadataRepository({"old": {"v": 1}}))
    assert not await view.create("old", {"v": 2})
    assert not await view.replace_if("old", {"v": 0}, {"v": 2})
    assert await view.replace_if("old", {"v": 1}, {"v": 2})
    assert await primary.get("old") == {"v": 2}
    assert await view.get("old") == {"v": 2}
    blobs = FallbackRepository(MemoryBlobRepository(), MemoryBlobRepository({"old": b"1"}))
    assert not await blobs.create_bytes("old", b"2")
    assert await blobs.replace_bytes_if("old", b"1", b"2")
    assert await blobs.read_bytes("old") == b"2"


def test_a_subclass_of_a_view_stays_itself(tmp_path: Path) -> None:
    class Audited(ReadOnlyRepository):
        def describe(self) -> str:
            return "audited " + super().describe()

    view = Audited(FileRepository(tmp_path))
    assert type(view) is Audited and view.describe().startswith("audited read-only files")
    assert type(ReadOnlyRepository(FileRepository(tmp_path))).__name__ == "ReadOnlyBlobView"
    with pytest.raises(ConfigurationError, match="^ReadOnlyRepository: 1 is not"):
        ReadOnlyBlobView(1)  # type: ignore[call-overload]


def test_a_translated_key_no_repository_can_hold_reads_nothing() -> None:
    view = TranslateKeysRepository(MemoryMetadataRepository(), lambda k: "../" + k, lambda k: k)
    assert view.underlying("a") == []


async def test_a_corrupt_file_through_views_is_reported_and_the_rest_read(tmp_path: Path) -> None:
    records = YamlMetadataFileRepository(tmp_path / "r")
    await records.put("good", {"ok": True})
    (tmp_path / "r" / "bad.yaml").write_bytes(b"task: A\nkey: bad\nstate: [trunc")
    for view in (
        ReadOnlyRepository(records),
        OrRepository(MemoryMetadataRepository(), records),
        AndRepository(records, records),
        MapValuesRepository(records, lambda v: v),
    ):
        seen: list[CorruptValueError] = []
        assert await view.get_many(["good", "bad"], on_corrupt=seen.append) == {"good": {"ok": True}}
        assert [(e.key, e.location) for e in seen] == [("bad", str(tmp_path / "r" / "bad.yaml"))], view
        with pytest.raises(CorruptValueError):
            await view.get_many(["good", "bad"])
        assert [k async for k, _ in view.items(on_corrupt=seen.append)] == ["good"]
        assert len(seen) == 2


async def test_a_streamed_write_through_a_view_is_the_child_s_own() -> None:
    class Audited(MemoryBlobRepository):
        """A backend doing something around each write (as a journal of writes would)."""

        opened: list[str] = []

        def open(self, key: str, mode: Any = "rb") -> Any:
            self.opened.append(f"{mode} {key}")
            return super().open(key, mode)

    child = Audited()
    view = TranslateKeysRepository(child, lambda k: "raw-" + k, lambda k: k[4:])
    async with view.open("k", "wb") as f:
        await f.write(b"streamed")
    with pytest.raises(RuntimeError):
        async with view.open("failed", "wb") as f:
            await f.write(b"half")
            raise RuntimeError("boom")
    assert child.opened == ["wb raw-k", "wb raw-failed"]
    assert await child.keys() == {"raw-k"} and await child.read_bytes("raw-k") == b"streamed"


async def test_or_and_fallback_read_a_key_only_one_child_can_store(tmp_path: Path) -> None:
    # a name S3 or memory keeps but a file system cannot (a segment over 255 bytes): the
    # view lists it, so it must also answer for it, from the child that holds it
    from pydatatask import InvalidKeyError, JsonMetadataFileRepository

    long = "x" * 300
    files = FileRepository(tmp_path / "blobs")
    memory = MemoryBlobRepository()
    await memory.write_bytes(long, b"kept")
    await files.write_bytes("short", b"on disk")
    for view in (OrRepository(files, memory), FallbackRepository(files, memory)):
        assert await view.keys() == {long, "short"}
        assert await view.contains(long)
        assert await view.read_bytes(long) == b"kept"
        assert await view.read_bytes("short") == b"on disk"
    records = JsonMetadataFileRepository(tmp_path / "records")
    kept = MemoryMetadataRepository()
    await kept.put(long, {"v": 1})
    fallback = FallbackRepository(records, kept)
    assert await fallback.get_many([long, "absent"]) == {long: {"v": 1}}
    assert not await fallback.create(long, {"v": 2})  # held by the fallback
    with pytest.raises(InvalidKeyError, match="255 bytes"):
        await fallback.put(long, {"v": 3})  # writes go to the primary, which cannot hold it
    with pytest.raises(InvalidKeyError):
        await OrRepository(files, FileRepository(tmp_path / "other")).contains(long)
