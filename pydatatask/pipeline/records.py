"""A per-task cache of job-record outcomes, refreshed from one listing per tick."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from ..errors import CorruptValueError, KeyNotFoundError
from ..repository.base import MetadataRepository

__all__ = ("RecordIndex",)

log = logging.getLogger("pydatatask.scheduler")


class RecordIndex:
    """What the job records of a task say: success or failure per key.

    Records are immutable once written (removing one is how a job is re-run), so a record
    is read at most once and cached. Reading is lazy: a tick reads only the records it
    needs to decide something (the upstream records of keys a downstream task could
    start), so a tick over a finished pipeline reads none.
    """

    def __init__(self, done: MetadataRepository) -> None:
        self.done = done
        self.success: dict[str, bool] = {}
        self.listed: set[str] = set()

    def note(self, key: str, record: dict[str, Any]) -> None:
        """Record an outcome the scheduler wrote itself."""
        self.success[key] = bool(record.get("success"))

    def sync(self, keys: set[str]) -> None:
        """Take the latest listing ``keys`` of the done repository."""
        self.listed = keys
        success = self.success
        if len(success) > len(keys) or any(k not in keys for k in success):
            for k in [k for k in success if k not in keys]:
                del success[k]

    async def load(self, keys: Iterable[str] | None = None) -> None:
        """Read the records of ``keys`` (default: every listed key) not read before."""
        wanted = self.listed if keys is None else keys
        listed, success = self.listed, self.success
        new = [k for k in wanted if k in listed and k not in success]
        if not new:
            return
        try:
            values = await self.done.get_many(new)
        except CorruptValueError:
            values = {}
            for k in new:
                try:
                    values[k] = await self.done.get(k)
                except KeyNotFoundError:
                    continue
                except CorruptValueError as exc:
                    log.warning("%s", exc)
                    values[k] = None
        for k, v in values.items():
            success[k] = isinstance(v, dict) and bool(v.get("success"))

    def succeeded_among(self, keys: Iterable[str]) -> set[str]:
        """Those of ``keys`` known to have a success record (call :meth:`load` first)."""
        success, listed = self.success, self.listed
        return {k for k in keys if success.get(k) is True and k in listed}

    def succeeded(self) -> set[str]:
        """Keys known to have a success record."""
        return {k for k, ok in self.success.items() if ok}

    def failed(self) -> set[str]:
        """Keys known to have a failure record."""
        return {k for k, ok in self.success.items() if not ok}
