"""A per-task cache of job-record outcomes, refreshed from one listing per tick."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from ..errors import CorruptValueError
from ..repository.base import MetadataRepository
from ..repository.deferred import DeferredMetadataRepository
from ..repository.memory import MemoryMetadataRepository

__all__ = ("RecordIndex", "RecordFacts", "corrupt_info", "warn_corrupt", "CORRUPT_ERROR_TYPE")

log = logging.getLogger("pydatatask.scheduler")

#: the ``error.type`` of a job record whose job read an input value that does not decode
CORRUPT_ERROR_TYPE = "pydatatask.errors.CorruptValueError"


def corrupt_info(what: str, err: CorruptValueError | dict[str, Any]) -> dict[str, str]:
    """How status output describes a corrupt key: ``what`` is corrupt (``"job record"``,
    ``"claim"``, ``"input"``), in which repository, where it is stored, why, and the
    one-line message. ``err`` is the error, or the ``error`` field of a job record."""
    if isinstance(err, CorruptValueError):
        fields = {
            "repository": err.repository,
            "location": err.location,
            "reason": err.reason,
            "message": str(err),
        }
    else:
        fields = {name: str(err.get(name) or "") for name in ("repository", "location", "reason", "message")}
    return {"what": what, **fields}


_named: set[str] = set()


def warn_corrupt(err: CorruptValueError, consequence: str) -> None:
    """Log ``err`` and what follows from it, once per process (status is computed again
    and again; the same bad file is named the first time only)."""
    text = str(err)
    if text not in _named:
        _named.add(text)
        log.warning("%s; %s", text, consequence)


class RecordFacts:
    """What staleness needs of one job record (see :mod:`pydatatask.pipeline.staleness`):
    the task version and input versions it names, the upstream records it read after, the
    outputs the job left, when it ended, and what the task kept of it
    (:meth:`~pydatatask.task.base.Task.stale_facts`)."""

    __slots__ = ("success", "version", "inputs", "upstream", "outputs", "end_time", "members", "extra")

    def __init__(self, record: dict[str, Any], extra: Any = None) -> None:
        self.success = bool(record.get("success"))
        version = record.get("version")
        self.version: str | None = version if isinstance(version, str) else None
        self.inputs: dict[str, Any] = _mapping(record.get("inputs"))
        self.upstream: dict[str, Any] = _mapping(record.get("upstream"))
        outputs = record.get("outputs")
        self.outputs: list[str] | None = (
            [o for o in outputs if isinstance(o, str)] if isinstance(outputs, list) else None
        )
        end = record.get("end_time")
        self.end_time: str | None = end if isinstance(end, str) else None
        members = record.get("members")
        # the members of a fan-in job's group (None: not a fan-in record)
        self.members: tuple[str, ...] | None = (
            tuple(m for m in members if isinstance(m, str)) if isinstance(members, list) else None
        )
        self.extra = extra


#: the fields of a job record :class:`RecordFacts` reads (the rest is not kept in memory)
_FACT_FIELDS = ("success", "version", "inputs", "upstream", "outputs", "end_time", "members")
_END_TIME = _FACT_FIELDS.index("end_time")


class _Missing:
    """A field the record does not have (a record may hold ``None`` itself)."""

    __slots__ = ()


_MISSING = _Missing()


class _Items(tuple):  # type: ignore[type-arg]
    """A dict of a job record kept as the tuple of its items (a tuple of pairs takes less
    than half of a small dict; a million records keep two of them each)."""

    __slots__ = ()


def _compact(record: dict[str, Any]) -> tuple[Any, ...]:
    """The fields of ``record`` that :class:`RecordFacts` reads, in the order of
    :data:`_FACT_FIELDS` (its dicts as :class:`_Items`, a field it lacks as ``_MISSING``)."""
    out = []
    for name in _FACT_FIELDS:
        value = record.get(name, _MISSING)
        if type(value) is dict:
            value = _Items(value.items())
        out.append(value)
    return tuple(out)


def _expand(kept: tuple[Any, ...]) -> dict[str, Any]:
    """The record (its fields that :class:`RecordFacts` reads) that :func:`_compact` kept."""
    return {
        name: dict(value) if type(value) is _Items else value
        for name, value in zip(_FACT_FIELDS, kept, strict=True)
        if value is not _MISSING
    }


class _Outcomes(Mapping[str, bool]):
    """:attr:`RecordIndex.success`: True for the keys of its success records, False for
    those of its failure records, read from the two sets of keys the index keeps anyway
    (a dict beside them held every key a third time)."""

    __slots__ = ("_index",)

    def __init__(self, index: RecordIndex) -> None:
        self._index = index

    def __getitem__(self, key: str) -> bool:
        if key in self._index._ok:
            return True
        if key in self._index._failed:
            return False
        raise KeyError(key)

    def get(self, key: str, default: Any = None) -> Any:
        if key in self._index._ok:
            return True
        return False if key in self._index._failed else default

    def __contains__(self, key: object) -> bool:
        return key in self._index._ok or key in self._index._failed

    def __iter__(self) -> Iterator[str]:
        yield from self._index._ok
        yield from self._index._failed

    def __len__(self) -> int:
        return len(self._index._ok) + len(self._index._failed)

    def keys_set(self) -> set[str]:
        """The keys, as a new set."""
        return self._index._ok | self._index._failed


def _mapping(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


class RecordIndex:
    """What the job records of a task say: success or failure per key, and which keys are
    corrupt.

    Records are immutable once written (removing one is how a job is re-run), so a record
    is read at most once and cached. Reading is lazy: a tick reads only the records it
    needs to decide something (the upstream records of keys a downstream task could
    start), so a tick over a finished pipeline reads none.

    A key is *corrupt* when its record does not decode, or when its job failed because an
    input value did not decode (retrying cannot help; the data must be fixed). A corrupt
    key counts neither as succeeded nor as failed; it is logged once, when first read.
    """

    def __init__(self, done: MetadataRepository, keep: Callable[[dict[str, Any]], Any] | None = None) -> None:
        self.done = done
        self.keep = keep
        # the keys of the success records, and those of the failure records (the outcomes
        # of ``success``); ``_ok`` is handed out by succeeded() and copied before it
        # changes after that
        self._ok: set[str] = set()
        self._ok_handed = False
        self._failed: set[str] = set()
        #: ``{key: whether its record is a success}`` of the records read or noted (not
        #: the corrupt ones): a read-only mapping, kept as the index changes
        self.success: Mapping[str, bool] = _Outcomes(self)
        # the records read or noted (corrupt ones excepted), compacted (see _compact), and
        # what ``keep`` kept of them; their facts once asked for
        self._kept: dict[str, tuple[Any, ...]] = {}
        self._extra: dict[str, Any] = {}
        self._facts: dict[str, RecordFacts] = {}
        # the end times of the records noted without their facts (see noted_facts)
        self._ends: dict[str, str] = {}
        #: whether the records the scheduler notes keep what staleness reads; when not,
        #: only their outcome and end time are kept (for a task whose stale keys no tick
        #: looks for, a million jobs then keep a few hundred bytes less each)
        self.noted_facts = True
        #: the corrupt keys, as ``{key: corrupt_info(...)}``
        self.corrupt: dict[str, dict[str, str]] = {}
        self.listed: set[str] = set()
        #: the keys noted since a listing of ``done`` began (None: no listing under way)
        self._noted_since: set[str] | None = None
        #: the children that the success records of fan-out jobs list, as ``{key: {link: children}}``
        self.children: dict[str, dict[str, frozenset[str]]] = {}

    def note(self, key: str, record: dict[str, Any]) -> None:
        """Record an outcome the scheduler wrote itself."""
        if self._noted_since is not None:
            self._noted_since.add(key)
        if not record.get("success") or record.get("children") is not None:
            self._take(key, record, facts=self.noted_facts)
            return
        # the common case (what _take does with a success record that lists no children)
        if key not in self._ok:
            if self._ok_handed:
                self._ok, self._ok_handed = set(self._ok), False
            self._ok.add(key)
        self._failed.discard(key)
        self.children.pop(key, None)
        self._facts.pop(key, None)
        self._keep_facts(key, record, self.noted_facts)

    def _keep_facts(self, key: str, record: dict[str, Any], facts: bool) -> None:
        """Keep what staleness reads of ``record`` (``facts``; its error and traceback are
        never kept), or else only its end time."""
        if facts:
            self._kept[key] = _compact(record)
            if self.keep is not None:
                self._extra[key] = self.keep(record)
            self._ends.pop(key, None)
        else:
            self._kept.pop(key, None)
            self._extra.pop(key, None)
            end = record.get("end_time")
            if isinstance(end, str) and self._own() is None:
                self._ends[key] = end
            else:
                # (a done of this process's memory holds it: read there when asked)
                self._ends.pop(key, None)

    def _own(self) -> MemoryMetadataRepository | None:
        """The done repository, when it is in this process's memory (its records are read
        there without a copy: the index keeps nothing of them but their outcome)."""
        done = self.done
        if type(done) is DeferredMetadataRepository:
            done = done.target
        return done if type(done) is MemoryMetadataRepository else None

    def _take(self, key: str, record: Any, *, facts: bool = True) -> None:
        ok = isinstance(record, dict) and bool(record.get("success"))
        self._outcome(key, ok)
        children = record.get("children") if ok else None
        if isinstance(children, dict):
            self.children[key] = {
                str(link): frozenset(k for k in keys if isinstance(k, str))
                for link, keys in children.items()
                if isinstance(keys, list)
            }
        else:
            self.children.pop(key, None)  # a failure (or a redo) replaced the record that listed them
        self._facts.pop(key, None)
        if isinstance(record, dict):
            self._keep_facts(key, record, facts)
        error = record.get("error") if isinstance(record, dict) else None
        if not ok and isinstance(error, dict) and error.get("type") == CORRUPT_ERROR_TYPE:
            self.corrupt[key] = corrupt_info("input", error)

    def _outcome(self, key: str, ok: bool | None) -> None:
        """Set (None: drop) the outcome of ``key``."""
        if ok is None or not ok:
            if key in self._ok:
                if self._ok_handed:
                    self._ok, self._ok_handed = set(self._ok), False
                self._ok.discard(key)
        else:
            if key not in self._ok:
                if self._ok_handed:
                    self._ok, self._ok_handed = set(self._ok), False
                self._ok.add(key)
        if ok is False:
            self._failed.add(key)
        else:
            self._failed.discard(key)

    def listing_started(self) -> None:
        """A listing of the done repository begins (its :meth:`sync` follows): the
        records noted from now on were written after it, and it does not show them."""
        self._noted_since = set()

    def sync(self, keys: set[str]) -> None:
        """Take the latest listing ``keys`` of the done repository (a record noted since
        :meth:`listing_started` is kept: the listing was taken before it was written)."""
        self.listed = keys
        noted, self._noted_since = self._noted_since, None
        # (set operations in C: a million keys listed at every tick, all of them known)
        gone: set[str] = set()
        for known in (self._ok, self._failed, self.corrupt.keys(), self.children.keys()):
            if not keys.issuperset(known):
                gone.update(k for k in known if k not in keys)
        if noted:
            gone.difference_update(noted)
        for k in gone:
            self._outcome(k, None)
            self.corrupt.pop(k, None)
            self.children.pop(k, None)
            self._kept.pop(k, None)  # kept only of keys in success
            self._extra.pop(k, None)
            self._ends.pop(k, None)
            self._facts.pop(k, None)

    async def load(self, keys: Iterable[str] | None = None) -> None:
        """Read the records of ``keys`` (default: every listed key) not read before."""
        wanted = self.listed if keys is None else keys
        listed, corrupt = self.listed, self.corrupt
        # with set operations (in C): a million keys wanted, most of them read already
        unread = listed.intersection(wanted) if wanted is not listed else set(listed)
        unread.difference_update(self._ok)
        unread.difference_update(self._failed)
        unread.difference_update(corrupt)
        new = list(unread)
        if not new:
            return

        def bad(err: CorruptValueError) -> None:
            warn_corrupt(err, "the key is left alone until the record is fixed or removed")
            corrupt[str(err.key)] = corrupt_info("job record", err)

        values = await self.done.get_many(new, on_corrupt=bad)
        for k, v in values.items():
            self._take(k, v)

    def forget(self, key: str) -> None:
        """Drop what is known of the record of ``key`` (it was removed or replaced)."""
        self._outcome(key, None)
        for known in (
            self.corrupt,
            self._kept,
            self._extra,
            self._ends,
            self._facts,
            self.children,
        ):
            known.pop(key, None)

    def recorded(self) -> list[str]:
        """The keys whose record has been read or noted with its facts (and decodes)."""
        return list(self._kept)

    def facts(self, key: str) -> RecordFacts | None:
        """What staleness needs of the record of ``key`` (None: not read, or corrupt)."""
        facts = self._facts.get(key)
        if facts is None:
            kept = self._kept.get(key)
            if kept is None:
                return None
            facts = self._facts[key] = RecordFacts(_expand(kept), self._extra.get(key))
        return facts

    def stamp(self, key: str) -> str | None:
        """When the success record of ``key`` was made (its ``end_time``), or None (no
        success record read): what a downstream record stores to notice a redone job."""
        if not self.success.get(key) or key not in self.listed:
            return None
        kept = self._kept.get(key)
        if kept is not None:
            end = kept[_END_TIME]
        else:
            end = self._ends.get(key)
            if end is None and (own := self._own()) is not None:
                end = own.field_now(key, "end_time")
        return end if isinstance(end, str) else None

    def succeeded_among(self, keys: Iterable[str]) -> set[str]:
        """Those of ``keys`` known to have a success record (call :meth:`load` first)."""
        return self._ok.intersection(keys).intersection(self.listed)

    def succeeded(self) -> set[str]:
        """Keys known to have a success record (a set shared with later calls while no
        outcome changes: not to be modified)."""
        self._ok_handed = True
        return self._ok

    def failed(self) -> set[str]:
        """Keys known to have a failure record (corrupt ones excepted)."""
        corrupt = self.corrupt
        return {k for k in self._failed if k not in corrupt}
