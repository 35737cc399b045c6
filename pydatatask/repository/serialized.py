"""Structured values stored as YAML or JSON documents in any blob repository."""

from __future__ import annotations

import asyncio
import json
import os
import re
from collections.abc import Callable, Iterable
from typing import Any

import yaml

from .._taskgroups import first_error
from ..errors import CorruptValueError, KeyNotFoundError, RepositoryError
from ._filebundles import FileBundles
from .base import BlobRepository, MetadataRepository
from .filesystem import FileRepository

__all__ = (
    "SerializedMetadataRepository",
    "YamlMetadataRepository",
    "JsonMetadataRepository",
    "YamlMetadataFileRepository",
    "JsonMetadataFileRepository",
    "yaml_dumps",
    "yaml_loads",
    "parse_error",
)

_Loader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_Dumper: Any = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


_PLAIN = re.compile(r"[A-Za-z_][A-Za-z0-9_./+-]*\Z")
# words YAML 1.1 resolves to booleans or null: never written as plain scalars
_RESERVED = frozenset("y n yes no on off true false null".split())
_RESERVED_LEN = max(map(len, _RESERVED))  # a longer word is none of them
_ASCII_TEXT = re.compile(r"[\x00-\x7e]*\Z")
#: printable ASCII without ``"`` and ``\\``: the same between double quotes in JSON and YAML
_QUOTE_AS_IS = re.compile(r"[\x20\x21\x23-\x5b\x5d-\x7e]*\Z")
_FLOAT_OK = re.compile(r"-?[0-9]+\.[0-9]+(e[-+][0-9]+)?\Z")


def _fast_scalar(value: Any) -> str | None:
    """``value`` as a YAML 1.1 scalar that PyYAML's safe loader reads back exactly, or None
    when the general dumper must decide."""
    t = type(value)
    if t is str:
        if _PLAIN.match(value) and value.lower() not in _RESERVED:
            return value  # type: ignore[no-any-return]
        if _QUOTE_AS_IS.match(value):
            return f'"{value}"'  # what json.dumps gives for it, without the call (timestamps)
        if _ASCII_TEXT.match(value):
            return json.dumps(value)  # a JSON string is a YAML double-quoted scalar
        return None
    if t is bool:
        return "true" if value else "false"
    if value is None:
        return "null"
    if t is int:
        return str(value)
    if t is float:
        text = repr(value)
        return text if _FLOAT_OK.match(text) else None
    return None


_plain_match = _PLAIN.match
_as_is_match = _QUOTE_AS_IS.match
_float_match = _FLOAT_OK.match


def yaml_dumps(value: Any) -> bytes:
    """Serialize ``value`` as YAML (safe subset), in block style.

    Flat mappings of plain scalars (most job records and claims) are written directly;
    everything else goes through PyYAML's dumper. Either way ``yaml_loads`` gives back an
    equal value.
    """
    if type(value) is dict and value:
        # every job writes two of these (its claim and its record): the common scalars
        # are told apart here, inline, as _fast_scalar would (the rest goes through it)
        lines: list[str] = []
        add = lines.append
        known = _PLAIN_KEYS
        for k, v in value.items():
            if k not in known and not _plain_key(k):
                break
            t = type(v)
            if t is str:
                if _plain_match(v) is not None and (len(v) > _RESERVED_LEN or v.lower() not in _RESERVED):
                    add(f"{k}: {v}\n")
                    continue
                if _as_is_match(v) is not None:
                    add(f'{k}: "{v}"\n')
                    continue
            elif t is float:
                number = repr(v)
                if _float_match(number) is not None:
                    add(f"{k}: {number}\n")
                    continue
            elif t is int:
                add(f"{k}: {v}\n")
                continue
            elif v is None:
                add(f"{k}: null\n")
                continue
            elif t is bool:
                add(f"{k}: true\n" if v else f"{k}: false\n")
                continue
            text = _fast_scalar(v)
            if text is not None:
                add(f"{k}: {text}\n")
                continue
            # one level down: a flat mapping or list of scalars (a record's input versions)
            nested = _fast_nested(v)
            if nested is None:
                break
            add(f"{k}:{nested}")
        else:
            return "".join(lines).encode("ascii")
    return yaml.dump(value, Dumper=_Dumper, sort_keys=False, allow_unicode=True).encode("utf-8")


