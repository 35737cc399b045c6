"""A per-task cache of job-record outcomes, refreshed from one listing per tick."""

from __future__ import annotations

import logging
from typing import Any

from ..errors import CorruptValueError, KeyNotFoundError
from ..repository.base import MetadataRepository

__all__ = ("RecordIndex",)

log = logging.getLogger("pydatatask.scheduler")


class RecordIndex:
    """Which keys of a task have a success record and which a failure record.

    Records are immutable once written (removing one is how a job is re-run), so each
    tick only fetches records of keys not seen before: the cost is one listing plus the
    new records.
    """

    def __init__(self, done: MetadataRepository) -> None:
        self.done = done
        self.success: dict[str, bool] = {}

    def note(self, key: str, record: dict[str, Any]) -> None:
        """Record an outcome the scheduler wrote itself."""
        self.success[key] = bool(record.get("success"))

    async def refresh(self, keys: set[str]) -> None:
        """Bring the index in line with the listing ``keys`` of the done repository."""
        success = self.success
        gone = [k for k in success if k not in keys]
        for k in gone:
            del success[k]
        new = [k for k in keys if k not in success]
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

    def succeeded(self) -> set[str]:
        """Keys with a success record."""
        return {k for k, ok in self.success.items() if ok}

    def failed(self) -> set[str]:
        """Keys with a failure record."""
        return {k for k, ok in self.success.items() if not ok}
