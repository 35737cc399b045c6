"""In-memory repositories that count their listings (``keys()`` or ``versions()``, which
lists inputs with their versions), for the tests of how often a scheduler lists."""

from __future__ import annotations

from pydatatask import MemoryBlobRepository, MemoryMetadataRepository


class CountsListings:
    """Mixed in before a repository class: ``listings`` counts its listings."""

    listings = 0

    async def keys(self) -> set[str]:
        self.listings += 1
        return await super().keys()  # type: ignore[misc, no-any-return]

    async def versions(self) -> dict[str, str | None]:
        self.listings += 1
        return await super().versions()  # type: ignore[misc, no-any-return]


class CountingMetadata(CountsListings, MemoryMetadataRepository):
    """A metadata repository in memory that counts its listings."""


class CountingBlobs(CountsListings, MemoryBlobRepository):
    """A blob repository in memory that counts its listings."""
