"""Metadata in a MongoDB collection (or any server speaking the MongoDB wire protocol).

Storage format: one document per key, ``{"_id": key, "value": <the value>, "token": ...}``;
the key is the ``_id`` exactly (any valid key, nested paths included). Wrapping the
value (rather than storing its fields at the top level of the document) lets any JSON-like
value round trip - lists, strings, numbers, ``None`` - and keeps user fields from clashing
with ``_id``. Every write sets ``token`` to a new random string: it is the document's
version (:meth:`~pydatatask.repository.base.Repository.versions` reads it in the same
``find`` as the listing), and lets a create or conditional replace that is retried after a
lost connection recognise its own write. A document without a ``token`` (written by
another program) has the version None. Readers ignore every field but ``value``.

The client is PyMongo's own asyncio API (``pymongo.AsyncMongoClient``); Motor is refused.
pymongo is imported lazily: importing this module does not need it.
"""

from __future__ import annotations

import functools
import secrets
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any, TypeVar, cast

from .._deps import require
from ..backoff import Backoff
from ..errors import (
    BackendUnavailableError,
    ConfigurationError,
    CorruptValueError,
    KeyNotFoundError,
    RepositoryError,
)
from ..session import resolve
from .base import MetadataRepository

if TYPE_CHECKING:
    from pymongo.asynchronous.collection import AsyncCollection

__all__ = ("MongoMetadataRepository",)

T = TypeVar("T")

#: server error codes that mean "your credentials or rights are refused"
_AUTH_CODES = {11: "user not found", 13: "not authorized", 18: "authentication failed"}
#: keys per ``$in`` query in :meth:`MongoMetadataRepository.get_many`
GET_MANY_CHUNK = 5000


def _is_motor(obj: object) -> bool:
    return type(obj).__module__.split(".")[0] == "motor"


def _motor_error() -> ConfigurationError:
    return ConfigurationError(
        "MongoMetadataRepository needs a PyMongo async collection, not a Motor one (Motor is "
        "deprecated): pass `pymongo.AsyncMongoClient(...)[db][coll]` instead"
    )


