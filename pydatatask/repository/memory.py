"""In-memory repositories: for tests of users' own pipelines, and for small state."""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Any

from ..errors import KeyNotFoundError
from ..keys import validate_key
from .base import BlobReader, BlobRepository, BlobWriter, MetadataRepository
from .journal import current_journal

__all__ = ("MemoryMetadataRepository", "MemoryBlobRepository")


class _DictKeys:
    """Key handling shared by the in-memory repositories (a dict holds the values)."""

    _data: dict[str, Any]
    #: the version of each key: the value of ``_clock`` when it was last written
    _stamps: dict[str, int]
    _clock: int = 0

    def _stamp(self, key: str) -> None:
        """Note that ``key`` was just written: it gets a version no key ever had here (a
        counter bumped on every write, so a deleted and rewritten key has a new one too)."""
        self._clock += 1
        self._stamps[key] = self._clock

    async def keys(self) -> set[str]:
        return set(self._data)  # only valid keys ever get in

    async def _list_versions(self) -> dict[str, str | None]:
        stamps = self._stamps
        return {key: str(stamps[key]) for key in self._data}

    async def _list(self) -> Iterable[str]:
        return self._data.keys()

    async def _contains(self, key: str) -> bool:
        return key in self._data

    async def _delete(self, key: str) -> None:
        self._data.pop(key, None)
        self._stamps.pop(key, None)


class MemoryMetadataRepository(_DictKeys, MetadataRepository):
    """Structured values in a dict. Values are deep-copied in and out, like a real store."""

    def __init__(self, data: dict[str, Any] | None = None, *, name: str = "") -> None:
        self._data: dict[str, Any] = {}
        self._stamps = {}
        self._name = name
        for key, value in (data or {}).items():
            self._data[validate_key(key)] = copy.deepcopy(value)
            self._stamp(key)

    def describe(self) -> str:
        return f"memory metadata{' ' + self._name if self._name else ''} ({len(self._data)} keys)"

    async def _get(self, key: str) -> Any:
        try:
            return _copy(self._data[key])
        except KeyError:
            raise KeyNotFoundError(key, self.describe()) from None

    async def _put(self, key: str, value: Any) -> None:
        self._data[key] = _copy(value)
        self._stamp(key)

    async def _create(self, key: str, value: Any) -> bool:
        if key in self._data:
            return False
        self._data[key] = _copy(value)
        self._stamp(key)
        return True

    async def _replace_if(self, key: str, expected: Any, value: Any) -> bool:
        current = self._data.get(key, _ABSENT)
        if type(current) is _Packed:
            current = _copy(current)
        if current is _ABSENT or current != expected:
            return False
        self._data[key] = _copy(value)
        self._stamp(key)
        return True

    async def _get_many(self, keys: list[str]) -> dict[str, Any]:
        data = self._data
        return {k: _copy(data[k]) for k in keys if k in data}

    # --- the same process's own state, without a round trip ---------------------
    # The job lifecycle keeps the claims and records of a task here when its ``live`` and
    # ``done`` are memory of this process: a key it passes was checked when the listing it
    # came from was made, so these neither check it again nor go through the event loop.
    # A claim is stored as given (the caller hands over a value it no longer changes).

    def holds(self, key: str) -> bool:
        """Whether ``key`` is stored (a checked key)."""
        return key in self._data

    def create_now(self, key: str, value: Any) -> bool:
        """:meth:`~pydatatask.repository.base.MetadataRepository.create` of a checked
        ``key`` with a value handed over; whether it was stored."""
        if key in self._data:
            return False
        self._data[key] = value
        self._stamp(key)
        return True

    def put_now(self, key: str, value: Any) -> None:
        """:meth:`~pydatatask.repository.base.MetadataRepository.put` of a checked
        ``key``, its value copied and kept packed (a job record: its field names shared
        with every record of the same fields, its values in a tuple;
        :meth:`~pydatatask.repository.base.MetadataRepository.get` returns it as the dict
        it was)."""
        self._data[key] = _pack(value)
        self._stamp(key)

    def delete_now(self, key: str) -> None:
        """:meth:`~pydatatask.repository.base.Repository.delete` of a checked ``key``."""
        self._data.pop(key, None)
        self._stamps.pop(key, None)


_ABSENT = object()

_SCALARS = frozenset({str, int, float, bool, type(None), bytes})


