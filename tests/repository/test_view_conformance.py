"""The conformance suites run against the views: writable views (translate, fallback)
through the full suites, the others through the read halves with values stored in the
repositories they read."""

from __future__ import annotations

import string
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from pydatatask import (
    AndRepository,
    BlockingRepository,
    FallbackRepository,
    FileRepository,
    FilterRepository,
    MapValuesRepository,
    MemoryBlobRepository,
    MemoryMetadataRepository,
    OrRepository,
    ReadOnlyRepository,
    TranslateKeysRepository,
    YamlMetadataFileRepository,
)
from pydatatask.repository import BlobRepository, MetadataRepository, Repository
from pydatatask.testing import (
    BlobRepositoryReadTests,
    BlobRepositoryTests,
    MetadataRepositoryReadTests,
    MetadataRepositoryTests,
    ReadOnlyRepositoryTests,
)


def _walk(root: Path) -> set[str]:
    if not root.exists():
        return set()
    return {str(p.relative_to(root)) for p in root.rglob("*")}


_ASCII_SWAP = str.maketrans(
    string.ascii_letters, string.ascii_lowercase.upper() + string.ascii_uppercase.lower()
)


def _swapcase(key: str) -> str:
    # a bijection on valid keys that changes most of them: the child's keys differ from
    # the view's, so a forgotten translation shows. ASCII letters only: str.swapcase is
    # not one ("ß" -> "SS" -> "ss")
    return key.translate(_ASCII_SWAP)


# ---------------------------------------------------------------- writable views
class TestTranslateMetadata(MetadataRepositoryTests):
    @pytest.fixture
    async def repo(self) -> AsyncIterator[MetadataRepository]:
        self.child = MemoryMetadataRepository()
        yield TranslateKeysRepository(self.child, _swapcase, _swapcase)

    @pytest.mark.asyncio
    async def test_child_holds_translated_keys(self, repo: MetadataRepository) -> None:
        await repo.put("Abc", {"v": 1})
        assert await self.child.keys() == {"aBC"}


class TestTranslateYamlFiles(MetadataRepositoryTests):
    @pytest.fixture
    async def repo(self, tmp_path: Path) -> AsyncIterator[MetadataRepository]:
        yield TranslateKeysRepository(YamlMetadataFileRepository(tmp_path / "yaml"), _swapcase, _swapcase)


class TestTranslateFiles(BlobRepositoryTests):
    @pytest.fixture
    async def repo(self, tmp_path: Path) -> AsyncIterator[BlobRepository]:
        self.child = FileRepository(tmp_path / "root", ".bin")
        yield TranslateKeysRepository(self.child, _swapcase, _swapcase)

    async def raw_names(self, repo: Any) -> set[str] | None:
        return _walk(self.child.root)


class TestFallbackMetadata(MetadataRepositoryTests):
    @pytest.fixture
    async def repo(self) -> AsyncIterator[MetadataRepository]:
        yield FallbackRepository(MemoryMetadataRepository(), MemoryMetadataRepository())


class TestFallbackFiles(BlobRepositoryTests):
    @pytest.fixture
    async def repo(self, tmp_path: Path) -> AsyncIterator[BlobRepository]:
        self.primary = FileRepository(tmp_path / "primary")
        yield FallbackRepository(self.primary, FileRepository(tmp_path / "fallback"))

    async def raw_names(self, repo: Any) -> set[str] | None:
        return _walk(self.primary.root)


# ---------------------------------------------------------------- read-only views
class _StoredIn:
    """Values go into ``self.target`` (the repository the view reads)."""

    target: Repository

    async def store(self, repo: Any, key: str, value: Any) -> None:
        if isinstance(self.target, MetadataRepository):
            await self.target.put(key, value)
        else:
            assert isinstance(self.target, BlobRepository)
            await self.target.write_bytes(key, value)

    async def remove(self, repo: Any, key: str) -> None:
        await self.target.delete(key)


class TestReadOnlyMetadata(_StoredIn, MetadataRepositoryReadTests, ReadOnlyRepositoryTests):
    @pytest.fixture
    async def repo(self) -> AsyncIterator[MetadataRepository]:
        self.target = MemoryMetadataRepository()
        yield ReadOnlyRepository(self.target)


class TestReadOnlyFiles(_StoredIn, BlobRepositoryReadTests, ReadOnlyRepositoryTests):
    @pytest.fixture
    async def repo(self, tmp_path: Path) -> AsyncIterator[BlobRepository]:
        self.target = FileRepository(tmp_path, ".txt")
        yield ReadOnlyRepository(self.target)


