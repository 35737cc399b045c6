"""S3 metadata repositories: structured values as YAML or JSON objects in a bucket."""

from __future__ import annotations

from typing import Any

from ...errors import KeyNotFoundError, RepositoryError
from ..base import BlobRepository
from ..serialized import JsonMetadataRepository, SerializedMetadataRepository, YamlMetadataRepository
from ._bucket import S3BucketRepository

__all__ = ("YamlMetadataS3Repository", "JsonMetadataS3Repository")


class _S3MetadataMixin:
    """Exposes the naming of the underlying :class:`S3BucketRepository`, and its bulk and
    conditional requests where they save round trips."""

    blobs: BlobRepository

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

    async def _delete_many(self, keys: list[str]) -> None:
        """``DeleteObjects`` of up to 1,000 keys per request."""
        await self.s3._delete_many(keys)

    async def _replace_if(self, key: str, expected: Any, value: Any) -> bool:
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


def _metadata_store(
    client: Any, bucket: str, prefix: str, suffix: str, options: dict[str, Any]
) -> S3BucketRepository:
    # metadata values are written whole (one PutObject): deletes need not look for uploads
    return S3BucketRepository(client, bucket, prefix, suffix, **{"abort_uploads_on_delete": False, **options})


class YamlMetadataS3Repository(_S3MetadataMixin, YamlMetadataRepository):
    """One YAML object per key: ``s3://bucket/prefix+key+suffix``.

    Extra keyword arguments (``retry``, ``create_bucket``, ...) go to
    :class:`S3BucketRepository`.
    """

    def __init__(
        self,
        client: Any,
        bucket: str,
        prefix: str = "",
        suffix: str = ".yaml",
        *,
        concurrency: int = 32,
        **options: Any,
    ) -> None:
        super().__init__(_metadata_store(client, bucket, prefix, suffix, options), concurrency=concurrency)


class JsonMetadataS3Repository(_S3MetadataMixin, JsonMetadataRepository):
    """One JSON object per key: ``s3://bucket/prefix+key+suffix``.

    Extra keyword arguments (``retry``, ``create_bucket``, ...) go to
    :class:`S3BucketRepository`.
    """

    def __init__(
        self,
        client: Any,
        bucket: str,
        prefix: str = "",
        suffix: str = ".json",
        *,
        concurrency: int = 32,
        **options: Any,
    ) -> None:
        super().__init__(_metadata_store(client, bucket, prefix, suffix, options), concurrency=concurrency)
