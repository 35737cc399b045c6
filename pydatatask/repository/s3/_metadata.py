"""S3 metadata repositories: structured values as YAML or JSON objects in a bucket."""

from __future__ import annotations

from typing import Any

from ..base import BlobRepository
from ..serialized import JsonMetadataRepository, YamlMetadataRepository
from ._bucket import S3BucketRepository

__all__ = ("YamlMetadataS3Repository", "JsonMetadataS3Repository")


class _S3MetadataMixin:
    """Exposes the naming of the underlying :class:`S3BucketRepository`."""

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
