"""pydatatask: data pipelines driven by where the data is.

Repositories hold data; tasks link repositories; the scheduler runs one job per key that
is present in a task's inputs and absent from its outputs. See the documentation in
``docs/`` and ``README.rst``.

``import pydatatask`` is light: client libraries (aiobotocore, pymongo, asyncssh,
kubernetes_asyncio, httpx) and the terminal UI are imported only when used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._lazy import lazy_getattr
from .backoff import Backoff
from .errors import (
    BackendUnavailableError,
    ConfigurationError,
    CorruptValueError,
    InvalidKeyError,
    JobError,
    JobTimeoutError,
    KeyNotFoundError,
    MissingDependencyError,
    PydatataskError,
    ReadOnlyRepositoryError,
    RepositoryError,
    SchedulerError,
    SessionClosedError,
    SessionError,
    UnsupportedOperationError,
)
from .keys import is_valid_key, validate_key
from .repository import (
    AndRepository,
    BlobRepository,
    BlockingRepository,
    ClockRepository,
    DirectoryRepository,
    FallbackRepository,
    FileRepository,
    FilterRepository,
    JsonMetadataFileRepository,
    JsonMetadataRepository,
    MapValuesRepository,
    MemoryBlobRepository,
    MemoryMetadataRepository,
    MetadataRepository,
    OrRepository,
    ReadOnlyRepository,
    Repository,
    TranslateKeysRepository,
    YamlMetadataFileRepository,
    YamlMetadataRepository,
)
from .session import Session

__version__ = "0.5.0.dev0"

__all__ = (
    "__version__",
    # errors
    "PydatataskError",
    "InvalidKeyError",
    "KeyNotFoundError",
    "RepositoryError",
    "ReadOnlyRepositoryError",
    "UnsupportedOperationError",
    "CorruptValueError",
    "BackendUnavailableError",
    "SessionError",
    "SessionClosedError",
    "MissingDependencyError",
    "ConfigurationError",
    "JobError",
    "JobTimeoutError",
    "SchedulerError",
    # keys
    "is_valid_key",
    "validate_key",
    # session
    "Session",
    "Backoff",
    # repositories
    "Repository",
    "MetadataRepository",
    "BlobRepository",
    "MemoryMetadataRepository",
    "MemoryBlobRepository",
    "FileRepository",
    "DirectoryRepository",
    "YamlMetadataRepository",
    "JsonMetadataRepository",
    "YamlMetadataFileRepository",
    "JsonMetadataFileRepository",
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
    # Kubernetes tasks and executor
    "PodTask",
    "KubeExecutor",
    # executors of function tasks
    "InLoopExecutor",
    "PoolExecutor",
    # process tasks and hosts
    "ProcessTask",
    "LocalHost",
    "SSHHost",
    "Hosts",
    # command line
    "main",
    "Pipeline",
    "Task",
    "FunctionTask",
    "RetryPolicy",
    "Hooks",
    "JobState",
)

# name -> module, imported on first access
_LAZY: dict[str, str] = {
    "S3BucketRepository": ".repository",
    "YamlMetadataS3Repository": ".repository",
    "JsonMetadataS3Repository": ".repository",
    "MongoMetadataRepository": ".repository",
    "DockerRepository": ".repository",
    "main": ".cli",
    "Pipeline": ".pipeline",
    "Task": ".task",
    "FunctionTask": ".task",
    "InLoopExecutor": ".executor",
    "PoolExecutor": ".executor",
    "RetryPolicy": ".task",
    "Hooks": ".task",
    "JobState": ".task",
    "PodTask": ".task.pod",
    "KubeExecutor": ".executor.kubernetes",
    "ProcessTask": ".task.process",
    "LocalHost": ".executor.local",
    "SSHHost": ".executor.ssh",
    "Hosts": ".executor.multihost",
}


if TYPE_CHECKING:  # the lazily exported names, typed for type checkers (never imported at run time)
    from .cli import main
    from .executor import InLoopExecutor, PoolExecutor
    from .executor.kubernetes import KubeExecutor
    from .executor.local import LocalHost
    from .executor.multihost import Hosts
    from .executor.ssh import SSHHost
    from .pipeline import Pipeline
    from .repository import (
        DockerRepository,
        JsonMetadataS3Repository,
        MongoMetadataRepository,
        S3BucketRepository,
        YamlMetadataS3Repository,
    )
    from .task import FunctionTask, Hooks, JobState, RetryPolicy, Task
    from .task.pod import PodTask
    from .task.process import ProcessTask
else:
    __getattr__ = lazy_getattr(__name__, _LAZY, globals())
