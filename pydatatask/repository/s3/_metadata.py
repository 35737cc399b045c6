"""S3 metadata repositories: structured values as YAML or JSON objects in a bucket.

Both keep bundles (:mod:`pydatatask.repository.bundles`, see ``_bundles``): the claims of
a batch of jobs as one object.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

from ...errors import KeyNotFoundError, RepositoryError
from ..base import BlobRepository, Repository
from ..bundles import bundle_keys
from ..serialized import JsonMetadataRepository, SerializedMetadataRepository, YamlMetadataRepository
from ._bucket import S3BucketRepository
from ._bundles import S3Bundles

__all__ = ("YamlMetadataS3Repository", "JsonMetadataS3Repository")

#: from this many keys on, ``get_many`` asks which exist with listing pages first (one page
#: answers for a directory's worth) and reads only those
_PRESENCE_FIRST = 8


class _S3MetadataMixin(S3Bundles):
    """Exposes the naming of the underlying :class:`S3BucketRepository`, and its bulk and
    conditional requests where they save round trips."""

    blobs: BlobRepository
    #: the default object name suffix of the format
    default_suffix = ""

    def __init__(
        self,
        client: Any,
        bucket: str,
        prefix: str = "",
        suffix: str | None = None,
        *,
        concurrency: int = 32,
        **options: Any,
    ) -> None:
        suffix = self.default_suffix if suffix is None else suffix
        # metadata values are written whole (one PutObject): deletes need not look for uploads
        store = S3BucketRepository(
            client, bucket, prefix, suffix, **{"abort_uploads_on_delete": False, **options}
        )
        super().__init__(store, concurrency=concurrency)  # type: ignore[call-arg]  # the format's
        self._init_bundles()

    @property
    def s3(self) -> S3BucketRepository:
        assert isinstance(self.blobs, S3BucketRepository)
        return self.blobs

    @property
    def bucket(self) -> str:
        return self.s3.bucket

    @property
    def prefix(self) -> str:
        return self.s3.prefix

    @property
    def suffix(self) -> str:
        return self.s3.suffix

    @property
    def endpoint_url(self) -> str | None:
        return self.s3.endpoint_url

    def object_name(self, key: str) -> str:
        return self.s3.object_name(key)

    def url(self, key: str) -> str:
        return self.s3.url(key)

    # --- listings: the keys stored on their own and those of the bundles ------------
    async def _scan_keys(self) -> dict[str, str | None]:
        """Every stored name with its version: a bundle's keys have the bundle's ETag."""
        plain, listed = self._split(await self.s3._scan())
        names = dict(plain)
        for name, bundle in (await self._load(listed)).items():
            version = listed.get(name)
            for key in bundle_keys(bundle):
                names.setdefault(key, version)
        return names

    async def keys(self) -> set[str]:
        return await Repository.keys(self)  # type: ignore[arg-type]  # a Repository

    async def _list(self) -> Iterable[str]:
        return (await self._scan_keys()).keys()

    async def _list_versions(self) -> dict[str, str | None]:
        assert isinstance(self, Repository)
        return self._valid_versions(await self._scan_keys())

    # --- single keys: a key a bundle holds reads and writes as one of its own -------
    async def _contains(self, key: str) -> bool:
        if await self.s3.contains(key):
            return True
        return key in await self._bundled_values([key])

    async def _get(self, key: str) -> Any:
        assert isinstance(self, SerializedMetadataRepository)
        try:
            return await SerializedMetadataRepository._get(self, key)
        except KeyNotFoundError:
            found = await self._bundled_values([key])
            if key in found:
                return found[key]
            raise

    async def _get_many(self, keys: list[str]) -> dict[str, Any]:
        """With many keys: which are stored, from coalesced listing pages (one per
        "directory"), then a ``GetObject`` of each stored one only."""
        assert isinstance(self, SerializedMetadataRepository)
        wanted = list(dict.fromkeys(keys))
        if len(wanted) >= _PRESENCE_FIRST:
            present = await asyncio.gather(*(self.s3.contains(k) for k in wanted))
            stored = [k for k, there in zip(wanted, present, strict=True) if there]
        else:
            stored = wanted
        out = await SerializedMetadataRepository._get_many(self, stored)
        missing = [k for k in wanted if k not in out]
        for key, value in (await self._bundled_values(missing)).items():
            out.setdefault(key, value)
        return out

    async def _create(self, key: str, value: Any) -> bool:
        """``PutObject`` with ``If-None-Match``; where bundles are kept, then a look at them:
        a key a bundle holds is someone's already (the object is removed, answer False)."""
        assert isinstance(self, SerializedMetadataRepository)
        if not await SerializedMetadataRepository._create(self, key, value):
            return False
        if key in await self._bundled_values([key]):
            await self.s3._delete(key)
            return False
        return True

    async def _create_many(self, values: dict[str, Any]) -> set[str]:
        """A ``PutObject`` with ``If-None-Match`` each (a few at once), then one look at the
        bundles where they are kept."""
        assert isinstance(self, SerializedMetadataRepository)
        gate = asyncio.Semaphore(self._concurrency)

        async def one(key: str, value: Any) -> bool:
            async with gate:
                return await SerializedMetadataRepository._create(self, key, value)

        items = list(values.items())
        done = await asyncio.gather(*(one(k, v) for k, v in items))
        made = {k for (k, _v), ok in zip(items, done, strict=True) if ok}
        taken = set(await self._bundled_values(sorted(made)))
        if taken:
            await self.s3._delete_many(sorted(taken))
        return made - taken

    async def _delete(self, key: str) -> None:
        await self.s3.delete(key)
        await self._drop_from_bundles([key])

    async def _delete_many(self, keys: list[str]) -> None:
        """``DeleteObjects`` of up to 1,000 keys per request (and the keys taken out of the
        bundles that hold them, where bundles are kept)."""
        await self.s3._delete_many(keys)
        await self._drop_from_bundles(keys)

    async def _replace_if(self, key: str, expected: Any, value: Any) -> bool:
        if await self._replace_stored_if(key, expected, value):
            return True
        assert isinstance(self, SerializedMetadataRepository)
        return await self._move_out(key, expected, self._encode(key, value))

    async def _replace_stored_if(self, key: str, expected: Any, value: Any) -> bool:
        """Compare-and-swap in one ``PutObject`` with ``If-Match`` when ``expected`` is what
        this repository last stored under ``key`` conditionally (a claim's heartbeat);
        otherwise one ``GetObject`` (value and ETag), a comparison, then that ``PutObject``."""
        assert isinstance(self, SerializedMetadataRepository)
        data = self._encode(key, value)
        try:
            mine: bytes | None = self._encode(key, expected)
        except RepositoryError:
            mine = None  # not a storable value: it cannot be what is stored
        if mine is not None:
            done = await self.s3.replace_own(key, mine, data)
            if done is not None:
                return done
        try:
            current, etag = await self.s3.read_versioned(key)
        except KeyNotFoundError:
            return False
        if etag is None or self._decode(key, current) != expected:
            return False
        return await self.s3._put_if_match(key, etag, data)


class YamlMetadataS3Repository(_S3MetadataMixin, YamlMetadataRepository):
    """One YAML object per key: ``s3://bucket/prefix+key+suffix`` (``suffix`` default ``.yaml``).

    Extra keyword arguments (``retry``, ``create_bucket``, ...) go to
    :class:`S3BucketRepository`.
    """

    default_suffix = ".yaml"


class JsonMetadataS3Repository(_S3MetadataMixin, JsonMetadataRepository):
    """One JSON object per key: ``s3://bucket/prefix+key+suffix`` (``suffix`` default ``.json``).

    Extra keyword arguments (``retry``, ``create_bucket``, ...) go to
    :class:`S3BucketRepository`.
    """

    default_suffix = ".json"