#: mapping keys known to be plain (records and claims use the same few again and again)
_PLAIN_KEYS: set[str] = set()


def _plain_key(k: Any) -> bool:
    if k in _PLAIN_KEYS:
        return True
    if type(k) is str and _PLAIN.match(k) is not None and k.lower() not in _RESERVED:
        if len(_PLAIN_KEYS) < 4096:
            _PLAIN_KEYS.add(k)
        return True
    return False


def _fast_nested(value: Any) -> str | None:
    """A flat mapping (plain keys) or list of scalars as the block YAML following ``key:``
    (``" {}"``/``" []"`` when empty), or None when the general dumper must decide."""
    t = type(value)
    if t is dict:
        if not value:
            return " {}\n"
        parts = ["\n"]
        for k, v in value.items():
            text = _fast_scalar(v)
            if text is None or not _plain_key(k):
                return None
            parts.append(f"  {k}: {text}\n")
        return "".join(parts)
    if t is list:
        if not value:
            return " []\n"
        parts = ["\n"]
        for v in value:
            text = _fast_scalar(v)
            if text is None:
                return None
            parts.append(f"- {text}\n")
        return "".join(parts)
    return None


def yaml_loads(data: bytes) -> Any:
    """Parse YAML (safe subset)."""
    return yaml.load(data, Loader=_Loader)  # noqa: S506 - the C/py *Safe* loader