class MongoMetadataRepository(MetadataRepository):
    """Structured values in a MongoDB collection, one document per key.

    ``collection`` is a ``pymongo.asynchronous.collection.AsyncCollection`` (that is,
    ``pymongo.AsyncMongoClient(...)[db][coll]``) or a session accessor / zero-argument
    function returning one (see :func:`pydatatask.session.resolve`); it is resolved at every call, so the repository can be built
    before the session opens.

    Network errors (server selection timeout, connection failure, network timeout,
    reconnect) are retried under ``retry`` (a :class:`~pydatatask.backoff.Backoff`; default
    ``Backoff()``), then raised as :class:`~pydatatask.errors.BackendUnavailableError` naming the server address (never the
    URI or credentials). Refused credentials raise ``BackendUnavailableError`` at once.
    Other server errors raise :class:`~pydatatask.errors.RepositoryError`. The cause is
    always chained.
    """

    def __init__(
        self,
        collection: AsyncCollection[Any] | Callable[[], AsyncCollection[Any]],
        *,
        retry: Backoff | None = None,
    ) -> None:
        if _is_motor(collection):
            raise _motor_error()
        if retry is not None and not isinstance(retry, Backoff):
            raise ConfigurationError(f"retry must be a pydatatask.Backoff, not {type(retry).__name__}")
        self._collection_arg = collection
        #: the retry policy of this repository's requests
        self.retry = retry or Backoff()

    # --- plumbing --------------------------------------------------------------
    @property
    def collection(self) -> AsyncCollection[Any]:
        """The live collection (resolving a session accessor)."""
        coll: Any = resolve(cast(Any, self._collection_arg))
        if _is_motor(coll):
            raise _motor_error()
        return coll  # type: ignore[no-any-return]

    def describe(self) -> str:
        try:
            coll = self.collection
        except Exception:  # session not open yet: describe must not fail
            return "mongo collection (not open)"
        return f"mongo {coll.database.name}.{coll.name}"

    @staticmethod
    def _address(coll: AsyncCollection[Any]) -> str:
        """host:port of the server(s) this collection's client talks to; no credentials."""
        client = coll.database.client
        try:
            addresses = sorted(client.topology_description.server_descriptions())
        except Exception:  # pragma: no cover - defensive: never let the message fail
            addresses = []
        return ", ".join(f"{host}:{port}" for host, port in addresses) or "unknown address"

    async def _call(self, op: str, fn: Callable[[AsyncCollection[Any]], Awaitable[T]]) -> T:
        """Run ``fn(collection)``, retrying network errors; translate pymongo errors."""
        errors = require("pymongo.errors", "mongo")
        bson_errors = require("bson.errors", "mongo")
        coll = self.collection

        async def once() -> T:
            nonlocal coll
            coll = self.collection
            return await fn(coll)

        def fail(exc: Exception, attempts: int) -> BaseException:
            where = f"{coll.database.name}.{coll.name}"
            if isinstance(exc, errors.ConnectionFailure):
                # ServerSelectionTimeoutError, AutoReconnect, NetworkTimeout are subclasses
                return BackendUnavailableError(
                    f"MongoDB server at {self._address(coll)} is unavailable ({op} on {where} failed "
                    f"after {attempts} attempt(s)): {type(exc).__name__}"
                )
            if isinstance(exc, errors.OperationFailure):
                if exc.code in _AUTH_CODES:
                    return BackendUnavailableError(
                        f"{_AUTH_CODES[exc.code]} for MongoDB server at {self._address(coll)} "
                        f"({op} on {where}); check the user, password and authSource"
                    )
                return RepositoryError(f"{op} on mongo {where} failed: code {exc.code}: {_errmsg(exc)}")
            if isinstance(exc, bson_errors.InvalidDocument | OverflowError):
                return RepositoryError(
                    f"{op} on mongo {where}: the value cannot be stored as BSON (JSON-like values only: "
                    f"dict with str keys, list, str, int up to 64 bits, float, bool, None): {exc}"
                )
            if isinstance(exc, errors.PyMongoError):
                return RepositoryError(f"{op} on mongo {where} failed: {type(exc).__name__}: {exc}")
            return exc

        return await self.retry.run(
            f"{op} on {self.describe()}",
            once,
            transient=lambda exc: isinstance(exc, errors.ConnectionFailure),
            fail=fail,
        )

    # --- lifecycle ---------------------------------------------------------------
    async def validate(self, create: bool = False) -> None:
        """Ping the server; raise :class:`~pydatatask.errors.BackendUnavailableError` if it cannot be reached.

        Collections are created by the server on first write, so ``create`` needs nothing.
        """

        async def ping(coll: AsyncCollection[Any]) -> None:
            await coll.database.command("ping")

        await self._call("ping", ping)

    # --- Repository hooks ------------------------------------------------------
    async def _list(self) -> Iterable[str]:
        # a non-str _id (an ObjectId from another writer) is never a key: warned about
        # with the stored names that are not valid keys, and skipped
        async def run(coll: AsyncCollection[Any]) -> list[str]:
            names: list[str] = []
            foreign: list[str] = []
            async for doc in coll.find({}, projection={"_id": 1}, batch_size=10_000):
                ident = doc["_id"]
                if isinstance(ident, str):
                    names.append(ident)
                else:
                    foreign.append(repr(ident))
            if foreign:
                self._warn_invalid(foreign)
            return names

        return await self._call("list", run)

    async def _list_versions(self) -> dict[str, str | None]:
        """Each document's ``token`` (a new random string at every write), from one ``find``."""

        async def run(coll: AsyncCollection[Any]) -> dict[str, str | None]:
            found: dict[str, str | None] = {}
            async for doc in coll.find({}, projection={"_id": 1, "token": 1}, batch_size=10_000):
                ident, token = doc["_id"], doc.get("token")
                if not isinstance(ident, str):
                    # a non-str _id (an ObjectId from another writer) is never a key
                    self._warn_invalid([repr(ident)])
                    continue
                found[ident] = token if isinstance(token, str) else None
            return found

        return self._valid_versions(await self._call("versions", run))

    async def _contains(self, key: str) -> bool:
        async def run(coll: AsyncCollection[Any]) -> bool:
            return await coll.find_one({"_id": key}, projection={"_id": 1}) is not None

        return await self._call("contains", run)

    async def _delete(self, key: str) -> None:
        async def run(coll: AsyncCollection[Any]) -> None:
            await coll.delete_one({"_id": key})

        await self._call("delete", run)

    async def _get(self, key: str) -> Any:
        async def run(coll: AsyncCollection[Any]) -> Any:
            return await coll.find_one({"_id": key}, projection={"value": 1})

        doc = await self._call("get", run)
        if doc is None:
            raise KeyNotFoundError(key, self.describe())
        value = self._value(key, doc)
        if isinstance(value, CorruptValueError):
            raise value
        return value

    def _location(self, key: str) -> str:
        return f"{self.describe()} _id={key!r}"

    def _value(self, key: str, doc: dict[str, Any]) -> Any:
        """The value a document holds, or the :class:`CorruptValueError` of a document
        that was not written by this class (it has no ``value`` field)."""
        if "value" not in doc:
            return self._corrupt(key, "the document has no 'value' field")
        return doc["value"]

    async def _put(self, key: str, value: Any) -> None:
        doc = _document(key, value)
        doc["token"] = secrets.token_hex(16)  # the new version (and the same one on a retry)

        async def run(coll: AsyncCollection[Any]) -> None:
            await coll.replace_one({"_id": key}, doc, upsert=True)

        await self._call("put", run)

    async def _create(self, key: str, value: Any) -> bool:
        errors = require("pymongo.errors", "mongo")
        token = secrets.token_hex(16)
        doc = _document(key, value)
        doc["token"] = token

        async def run(coll: AsyncCollection[Any]) -> bool:
            try:
                await coll.insert_one(doc)
            except errors.DuplicateKeyError:
                # the document may be our own: after a lost reply, our retry or PyMongo's own
                # retryable write (on servers that do not deduplicate it) meets our insert
                found = await coll.find_one({"_id": key}, projection={"token": 1})
                return found is not None and found.get("token") == token
            return True

        return await self._call("create", run)

    async def _replace_if(self, key: str, expected: Any, value: Any) -> bool:
        # Compare in Python (BSON compares documents field order included), then replace
        # only the exact document version read, identified by its token.
        new_token = secrets.token_hex(16)
        doc = _document(key, value)
        doc["token"] = new_token

        async def run(coll: AsyncCollection[Any]) -> bool:
            current = await coll.find_one({"_id": key}, projection={"value": 1, "token": 1})
            if current is None:
                return False
            if current.get("token") == new_token:
                return True  # a retry after a lost reply: the first attempt was ours
            if current.get("value") != expected:
                return False
            version = current.get("token")
            flt: dict[str, Any] = {
                "_id": key,
                "token": version if version is not None else {"$exists": False},
            }
            result = await coll.replace_one(flt, doc)
            return bool(result.matched_count == 1)

        return await self._call("replace_if", run)

    async def _replace_many_if(self, changes: dict[str, tuple[Any, Any]]) -> set[str]:
        """Per :data:`GET_MANY_CHUNK` keys: one ``find`` (values and tokens), a comparison in
        Python, then one unordered ``bulk_write`` of replaces, each only of the document
        version read (as :meth:`replace_if` does; ``batch_size`` one more than the keys:
        the whole answer in the first reply, the cursor closed). When fewer documents matched than were
        sent (another writer changed some meanwhile), one more ``find`` tells which of them
        carry the new token."""
        pymongo = require("pymongo", "mongo")
        keys = list(changes)
        tokens = {key: secrets.token_hex(16) for key in keys}

        async def run(coll: AsyncCollection[Any], chunk: list[str]) -> set[str]:
            found = coll.find(
                {"_id": {"$in": chunk}}, projection={"value": 1, "token": 1}, batch_size=len(chunk) + 1
            )
            current = {doc["_id"]: doc async for doc in found}
            ours: set[str] = set()
            sent: list[str] = []
            requests = []
            for key in chunk:
                doc = current.get(key)
                if doc is None:
                    continue
                if doc.get("token") == tokens[key]:
                    ours.add(key)  # a retry after a lost reply: the first attempt was ours
                    continue
                if doc.get("value") != changes[key][0]:
                    continue
                version = doc.get("token")
                flt = {"_id": key, "token": version if version is not None else {"$exists": False}}
                new = _document(key, changes[key][1])
                new["token"] = tokens[key]
                sent.append(key)
                requests.append(pymongo.ReplaceOne(flt, new))
            if not requests:
                return ours
            result = await coll.bulk_write(requests, ordered=False)
            if result.matched_count == len(requests):
                return ours | set(sent)
            check = coll.find({"_id": {"$in": sent}}, projection={"token": 1}, batch_size=len(sent) + 1)
            return ours | {d["_id"] async for d in check if d.get("token") == tokens[d["_id"]]}

        replaced: set[str] = set()
        for start in range(0, len(keys), GET_MANY_CHUNK):
            chunk = keys[start : start + GET_MANY_CHUNK]
            replaced |= await self._call("replace_many_if", functools.partial(run, chunk=chunk))
        return replaced

    async def _delete_many(self, keys: list[str]) -> None:
        """One ``delete_many`` with ``$in`` per :data:`GET_MANY_CHUNK` keys."""
        unique = list(dict.fromkeys(keys))
        for start in range(0, len(unique), GET_MANY_CHUNK):
            chunk = unique[start : start + GET_MANY_CHUNK]

            async def run(coll: AsyncCollection[Any], chunk: list[str] = chunk) -> None:
                await coll.delete_many({"_id": {"$in": chunk}})

            await self._call("delete_many", run)

    async def _put_many(self, values: dict[str, Any]) -> None:
        """One unordered ``bulk_write`` of upserting replaces (PyMongo splits it only where
        the server's batch limits require). Each document gets a new ``token``; a retry after
        a lost reply writes the same documents again."""
        pymongo = require("pymongo", "mongo")
        requests = []
        for key, value in values.items():
            doc = _document(key, value)
            doc["token"] = secrets.token_hex(16)
            requests.append(pymongo.ReplaceOne({"_id": key}, doc, upsert=True))

        async def run(coll: AsyncCollection[Any]) -> None:
            await coll.bulk_write(requests, ordered=False)

        await self._call("put_many", run)

    async def _create_many(self, values: dict[str, Any]) -> set[str]:
        """One ``insert_many(ordered=False)``: the keys whose insert failed on a duplicate
        ``_id`` were present (not created). After a lost reply and a retry, a duplicate
        whose stored ``token`` is ours was created by the first attempt."""
        errors = require("pymongo.errors", "mongo")
        docs = {}
        for key, value in values.items():
            doc = _document(key, value)
            doc["token"] = secrets.token_hex(16)
            docs[key] = doc

        async def run(coll: AsyncCollection[Any]) -> set[str]:
            try:
                await coll.insert_many(list(docs.values()), ordered=False)
            except errors.BulkWriteError as exc:
                failures = exc.details.get("writeErrors", [])
                others = [f for f in failures if f.get("code") != 11000]
                if others:
                    raise
                ordered = list(docs)
                duplicate = [ordered[f["index"]] for f in failures]
                # a duplicate may be our own insert (a retry after a lost reply)
                found = coll.find({"_id": {"$in": duplicate}}, projection={"token": 1})
                ours = {d["_id"] async for d in found if d.get("token") == docs[d["_id"]]["token"]}
                return set(docs) - set(duplicate) | ours
            return set(docs)

        return await self._call("create_many", run)

    async def _get_many(self, keys: list[str]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        unique = list(dict.fromkeys(keys))
        for start in range(0, len(unique), GET_MANY_CHUNK):
            chunk = unique[start : start + GET_MANY_CHUNK]

            async def run(coll: AsyncCollection[Any], chunk: list[str] = chunk) -> dict[str, Any]:
                found: dict[str, Any] = {}
                # batch_size = len(chunk): the whole answer in the first reply (one round
                # trip) unless it exceeds the server's 16 MiB batch limit
                cursor = coll.find({"_id": {"$in": chunk}}, projection={"value": 1}, batch_size=len(chunk))
                async for doc in cursor:
                    found[doc["_id"]] = self._value(doc["_id"], doc)
                return found

            out.update(await self._call("get_many", run))
        return out


def _document(key: str, value: Any) -> dict[str, Any]:
    return {"_id": key, "value": value}


def _errmsg(exc: Any) -> str:
    details = getattr(exc, "details", None)
    if isinstance(details, dict) and isinstance(details.get("errmsg"), str):
        return str(details["errmsg"])
    return str(exc)
