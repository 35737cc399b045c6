"""Conformance suites that every repository backend runs, including users' own backends.

Subclass one suite per backend and provide a ``repo`` fixture that yields a fresh, empty
repository (and, optionally, a ``raw_names`` coroutine method listing what is physically
stored, so the suite can check that failed writes leave no debris)::

    import pytest
    from pydatatask.testing import BlobRepositoryTests

    class TestMyBackend(BlobRepositoryTests):
        @pytest.fixture
        async def repo(self, tmp_path):
            yield MyBackend(tmp_path)

A repository that is read but not written through (a read-only or filtering view) runs
the read halves, :class:`MetadataRepositoryReadTests` or :class:`BlobRepositoryReadTests`,
with a ``store`` method that puts values where the view reads them, and
:class:`ReadOnlyRepositoryTests` to check that it refuses writes::

    class TestReadOnlyFiles(BlobRepositoryReadTests, ReadOnlyRepositoryTests):
        @pytest.fixture
        async def repo(self, tmp_path):
            self.files = FileRepository(tmp_path)
            yield ReadOnlyRepository(self.files)

        async def store(self, repo, key, value):
            await self.files.write_bytes(key, value)

        async def remove(self, repo, key):
            await self.files.delete(key)

Executors have their suite too, :class:`ExecutorTests` (see
:mod:`pydatatask.testing.executor`).

The suites use pytest and pytest-asyncio (installed with ``pydatatask[test]``).
"""

from __future__ import annotations

from .executor import ExecutorTests
from .repository import (
    BlobRepositoryReadTests,
    BlobRepositoryTests,
    MetadataRepositoryReadTests,
    MetadataRepositoryTests,
    ReadOnlyRepositoryTests,
    RepositoryReadTests,
    RepositoryTests,
    adversarial_keys,
    invalid_keys,
    long_key,
    odd_valid_keys,
    path_keys,
)

__all__ = (
    "RepositoryReadTests",
    "RepositoryTests",
    "MetadataRepositoryReadTests",
    "MetadataRepositoryTests",
    "BlobRepositoryReadTests",
    "BlobRepositoryTests",
    "ReadOnlyRepositoryTests",
    "invalid_keys",
    "odd_valid_keys",
    "path_keys",
    "long_key",
    "adversarial_keys",
    "ExecutorTests",
)