def parse_error(exc: BaseException) -> str:
    """A YAML or JSON parse error on one line: what was wrong, and at which line and column."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None)
    if mark is not None and problem:
        text = f"{problem} (line {mark.line + 1}, column {mark.column + 1})"
    else:
        text = str(exc)  # json.JSONDecodeError says "... line 1 column 5 (char 4)" itself
    return " ".join(text.split())


def _json_dumps(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


class SerializedMetadataRepository(MetadataRepository):
    """Metadata values encoded into the blobs of another repository.

    A value that does not decode raises :class:`~pydatatask.errors.CorruptValueError` naming the key, the
    repository, the file or object that holds it and the parse error; it is never returned
    half-parsed (``get_many(..., on_corrupt=...)`` reports it and returns the others).
    """

    format_name = "serialized"

    def __init__(
        self,
        blobs: BlobRepository,
        dumps: Callable[[Any], bytes],
        loads: Callable[[bytes], Any],
        *,
        concurrency: int = 32,
    ) -> None:
        self.blobs = blobs
        self._dumps = dumps
        self._loads = loads
        self._concurrency = concurrency

    def describe(self) -> str:
        return f"{self.format_name} metadata in {self.blobs.describe()}"

    async def validate(self, create: bool = False) -> None:
        await self.blobs.validate(create)

    async def keys(self) -> set[str]:
        return await self.blobs.keys()

    async def _list(self) -> Iterable[str]:
        return await self.blobs.keys()

    def _check_key(self, key: str) -> str:
        return self.blobs._check_key(key)  # the blobs' own rule is this repository's

    def _keys_pass_check(self, keys: set[str]) -> bool:
        return self.blobs._keys_pass_check(keys)

    async def _list_versions(self) -> dict[str, str | None]:
        """The versions of the blobs that hold the values (one listing of ``blobs``)."""
        return await self.blobs.versions()

    async def _contains(self, key: str) -> bool:
        # checked by the blobs' own rule already (see _check_key): straight to their lookup
        return await self.blobs._contains(key)

    async def _delete(self, key: str) -> None:
        await self.blobs.delete(key)

    def _location(self, key: str) -> str:
        """The file path or object URL of ``key`` in the blob repository, where it has one."""
        for name in ("path", "url"):
            where = getattr(self.blobs, name, None)
            if callable(where):
                return str(where(key))
        return super()._location(key)

    def _decode(self, key: str, data: bytes) -> Any:
        try:
            return self._loads(data)
        except (ValueError, yaml.YAMLError) as exc:
            raise self._corrupt(key, f"not valid {self.format_name}: {parse_error(exc)}") from exc

    def _decode_or_error(self, key: str, data: bytes) -> Any:
        """The value, or the :class:`~pydatatask.errors.CorruptValueError` (the ``_get_many`` contract)."""
        try:
            return self._decode(key, data)
        except CorruptValueError as exc:
            return exc

    def _encode(self, key: str, value: Any) -> bytes:
        try:
            return self._dumps(value)
        except (TypeError, ValueError, yaml.YAMLError) as exc:
            raise RepositoryError(
                f"{self.describe()}: cannot store the value for key {key!r} as {self.format_name}: {exc}"
            ) from exc

    async def _get(self, key: str) -> Any:
        try:
            data = await self.blobs.read_bytes(key)
        except KeyNotFoundError:
            raise KeyNotFoundError(key, self.describe()) from None
        return self._decode(key, data)

    async def _put(self, key: str, value: Any) -> None:
        await self.blobs.write_bytes(key, self._encode(key, value))

    async def _create(self, key: str, value: Any) -> bool:
        return await self.blobs.create_bytes(key, self._encode(key, value))

    async def _put_many(self, values: dict[str, Any]) -> None:
        """Every value encoded first (nothing is written if one cannot be), then stored in
        one bulk write of ``blobs``."""
        await self.blobs._write_many_bytes({k: self._encode(k, v) for k, v in values.items()})

    async def _create_many(self, values: dict[str, Any]) -> set[str]:
        return await self.blobs._create_many_bytes({k: self._encode(k, v) for k, v in values.items()})

    async def _delete_many(self, keys: list[str]) -> None:
        await self.blobs._delete_many(keys)

    async def _replace_if(self, key: str, expected: Any, value: Any) -> bool:
        try:
            current = await self.blobs.read_bytes(key)
        except KeyNotFoundError:
            return False
        if self._decode(key, current) != expected:
            return False
        return await self.blobs.replace_bytes_if(key, current, self._encode(key, value))

    async def _get_many(self, keys: list[str]) -> dict[str, Any]:
        sem = asyncio.Semaphore(self._concurrency)
        out: dict[str, Any] = {}

        async def one(key: str) -> None:
            async with sem:
                try:
                    data = await self.blobs.read_bytes(key)
                except KeyNotFoundError:
                    return
            out[key] = self._decode_or_error(key, data)

        try:
            async with asyncio.TaskGroup() as tg:
                for key in keys:
                    tg.create_task(one(key))
        except BaseExceptionGroup as group:
            error = first_error(group)  # a read failed (backend down, ...): that error, unwrapped
            raise error from error.__cause__
        return out


class YamlMetadataRepository(SerializedMetadataRepository):
    """Metadata as one YAML document per key in ``blobs``."""

    format_name = "YAML"

    def __init__(self, blobs: BlobRepository, *, concurrency: int = 32) -> None:
        super().__init__(blobs, yaml_dumps, yaml_loads, concurrency=concurrency)


class JsonMetadataRepository(SerializedMetadataRepository):
    """Metadata as one JSON document per key in ``blobs``."""

    format_name = "JSON"

    def __init__(self, blobs: BlobRepository, *, concurrency: int = 32) -> None:
        super().__init__(blobs, _json_dumps, json.loads, concurrency=concurrency)


class YamlMetadataFileRepository(FileBundles, YamlMetadataRepository):
    """One YAML file per key under ``root`` (``key.yaml``), written atomically and, with
    ``fsync`` (the default), durably (see :class:`~pydatatask.repository.filesystem.FileRepository`).

    It keeps bundles (:mod:`pydatatask.repository.bundles`: the claims of a batch of jobs
    as one hidden file, ``root/.pdt-bundles/NAME.json``), read key by key as values of
    their own.
    """

    def __init__(self, root: str | os.PathLike[str], extension: str = ".yaml", *, fsync: bool = True) -> None:
        super().__init__(FileRepository(root, extension, fsync=fsync))

    @property
    def root(self) -> Any:
        return self.blobs.root  # type: ignore[attr-defined]


class JsonMetadataFileRepository(FileBundles, JsonMetadataRepository):
    """One JSON file per key under ``root`` (``key.json``), written atomically and, with
    ``fsync`` (the default), durably (see :class:`~pydatatask.repository.filesystem.FileRepository`).

    It keeps bundles (:mod:`pydatatask.repository.bundles`: the claims of a batch of jobs
    as one hidden file, ``root/.pdt-bundles/NAME.json``), read key by key as values of
    their own.
    """

    def __init__(self, root: str | os.PathLike[str], extension: str = ".json", *, fsync: bool = True) -> None:
        super().__init__(FileRepository(root, extension, fsync=fsync))

    @property
    def root(self) -> Any:
        return self.blobs.root  # type: ignore[attr-defined]