class TestFilterMetadata(_StoredIn, MetadataRepositoryReadTests, ReadOnlyRepositoryTests):
    """A key predicate and a value predicate that accept everything the suite stores, over
    a child that also holds values the view must hide."""

    @pytest.fixture
    async def repo(self) -> AsyncIterator[MetadataRepository]:
        self.target = MemoryMetadataRepository()
        hidden = MemoryMetadataRepository({"secret": {"hidden": True}})
        yield FilterRepository(
            OrRepository(self.target, hidden),
            lambda k: k != "secret-key",
            value_predicate=lambda v: not (isinstance(v, dict) and v.get("hidden")),
        )


class TestFilterFiles(_StoredIn, BlobRepositoryReadTests, ReadOnlyRepositoryTests):
    @pytest.fixture
    async def repo(self, tmp_path: Path) -> AsyncIterator[BlobRepository]:
        self.target = FileRepository(tmp_path)
        await self.target.write_bytes("hidden-by-filter", b"x")
        yield FilterRepository(self.target, lambda k: k != "hidden-by-filter")


class TestMapValues(_StoredIn, MetadataRepositoryReadTests, ReadOnlyRepositoryTests):
    @pytest.fixture
    async def repo(self) -> AsyncIterator[MetadataRepository]:
        self.target = MemoryMetadataRepository()
        yield MapValuesRepository(self.target, lambda v: v)


class TestAndMetadata(_StoredIn, MetadataRepositoryReadTests, ReadOnlyRepositoryTests):
    """Reads come from the first child; a key is held when the second has it too."""

    @pytest.fixture
    async def repo(self) -> AsyncIterator[MetadataRepository]:
        self.target = MemoryMetadataRepository()
        self.other = MemoryBlobRepository()
        yield AndRepository(self.target, self.other)

    async def store(self, repo: Any, key: str, value: Any) -> None:
        await super().store(repo, key, value)
        await self.other.write_bytes(key, b"present")


class TestAndFiles(_StoredIn, BlobRepositoryReadTests, ReadOnlyRepositoryTests):
    @pytest.fixture
    async def repo(self, tmp_path: Path) -> AsyncIterator[BlobRepository]:
        self.target = FileRepository(tmp_path / "files")
        self.other = YamlMetadataFileRepository(tmp_path / "records")
        yield AndRepository(self.target, self.other)

    async def store(self, repo: Any, key: str, value: Any) -> None:
        await super().store(repo, key, value)
        await self.other.put(key, {"success": True})


class TestOrMetadata(_StoredIn, MetadataRepositoryReadTests, ReadOnlyRepositoryTests):
    """Values stored in the second child, read through the first that lacks them."""

    @pytest.fixture
    async def repo(self) -> AsyncIterator[MetadataRepository]:
        self.target = MemoryMetadataRepository()
        yield OrRepository(MemoryMetadataRepository(), self.target)


class TestOrBlobs(_StoredIn, BlobRepositoryReadTests, ReadOnlyRepositoryTests):
    # an or view admits what some child admits: keys a file system refuses are stored in
    # (and read back from) memory, the files child passed over
    @pytest.fixture
    async def repo(self, tmp_path: Path) -> AsyncIterator[BlobRepository]:
        self.target = MemoryBlobRepository()
        yield OrRepository(FileRepository(tmp_path), self.target)


class TestOrFiles(_StoredIn, BlobRepositoryReadTests, ReadOnlyRepositoryTests):
    @pytest.fixture
    async def repo(self, tmp_path: Path) -> AsyncIterator[BlobRepository]:
        self.target = FileRepository(tmp_path / "a")
        yield OrRepository(FileRepository(tmp_path / "b"), self.target)


class TestBlockingMetadata(_StoredIn, MetadataRepositoryReadTests, ReadOnlyRepositoryTests):
    @pytest.fixture
    async def repo(self) -> AsyncIterator[MetadataRepository]:
        self.target = MemoryMetadataRepository()
        yield BlockingRepository(self.target, MemoryBlobRepository({"blocked": b""}))


class TestBlockingFiles(_StoredIn, BlobRepositoryReadTests, ReadOnlyRepositoryTests):
    @pytest.fixture
    async def repo(self, tmp_path: Path) -> AsyncIterator[BlobRepository]:
        self.target = FileRepository(tmp_path)
        yield BlockingRepository(self.target, MemoryMetadataRepository({"blocked": 1}))
