"""The exception tree of pydatatask.

Every error pydatatask raises on purpose derives from :class:`PydatataskError`::

    PydatataskError
    ├── InvalidKeyError            (also ValueError)  a key breaks the key rule
    ├── KeyNotFoundError           (also KeyError)    a key is absent from a repository
    ├── RepositoryError                               a storage backend failed
    │   ├── ReadOnlyRepositoryError                   a write to a read-only view
    │   ├── UnsupportedOperationError                 the backend cannot do this
    │   ├── CorruptValueError                         a stored value does not parse
    │   └── BackendUnavailableError                   server unreachable, auth refused, timeout
    ├── SessionError
    │   └── SessionClosedError                        a resource used outside ``async with session``
    ├── MissingDependencyError     (also ImportError) an optional extra is not installed
    ├── ConfigurationError         (also ValueError)  a task, link or pipeline is set up wrongly
    │   └── PipelineFileError                         a pipeline file is wrong (file:line:column, path)
    ├── InvalidValueError          (also ValueError)  a value given by the user does not parse
    ├── JobError                                      a job failed (carries its record)
    │   └── JobTimeoutError
    └── SchedulerError                                the scheduler cannot go on

Backend errors (botocore, pymongo, OS errors, ...) are translated into this tree where they
cross into pydatatask, chained with ``raise ... from exc`` so the cause stays visible.
Messages never contain credentials.

``asyncio.TaskGroup`` wraps the errors of its tasks in an :class:`ExceptionGroup`; where
pydatatask runs a task group it re-raises the first error of the group itself, so
callers only ever catch the exceptions of this tree.
"""

from __future__ import annotations

__all__ = (
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
    "PipelineFileError",
    "InvalidValueError",
    "JobError",
    "JobTimeoutError",
    "SchedulerError",
)


class PydatataskError(Exception):
    """Root of every error pydatatask raises on purpose."""


class InvalidKeyError(PydatataskError, ValueError):
    """A key does not follow the key rule (see :mod:`pydatatask.keys`)."""

    def __init__(self, key: object, reason: str) -> None:
        self.key = key
        self.reason = reason
        shown = repr(key)
        if len(shown) > 120:  # a 1,024-byte key would drown the reason
            shown = f"{shown[:100]}...{shown[-12:]} ({len(shown)} characters)"
        super().__init__(f"invalid key {shown}: {reason}")


class KeyNotFoundError(PydatataskError, KeyError):
    """A key is not present in a repository."""

    def __init__(self, key: str, repository: str = "") -> None:
        self.key = key
        self.repository = repository
        where = f" in {repository}" if repository else ""
        super().__init__(f"key {key!r} not found{where}")

    def __str__(self) -> str:  # KeyError quotes its argument; keep the message readable
        return str(self.args[0])


class RepositoryError(PydatataskError):
    """A storage backend failed to do what was asked."""


class ReadOnlyRepositoryError(RepositoryError):
    """A write or delete was attempted on a read-only repository or view."""


class UnsupportedOperationError(RepositoryError):
    """The repository cannot perform this operation at all."""


class CorruptValueError(RepositoryError):
    """A stored value exists but cannot be decoded (broken YAML/JSON, truncated data).

    Built either from a message alone (``CorruptValueError("...")``) or from its parts,
    which are then kept as attributes and make up the one-line message:

    :param key: the key whose value does not decode.
    :param repository: the repository, as its ``describe()`` text.
    :param location: where the value is stored (a file path, ``s3://bucket/object``,
        ``mongo db.coll _id='key'``).
    :param reason: the parse error, on one line.
    """

    def __init__(
        self,
        message: str | None = None,
        *,
        key: str | None = None,
        repository: str = "",
        location: str = "",
        reason: str = "",
    ) -> None:
        self.key = key
        self.repository = repository
        self.location = location
        self.reason = " ".join(reason.split())
        if message is None:
            where = f" ({location})" if location else ""
            message = f"{repository}: the value of key {key!r}{where} is corrupt: {self.reason}"
        super().__init__(message)


class BackendUnavailableError(RepositoryError):
    """A server could not be reached, refused our credentials, or timed out."""


class SessionError(PydatataskError):
    """A session resource misbehaved (failed to open, yielded twice, ...)."""


class SessionClosedError(SessionError):
    """A session resource was used while its session is not open."""


class MissingDependencyError(PydatataskError, ImportError):
    """An optional dependency is needed; the message names the extra to install."""

    def __init__(self, module: str, extra: str) -> None:
        self.module = module
        self.extra = extra
        super().__init__(
            f"this feature needs the {module!r} package: install it with `pip install 'pydatatask[{extra}]'`"
        )


class ConfigurationError(PydatataskError, ValueError):
    """A task, link, session or pipeline is configured wrongly."""


class PipelineFileError(ConfigurationError):
    """A pipeline file that cannot be loaded: its message is one line,
    ``file:line:column: path.in.document: what is wrong``."""

    def __init__(self, file: str, line: int, column: int, path: str, problem: str) -> None:
        self.file = file
        self.line = line
        self.column = column
        self.path = path
        self.problem = problem
        where = f"{file}:{line}:{column}"
        super().__init__(f"{where}: {path}: {problem}" if path else f"{where}: {problem}")


class InvalidValueError(PydatataskError, ValueError):
    """A value given by the user (YAML or JSON to store, ...) does not parse."""


class JobError(PydatataskError):
    """A job failed; ``record`` holds its job record when one was written."""

    def __init__(self, message: str, record: dict[str, object] | None = None) -> None:
        self.record = record
        super().__init__(message)


class JobTimeoutError(JobError):
    """A job ran longer than its task's timeout."""


class SchedulerError(PydatataskError):
    """The scheduler cannot continue."""
