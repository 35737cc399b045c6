"""Repositories: where data lives. See :mod:`pydatatask.repository.base` for the contract.

Backends that need a heavy client library (S3, MongoDB, Docker registry) are imported
lazily on first access, so ``import pydatatask`` stays light; a missing client library
raises :class:`~pydatatask.errors.MissingDependencyError` naming the extra to install.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_getattr
from .base import BlobReader, BlobRepository, BlobWriter, MetadataRepository, Repository
from .clock import ClockRepository
from .combinators import (
    AndRepository,
    BlockingRepository,
    FallbackRepository,
    OrRepository,
    ReadOnlyRepository,
)
from .filesystem import DirectoryRepository, FileRepository
from .memory import MemoryBlobRepository, MemoryMetadataRepository
from .serialized import (
    JsonMetadataFileRepository,
    JsonMetadataRepository,
    SerializedMetadataRepository,
    YamlMetadataFileRepository,
    YamlMetadataRepository,
)
from .transform import FilterRepository, MapValuesRepository, TranslateKeysRepository
from .view import BlobView, MetadataView, RepositoryView

__all__ = (
    "Repository",
    "MetadataRepository",
    "BlobRepository",
    "BlobReader",
    "BlobWriter",
    "MemoryMetadataRepository",
    "MemoryBlobRepository",
    "FileRepository",
    "DirectoryRepository",
    "SerializedMetadataRepository",
    "YamlMetadataRepository",
    "JsonMetadataRepository",
    "YamlMetadataFileRepository",
    "JsonMetadataFileRepository",
    "RepositoryView",
    "MetadataView",
    "BlobView",
    "AndRepository",
    "OrRepository",
    "BlockingRepository",
    "FilterRepository",
    "TranslateKeysRepository",
    "MapValuesRepository",
    "FallbackRepository",
    "ReadOnlyRepository",
    "ClockRepository",
    "S3BucketRepository",
    "YamlMetadataS3Repository",
    "JsonMetadataS3Repository",
    "MongoMetadataRepository",
    "DockerRepository",
)

_LAZY = {
    "S3BucketRepository": ".s3",
    "YamlMetadataS3Repository": ".s3",
    "JsonMetadataS3Repository": ".s3",
    "MongoMetadataRepository": ".mongo",
    "DockerRepository": ".docker",
}


if TYPE_CHECKING:  # the lazily exported backends, typed for type checkers
    from .docker import DockerRepository
    from .mongo import MongoMetadataRepository
    from .s3 import JsonMetadataS3Repository, S3BucketRepository, YamlMetadataS3Repository
else:
    __getattr__ = lazy_getattr(__name__, _LAZY, globals())
