"""Links: how a task is attached to a repository, and what that means for readiness."""

from __future__ import annotations

import keyword
from dataclasses import dataclass
from enum import StrEnum

from ..errors import ConfigurationError
from ..repository.base import Repository

__all__ = ("Link", "LinkKind")


class LinkKind(StrEnum):
    """The role of a link. Inputs are required for a job to start; outputs, done and live
    inhibit it; logs is informational."""

    INPUT = "input"
    OUTPUT = "output"
    DONE = "done"
    LIVE = "live"
    LOGS = "logs"
    OTHER = "other"


_DEFAULTS = {
    LinkKind.INPUT: (True, False),
    LinkKind.OUTPUT: (False, True),
    LinkKind.DONE: (False, True),
    LinkKind.LIVE: (False, True),
    LinkKind.LOGS: (False, False),
    LinkKind.OTHER: (False, False),
}


@dataclass(frozen=True)
class Link:
    """A named attachment of a task to a repository.

    ``required_for_start``: a job starts only on keys present here (inputs).
    ``inhibits_start``: a job does not start on keys present here (outputs, done, live).
    ``is_output``: the job writes here; partial outputs of a failed job are deleted.
    """

    name: str
    repository: Repository
    kind: LinkKind = LinkKind.OTHER
    required_for_start: bool = False
    inhibits_start: bool = False
    is_output: bool = False

    @classmethod
    def make(
        cls,
        name: str,
        repository: Repository,
        kind: LinkKind | str = LinkKind.OTHER,
        *,
        required_for_start: bool | None = None,
        inhibits_start: bool | None = None,
    ) -> Link:
        """Build a link with the defaults of ``kind``, overridable per flag."""
        if not isinstance(name, str) or not name.isidentifier() or keyword.iskeyword(name):
            raise ConfigurationError(f"link name {name!r} must be a Python identifier")
        if name in ("key", "job"):
            raise ConfigurationError(f"link name {name!r} is reserved (the job key / job context)")
        if not isinstance(repository, Repository):
            raise ConfigurationError(f"link {name!r}: {repository!r} is not a pydatatask Repository")
        kind = LinkKind(kind)
        req, inh = _DEFAULTS[kind]
        return cls(
            name=name,
            repository=repository,
            kind=kind,
            required_for_start=req if required_for_start is None else required_for_start,
            inhibits_start=inh if inhibits_start is None else inhibits_start,
            is_output=kind is LinkKind.OUTPUT,
        )