class _Packed:
    """A dict kept as the shared tuple of its keys and a tuple of its values (a few
    hundred bytes less than the dict, for a store of a million job records)."""

    __slots__ = ("fields", "values")

    def __init__(self, fields: tuple[str, ...], values: tuple[Any, ...]) -> None:
        self.fields = fields
        self.values = values


#: the field tuples of packed dicts, each kept once
_shapes: dict[tuple[str, ...], tuple[str, ...]] = {}


def _pack(value: Any) -> Any:
    """A copy of the JSON-like ``value`` with its dicts (of str keys) packed, as
    :func:`_copy` unpacks them."""
    t = type(value)
    if t in _SCALARS:
        return value
    if t is list:
        return [v if type(v) in _SCALARS else _pack(v) for v in value]
    if t is not dict:
        return _copy(value)
    fields = tuple(value)
    shape = _shapes.get(fields)
    if shape is None:  # (a shape kept is one of str keys)
        for k in fields:
            if type(k) is not str:
                return _copy(value)
        if len(_shapes) >= 1024:
            _shapes.clear()  # a store of free-form values, not records: stop collecting
        shape = _shapes[fields] = fields
    # a list built, then made a tuple: quicker than a tuple of a generator
    return _Packed(shape, tuple([v if type(v) in _SCALARS else _pack(v) for v in value.values()]))


def _copy(value: Any) -> Any:
    """A copy of a JSON-like value (dicts, lists, scalars) as fast as plain Python allows;
    other types go through :func:`copy.deepcopy`."""
    t = type(value)
    if t in _SCALARS:
        return value
    if t is dict:
        out = {}
        for k, v in value.items():
            out[k] = v if type(v) in _SCALARS else _copy(v)
        return out
    if t is list:
        return [v if type(v) in _SCALARS else _copy(v) for v in value]
    if t is _Packed:
        return {
            k: v if type(v) in _SCALARS else _copy(v) for k, v in zip(value.fields, value.values, strict=True)
        }
    return copy.deepcopy(value)


class _MemoryReader(BlobReader):
    def __init__(self, data: bytes) -> None:
        self._data = memoryview(data)
        self._pos = 0

    async def read(self, n: int = -1) -> bytes:
        end = len(self._data) if n is None or n < 0 else min(len(self._data), self._pos + n)
        chunk = bytes(self._data[self._pos : end])
        self._pos = end
        return chunk


class _MemoryWriter(BlobWriter):
    def __init__(self, repo: MemoryBlobRepository, key: str) -> None:
        self._repo = repo
        self._key = key
        self._parts: list[bytes] = []

    async def write(self, data: bytes) -> int:
        self._parts.append(bytes(data))
        return len(data)

    async def commit(self) -> None:
        self._repo._data[self._key] = b"".join(self._parts)
        self._repo._stamp(self._key)
        self._parts = []

    async def abort(self) -> None:
        self._parts = []


class MemoryBlobRepository(_DictKeys, BlobRepository):
    """Byte strings in a dict; a write becomes visible only when its writer commits."""

    def __init__(self, data: dict[str, bytes] | None = None, *, name: str = "") -> None:
        self._data: dict[str, bytes] = {validate_key(k): bytes(v) for k, v in (data or {}).items()}
        self._stamps = {}
        self._name = name
        for key in self._data:
            self._stamp(key)

    def describe(self) -> str:
        return f"memory blobs{' ' + self._name if self._name else ''} ({len(self._data)} keys)"

    async def _open_reader(self, key: str) -> BlobReader:
        try:
            return _MemoryReader(self._data[key])
        except KeyError:
            raise KeyNotFoundError(key, self.describe()) from None

    async def _open_writer(self, key: str) -> BlobWriter:
        return _MemoryWriter(self, key)

    async def read_bytes(self, key: str) -> bytes:
        try:
            return self._data[validate_key(key)]
        except KeyError:
            raise KeyNotFoundError(key, self.describe()) from None

    async def write_bytes(self, key: str, data: bytes) -> None:
        key = validate_key(key)
        if (journal := current_journal()) is not None:
            await journal.note(self, key)
        self._data[key] = bytes(data)
        self._stamp(key)

    async def _create_bytes(self, key: str, data: bytes) -> bool:
        if key in self._data:
            return False
        self._data[key] = bytes(data)
        self._stamp(key)
        return True

    async def _replace_bytes_if(self, key: str, expected: bytes, data: bytes) -> bool:
        if self._data.get(key) != expected:
            return False
        self._data[key] = data
        self._stamp(key)
        return True
