"""The conformance suite run against every local backend."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from pydatatask import (
    FileRepository,
    JsonMetadataFileRepository,
    MemoryBlobRepository,
    MemoryMetadataRepository,
    YamlMetadataFileRepository,
)
from pydatatask.testing import BlobRepositoryTests, MetadataRepositoryTests


def _walk(root: Path) -> set[str]:
    if not root.exists():
        return set()
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def _around(root: Path) -> set[str]:
    """Everything in the test's directory (the root's parent) outside the root."""
    parent = root.parent
    return {str(p.relative_to(parent)) for p in parent.rglob("*") if p != root and root not in p.parents}


class _Rooted:
    async def outside(self, repo: Any) -> set[str] | None:
        return _around(repo.root)


class TestMemoryMetadata(MetadataRepositoryTests):
    @pytest.fixture
    async def repo(self) -> AsyncIterator[MemoryMetadataRepository]:
        yield MemoryMetadataRepository()


class TestMemoryBlob(BlobRepositoryTests):
    stores_out_of_process = False

    @pytest.fixture
    async def repo(self) -> AsyncIterator[MemoryBlobRepository]:
        yield MemoryBlobRepository()

    async def raw_names(self, repo: Any) -> set[str] | None:
        return set(repo._data)


class TestFileRepository(_Rooted, BlobRepositoryTests):
    @pytest.fixture
    async def repo(self, tmp_path: Path) -> AsyncIterator[FileRepository]:
        yield FileRepository(tmp_path / "root", ".bin")

    async def raw_names(self, repo: Any) -> set[str] | None:
        return _walk(repo.root)


class TestFileRepositoryNoExtension(_Rooted, BlobRepositoryTests):
    @pytest.fixture
    async def repo(self, tmp_path: Path) -> AsyncIterator[FileRepository]:
        yield FileRepository(tmp_path / "r")

    async def raw_names(self, repo: Any) -> set[str] | None:
        return _walk(repo.root)


class TestYamlFiles(_Rooted, MetadataRepositoryTests):
    @pytest.fixture
    async def repo(self, tmp_path: Path) -> AsyncIterator[YamlMetadataFileRepository]:
        yield YamlMetadataFileRepository(tmp_path / "yaml")


class TestJsonFiles(_Rooted, MetadataRepositoryTests):
    @pytest.fixture
    async def repo(self, tmp_path: Path) -> AsyncIterator[JsonMetadataFileRepository]:
        yield JsonMetadataFileRepository(tmp_path / "json")


def test_stale_temporaries_are_not_listed(tmp_path: Path) -> None:
    import asyncio

    repo = FileRepository(tmp_path, ".txt")
    (tmp_path / ".a.txt.tmp-123456").write_bytes(b"half written")
    (tmp_path / "ok.txt").write_bytes(b"done")
    assert asyncio.run(repo.keys()) == {"ok"}
    os.unlink(tmp_path / ".a.txt.tmp-123456")
