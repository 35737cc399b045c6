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

The suites use pytest and pytest-asyncio (installed with ``pydatatask[test]``).
"""

from __future__ import annotations

from .repository import (
    BlobRepositoryTests,
    MetadataRepositoryTests,
    RepositoryTests,
    invalid_keys,
    odd_valid_keys,
)

__all__ = (
    "RepositoryTests",
    "MetadataRepositoryTests",
    "BlobRepositoryTests",
    "invalid_keys",
    "odd_valid_keys",
)
