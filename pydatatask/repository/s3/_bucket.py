"""S3 blobs: :class:`S3BucketRepository`, one object per key in a bucket.

The operations (listing, single keys, bucket checks, conditional writes) live here; what
errors mean is in ``_errors``, streaming reads in ``_reader``, writes in ``_writer``.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, TypeVar

from ..._deps import require
from ..._taskgroups import first_error
from ...backoff import Backoff
from ...errors import ConfigurationError, InvalidKeyError, KeyNotFoundError, PydatataskError, RepositoryError
from ...session import resolve
from ..base import BlobReader, BlobRepository, BlobWriter
from ..journal import current_journal
from ._coalesce import Coalescer
from ._errors import (
    EXISTS_CODES,
    NOT_FOUND_CODES,
    Expected,
    client_attempts,
    error_code,
    retryable,
    translate,
)
from ._reader import S3Reader
from ._writer import S3Writer

__all__ = ("S3BucketRepository", "MIN_PART_SIZE", "MAX_SINGLE_PUT")

log = logging.getLogger("pydatatask.repository.s3")

T = TypeVar("T")

MiB = 1024 * 1024
#: the smallest part S3 accepts in a multipart upload (all parts but the last)
MIN_PART_SIZE = 5 * MiB
MAX_SINGLE_PUT = 5 * 1024 * MiB  # the S3 limit of one PutObject

# a client that retries by itself gets each request once from us (one retry layer)
_ONCE = Backoff(attempts=1)

#: names per ``DeleteObjects`` request (the S3 limit) and per listing page
BULK_NAMES = 1000
#: objects whose ETag this repository remembers from its own conditional writes
OWN_WRITES = 65_536
#: ``DeleteObjects`` requests of one ``delete_many`` in flight at once
_DELETE_CONCURRENCY = 4


def _digest(data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=16).digest()


class S3BucketRepository(BlobRepository):
    """Blobs as S3 objects ``prefix + key + suffix`` in ``bucket``.

    ``client`` is an aiobotocore S3 client or a session accessor for one. ``prefix`` is
    used verbatim (use ``"dir/"`` for a directory-like prefix). Values up to
    ``multipart_threshold`` bytes are sent with one ``PutObject``; larger ones as a
    multipart upload of ``part_size`` parts (at least 5 MiB, the S3 minimum). With
    ``create_bucket=True``, :meth:`validate` creates a missing bucket.

    Transient errors (throttling, 5xx, dropped or refused connections) are retried under
    ``retry`` (a :class:`~pydatatask.backoff.Backoff`; the default is ``Backoff()``), and
    only once per request, whoever retries: if the client retries by itself (botocore's
    ``retries`` config allows more than one attempt, as botocore's default does), its
    retries are the only ones and this repository sends each request once; then a
    ``retry=`` of more than one attempt is a :class:`~pydatatask.errors.ConfigurationError`
    (raised at the first request, when the client is known). Make the client
    with ``retries={"total_max_attempts": 1}`` to have pydatatask's retries, which repeat
    a conditional write only when it never reached the server. A read whose connection
    drops mid-body is resumed under ``retry`` in any case (botocore never retries those).

    Keys are object names under the prefix, exactly (UTF-8, spaces, ``+``, ``%`` and
    all): ``a/b c/d`` is the object ``prefix + "a/b c/d" + suffix``. Listings are
    recursive: every object under the prefix whose name (without prefix and suffix) is a
    valid key. With ``flat=True`` only the objects directly under the prefix are keys
    (a ``Delimiter="/"`` listing, as a file browser shows a folder), and keys containing
    ``/`` are refused. An object name is at most 1,024 bytes (the S3 limit), prefix and
    suffix included: longer keys are refused with
    :class:`~pydatatask.errors.InvalidKeyError`. :meth:`~pydatatask.repository.base.Repository.versions` gives each object's
    ETag, from the same ``ListObjectsV2`` pages.
    """

    def __init__(
        self,
        client: Any,
        bucket: str,
        prefix: str = "",
        suffix: str = "",
        *,
        multipart_threshold: int = 8 * MiB,
        part_size: int = 8 * MiB,
        retry: Backoff | None = None,
        create_bucket: bool = False,
        abort_uploads_on_delete: bool = True,
        flat: bool = False,
    ) -> None:
        require("aiobotocore", "s3")
        if not isinstance(bucket, str) or not bucket or "/" in bucket:
            raise ConfigurationError(f"invalid S3 bucket name {bucket!r}")
        if not isinstance(prefix, str) or not isinstance(suffix, str):
            raise ConfigurationError("the S3 prefix and suffix must be strings")
        if part_size < MIN_PART_SIZE:
            raise ConfigurationError(
                f"part_size {part_size} is below the S3 minimum part size of {MIN_PART_SIZE} bytes (5 MiB)"
            )
        if multipart_threshold < 0:
            raise ConfigurationError("multipart_threshold must not be negative")
        if retry is not None and not isinstance(retry, Backoff):
            raise ConfigurationError(f"retry must be a pydatatask.Backoff, not {type(retry).__name__}")
        self._client = client
        self._bucket = bucket
        self._prefix = prefix
        self._suffix = suffix
        self.multipart_threshold = multipart_threshold
        self.part_size = part_size
        #: the retry policy of this repository's requests (see the class docstring)
        self.retry = retry or Backoff()
        self._retry_given = retry is not None
        self.create_bucket = create_bucket
        self.abort_uploads_on_delete = abort_uploads_on_delete
        #: list only the objects directly under the prefix (and refuse keys with ``/``)
        self.flat = flat
        self._name_bytes = len(prefix.encode("utf-8")) + len(suffix.encode("utf-8"))
        # object name -> (ETag, digest of the bytes) of what this repository itself stored
        # with a conditional write and has not changed since: a compare-and-swap of those
        # bytes is then one PutObject with If-Match, without reading the object back
        self._own: dict[str, tuple[str, bytes]] = {}
        # concurrent single-key checks and deletes go together (see _coalesce)
        self._checks: Coalescer[bool] = Coalescer(self._contains_batch, BULK_NAMES)
        self._deletes: Coalescer[None] = Coalescer(self._delete_batch, BULK_NAMES)

    # --- naming ---------------------------------------------------------------
    @property
    def client(self) -> Any:
        """The live aiobotocore client (resolving a session accessor)."""
        return resolve(self._client)

    @property
    def bucket(self) -> str:
        return self._bucket

    @property
    def prefix(self) -> str:
        return self._prefix

    @property
    def suffix(self) -> str:
        return self._suffix

    @property
    def endpoint_url(self) -> str | None:
        """The client's endpoint URL, or ``None`` if the client is not available yet."""
        try:
            client = resolve(self._client)
        except PydatataskError:
            return None
        meta = getattr(client, "meta", None)
        url = getattr(meta, "endpoint_url", None)
        return str(url) if url else None

    def object_name(self, key: str) -> str:
        """The S3 object name that holds ``key``."""
        return f"{self._prefix}{key}{self._suffix}"

    def url(self, key: str) -> str:
        """``s3://bucket/prefix+key+suffix``."""
        return f"s3://{self._bucket}/{self.object_name(key)}"

    def describe(self) -> str:
        return f"s3://{self._bucket}/{self._prefix}*{self._suffix}"

    def _where(self) -> str:
        return f"bucket {self._bucket!r} at {self.endpoint_url or 'the default AWS endpoint'}"

    # --- the one place backend errors cross into pydatatask --------------------
    def _request_retry(self) -> Backoff:
        """The policy for one request: ours, or a single attempt if the client retries itself."""
        try:
            client = resolve(self._client)
        except PydatataskError:
            return self.retry  # the call itself will say what is wrong with the client
        own = client_attempts(client)
        if own <= 1:
            return self.retry
        if self._retry_given and self.retry.attempts > 1:
            raise ConfigurationError(
                f"{self.describe()}: the S3 client retries each request itself ({own} attempts in its "
                f"botocore config) and retry= asks for {self.retry.attempts} more: make the client with "
                'retries={"total_max_attempts": 1}, or leave out retry='
            )
        return _ONCE

    async def _call(
        self,
        what: str,
        fn: Callable[[], Awaitable[T]],
        *,
        idempotent: bool = True,
        expect: frozenset[str] = frozenset(),
    ) -> T:
        """Run ``fn`` with retries; translate its failure into the pydatatask error tree.

        Error codes in ``expect`` are raised as :class:`Expected` for the caller.
        ``asyncio.CancelledError`` is a ``BaseException`` and always passes through.
        """

        def fail(exc: Exception, attempts: int) -> BaseException:
            code = error_code(exc)
            if code and code in expect:
                return Expected(code, exc)
            return translate(exc, what, self._where(), attempts)

        def transient(exc: Exception) -> bool:
            code = error_code(exc)
            return not (code and code in expect) and retryable(exc, idempotent)

        return await self._request_retry().run(
            f"{self.describe()}: {what}",
            fn,
            transient=transient,
            fail=fail,
            describe=lambda exc: error_code(exc) or type(exc).__name__,
            logger=log,
        )

    # --- listing and single keys ------------------------------------------------
    def _check_key(self, key: str) -> str:
        if self.flat and "/" in key:
            raise InvalidKeyError(
                key,
                f"{self.describe()} lists only the objects directly under its prefix (flat=True): no '/' in keys",
            )
        if "\\" in key:
            # SeaweedFS stores "a\\b" as "a/b" (and other servers follow Windows paths):
            # the object would be listed, and overwrite, under another key
            raise InvalidKeyError(
                key, f"{self.describe()}: S3 keys may not contain '\\' (some servers store it as '/')"
            )
        if not key.isascii() or len(key) + self._name_bytes > 1024:
            size = len(key.encode("utf-8")) + self._name_bytes
            if size > 1024:
                raise InvalidKeyError(
                    key,
                    f"an S3 object name is at most 1024 bytes in UTF-8, and {self.object_name(key)[:40]!r}... "
                    f"(prefix, key and suffix) has {size}",
                )
        return key

    async def _scan(self) -> dict[str, str | None]:
        """Every stored name under the prefix (without prefix and suffix) with its ETag:
        one ``ListObjectsV2`` listing (recursive, or delimited with ``flat``)."""
        client = resolve(self._client)
        prefix, suffix = self._prefix, self._suffix
        cut, n = len(prefix), len(suffix)

        async def scan() -> dict[str, str | None]:
            names: dict[str, str | None] = {}
            kwargs: dict[str, Any] = {"Bucket": self._bucket}
            if prefix:
                kwargs["Prefix"] = prefix
            if self.flat:
                kwargs["Delimiter"] = "/"  # sub-"folders" come back as CommonPrefixes, ignored
            async for page in client.get_paginator("list_objects_v2").paginate(**kwargs):
                for obj in page.get("Contents", ()):
                    name: str = obj["Key"][cut:]
                    if n:
                        if len(name) <= n or not name.endswith(suffix):
                            continue
                        name = name[:-n]
                    names[name] = obj.get("ETag")
            return names

        return await self._call(f"listing {self.describe()}", scan)

    async def _list(self) -> Iterable[str]:
        return (await self._scan()).keys()

    async def _list_versions(self) -> dict[str, str | None]:
        """Each object's ETag, from the listing itself (no request per key)."""
        return self._valid_versions(await self._scan())

    async def _contains(self, key: str) -> bool:
        """One ``HeadObject``; checks made while another is under way go together into one
        listing page (see :meth:`_contains_batch`)."""
        return await self._checks(key)

    async def _head(self, key: str) -> bool:
        client = resolve(self._client)
        name = self.object_name(key)
        try:
            await self._call(
                f"checking {self.url(key)}",
                lambda: client.head_object(Bucket=self._bucket, Key=name),
                expect=NOT_FOUND_CODES,
            )
        except Expected:
            return False
        return True

    async def _contains_batch(self, keys: list[str]) -> dict[str, bool | BaseException]:
        """Whether each key is stored: the keys whose objects share a "directory" (the name
        up to its last ``/``) with another are looked up with one delimited
        ``ListObjectsV2`` page of that directory, the others with a ``HeadObject`` each.

        Only one directory at a time, delimited: servers that keep objects in a tree
        (SeaweedFS) list ``d/x/...`` where ``d/x`` sorts among the names of ``d/``, not in
        the byte order of whole names, so a page over several directories could skip a
        name past its ``StartAfter``. Within one directory the names come in order.
        """
        groups: dict[str, list[str]] = {}
        for key in keys:
            name = self.object_name(key)
            groups.setdefault(name[: name.rfind("/") + 1], []).append(key)
        answers: dict[str, bool | BaseException] = {}

        async def one(key: str) -> None:
            answers[key] = await self._head(key)

        async def page(directory: str, members: list[str]) -> None:
            answers.update(await self._list_directory(directory, members))

        try:
            async with asyncio.TaskGroup() as tg:
                for directory, members in groups.items():
                    if len(members) == 1:
                        tg.create_task(one(members[0]))
                    else:
                        tg.create_task(page(directory, members))
        except BaseExceptionGroup as group:
            error = first_error(group)  # a request failed (backend down, ...): that error
            raise error from error.__cause__
        return answers

    async def _list_directory(self, directory: str, keys: list[str]) -> dict[str, bool]:
        """Whether each of ``keys`` (objects directly under ``directory``) is stored, from one
        delimited listing page starting just below the first name; the keys past the end of
        a truncated page get a ``HeadObject`` each. The page is asked for after every
        caller asked, so it answers as a ``HeadObject`` sent then would."""
        client = resolve(self._client)
        names = {self.object_name(k): k for k in keys}
        first = min(names)  # str order is the order of UTF-8 bytes, as S3 sorts names
        kwargs: dict[str, Any] = {
            "Bucket": self._bucket,
            "Prefix": directory,
            "Delimiter": "/",
            # enough for the names asked and some stored between them: each listed name
            # costs the client its parsing (a page of names already done costs a lot)
            "MaxKeys": min(BULK_NAMES, 4 * len(keys) + 16),
        }
        if len(first) > len(directory) + 1:
            kwargs["StartAfter"] = first[:-1]  # a proper prefix sorts before the name itself
        response: dict[str, Any] = await self._call(
            f"checking {len(keys)} keys of {self.describe()}", lambda: client.list_objects_v2(**kwargs)
        )
        listed = [obj["Key"] for obj in response.get("Contents", ())]
        seen = set(listed)
        # a complete page holds every name after StartAfter; a truncated one up to its last
        truncated = bool(response.get("IsTruncated"))
        last = listed[-1] if listed else ""
        answers: dict[str, bool] = {}
        rest = []
        for name, key in names.items():
            if name in seen:
                answers[key] = True
            elif not truncated or name <= last:
                answers[key] = False
            else:
                rest.append(key)
        for key, found in zip(rest, await asyncio.gather(*(self._head(k) for k in rest)), strict=True):
            answers[key] = found
        return answers

    async def _delete(self, key: str) -> None:
        self._own.pop(self.object_name(key), None)
        if not self.abort_uploads_on_delete:
            # nothing but the object to remove: deletes made while another is under way
            # go together into one DeleteObjects (claims released as their jobs end)
            await self._deletes(key)
            return
        client = resolve(self._client)
        name = self.object_name(key)
        await self._call(
            f"deleting {self.url(key)}", lambda: client.delete_object(Bucket=self._bucket, Key=name)
        )
        await self._abort_uploads([key])

    async def _delete_batch(self, keys: list[str]) -> dict[str, None | BaseException]:
        """Delete ``keys`` (at most :data:`BULK_NAMES`): one ``DeleteObject`` for one key, one
        ``DeleteObjects`` for more; a key the server could not delete gets its error."""
        if len(keys) == 1:
            client = resolve(self._client)
            name = self.object_name(keys[0])
            await self._call(
                f"deleting {self.url(keys[0])}", lambda: client.delete_object(Bucket=self._bucket, Key=name)
            )
            return {keys[0]: None}
        failed = await self._delete_objects(keys)
        return {k: failed.get(k) for k in keys}

    async def _delete_objects(self, keys: list[str]) -> dict[str, RepositoryError]:
        """One ``DeleteObjects`` (quiet) of ``keys``; the keys it could not delete, with why."""
        client = resolve(self._client)
        by_name = {self.object_name(k): k for k in keys}
        request = {"Objects": [{"Key": n} for n in by_name], "Quiet": True}
        response: dict[str, Any] = await self._call(
            f"deleting {len(keys)} keys of {self.describe()}",
            lambda: client.delete_objects(Bucket=self._bucket, Delete=request),
        )
        failed: dict[str, RepositoryError] = {}
        for error in response.get("Errors", ()):
            name, code = error.get("Key"), str(error.get("Code", ""))
            if name not in by_name or code in NOT_FOUND_CODES:
                continue  # already absent: deleted
            key = by_name[name]
            failed[key] = RepositoryError(
                f"deleting {self.url(key)}: {self._where()} refused: {code}: {error.get('Message', '')}".rstrip(
                    ": "
                )
            )
        return failed

    async def _delete_many(self, keys: list[str]) -> None:
        """``DeleteObjects`` of up to 1,000 names per request (a few requests at once), then,
        with ``abort_uploads_on_delete``, one listing of the uploads in progress under the
        prefix. Keys the server could not delete are named in one
        :class:`~pydatatask.errors.RepositoryError` after the others are deleted."""
        unique = list(dict.fromkeys(keys))
        for key in unique:
            self._own.pop(self.object_name(key), None)
        chunks = [unique[i : i + BULK_NAMES] for i in range(0, len(unique), BULK_NAMES)]
        gate = asyncio.Semaphore(_DELETE_CONCURRENCY)

        async def one(chunk: list[str]) -> dict[str, RepositoryError]:
            async with gate:
                return await self._delete_objects(chunk)

        failed: dict[str, RepositoryError] = {}
        for part in await asyncio.gather(*(one(c) for c in chunks)):
            failed.update(part)
        if self.abort_uploads_on_delete:
            await self._abort_uploads([k for k in unique if k not in failed])
        if failed:
            sample = ", ".join(repr(k) for k in list(failed)[:5])
            more = f" and {len(failed) - 5} more" if len(failed) > 5 else ""
            first = next(iter(failed.values()))
            raise RepositoryError(
                f"deleting {len(unique)} keys of {self.describe()}: {len(failed)} not deleted "
                f"({sample}{more}); the first: {first}"
            ) from first

    async def _abort_uploads(self, keys: list[str]) -> None:
        """Abort the multipart uploads in progress to ``keys``: a writer that was killed, or
        could not abort while the server was down, leaves one (invisible, but stored), so
        cleaning up after a crashed or failed job leaves no debris."""
        if not keys:
            return
        client = resolve(self._client)
        names = {self.object_name(k) for k in keys}
        # one key: its own name as the listing prefix; several: the repository's prefix
        where = next(iter(names)) if len(names) == 1 else self._prefix
        what = (
            f"listing the uploads in progress to {self.url(keys[0]) if len(keys) == 1 else self.describe()}"
        )

        async def uploads() -> list[dict[str, Any]]:
            found: list[dict[str, Any]] = []
            kwargs: dict[str, Any] = {"Bucket": self._bucket, "Prefix": where}
            async for page in client.get_paginator("list_multipart_uploads").paginate(**kwargs):
                found.extend(u for u in page.get("Uploads", ()) if u.get("Key") in names)
            return found

        for upload in await self._call(what, uploads):
            name = upload["Key"]
            try:
                await self._call(
                    f"aborting the multipart upload to s3://{self._bucket}/{name}",
                    lambda n=name, u=upload["UploadId"]: client.abort_multipart_upload(  # type: ignore[misc]
                        Bucket=self._bucket, Key=n, UploadId=u
                    ),
                    expect=frozenset({"NoSuchUpload"}),
                )
            except Expected:
                pass

    async def validate(self, create: bool = False) -> None:
        """Check the bucket exists and is accessible; create it if ``create`` or ``create_bucket``."""
        client = resolve(self._client)
        what = f"checking {self.describe()}"
        try:
            await self._call(
                what,
                lambda: client.head_bucket(Bucket=self._bucket),
                expect=frozenset({"404", "NoSuchBucket", "NotFound"}),
            )
            return
        except Expected:
            pass
        if not (create or self.create_bucket):
            raise RepositoryError(
                f"{what}: {self._where()} does not exist; create it, or call validate(create=True) "
                "or pass create_bucket=True to create it when the pipeline opens"
            )
        kwargs: dict[str, Any] = {"Bucket": self._bucket}
        region = getattr(getattr(client, "meta", None), "region_name", None)
        if region and region != "us-east-1":
            kwargs["CreateBucketConfiguration"] = {"LocationConstraint": region}
        try:
            await self._call(
                f"creating {self._where()}",
                lambda: client.create_bucket(**kwargs),
                expect=frozenset({"BucketAlreadyOwnedByYou"}),
            )
        except Expected:
            pass  # created concurrently by ourselves: fine
        log.info("created S3 %s", self._where())

    # --- blobs -------------------------------------------------------------------
    async def _get_object(self, key: str, **extra: Any) -> dict[str, Any]:
        client = resolve(self._client)
        name = self.object_name(key)
        try:
            response: dict[str, Any] = await self._call(
                f"reading {self.url(key)}",
                lambda: client.get_object(Bucket=self._bucket, Key=name, **extra),
                expect=NOT_FOUND_CODES | {"PreconditionFailed", "412"},
            )
        except Expected as exc:
            if exc.code in NOT_FOUND_CODES:
                raise KeyNotFoundError(key, self.describe()) from None
            raise RepositoryError(
                f"reading {self.url(key)}: the object changed while it was being read"
            ) from exc.cause
        return response

    async def _open_reader(self, key: str) -> BlobReader:
        return S3Reader(self, key, await self._get_object(key))

    async def _open_writer(self, key: str) -> BlobWriter:
        return S3Writer(self, key)

    async def read_bytes(self, key: str) -> bytes:
        """The whole object, with one ``GetObject`` (a dropped connection resumes the read)."""
        key = self._key(key)
        reader = S3Reader(self, key, await self._get_object(key))
        try:
            return await reader.read()
        finally:
            await reader.aclose()

    async def write_bytes(self, key: str, data: bytes) -> None:
        """Store ``data`` with one ``PutObject`` (atomic; no multipart upload to leave behind)."""
        if len(data) > MAX_SINGLE_PUT:
            await super().write_bytes(key, data)
            return
        client = resolve(self._client)
        key = self._key(key)
        name = self.object_name(key)
        if (journal := current_journal()) is not None:
            await journal.note(self, key)
        body = bytes(data)
        self._own.pop(name, None)
        await self._call(
            f"writing {self.url(key)}", lambda: client.put_object(Bucket=self._bucket, Key=name, Body=body)
        )

    async def _create_bytes(self, key: str, data: bytes) -> bool:
        client = resolve(self._client)
        name = self.object_name(key)
        try:
            # not idempotent: a repeat after a lost response would see our own object and
            # answer False, so only failures that never reached the server are retried
            response: dict[str, Any] = await self._call(
                f"creating {self.url(key)}",
                lambda: client.put_object(Bucket=self._bucket, Key=name, Body=data, IfNoneMatch="*"),
                idempotent=False,
                expect=EXISTS_CODES,
            )
        except Expected:
            return False
        self._remember(name, response, data)
        return True

    def _remember(self, name: str, response: dict[str, Any], data: bytes) -> None:
        """Note the ETag of what a conditional write of ours stored (the oldest notes go
        past :data:`OWN_WRITES`)."""
        etag = response.get("ETag")
        self._own.pop(name, None)
        if not isinstance(etag, str):
            return
        if len(self._own) >= OWN_WRITES:
            del self._own[next(iter(self._own))]
        self._own[name] = (etag, _digest(data))

    async def _put_if_match(self, key: str, etag: str, data: bytes) -> bool:
        """``PutObject`` with ``If-Match: etag``; False when the object changed or is gone
        (412, or 404 on some servers for a vanished object)."""
        client = resolve(self._client)
        name = self.object_name(key)
        self._own.pop(name, None)
        try:
            response: dict[str, Any] = await self._call(
                f"replacing {self.url(key)}",
                lambda: client.put_object(Bucket=self._bucket, Key=name, Body=data, IfMatch=etag),
                idempotent=False,
                expect=EXISTS_CODES | NOT_FOUND_CODES,
            )
        except Expected:
            return False
        self._remember(name, response, data)
        return True

    async def replace_own(self, key: str, expected: bytes, data: bytes) -> bool | None:
        """Compare-and-swap without reading back, when ``expected`` is what this repository
        itself last stored under ``key`` with a conditional write: one ``PutObject`` with
        ``If-Match`` its ETag. True if replaced; None when the answer needs the stored
        object (no such write remembered, or the object changed since: someone else wrote,
        perhaps an equal value)."""
        name = self.object_name(key)
        own = self._own.get(name)
        if own is None or own[1] != _digest(expected):
            return None
        if await self._put_if_match(key, own[0], data):
            return True
        return None

    async def read_versioned(self, key: str) -> tuple[bytes, str | None]:
        """The whole object and its ETag, from one ``GetObject``."""
        response = await self._get_object(key)
        reader = S3Reader(self, key, response)
        try:
            data = await reader.read()
        finally:
            await reader.aclose()
        etag = response.get("ETag")
        return data, etag if isinstance(etag, str) else None

    async def _replace_bytes_if(self, key: str, expected: bytes, data: bytes) -> bool:
        # compare-and-swap on the ETag: our own last write needs no reading back; otherwise
        # read, compare, then PutObject with If-Match; a 412 (or, on some servers, 404 for
        # a vanished object) means another writer won
        done = await self.replace_own(key, expected, data)
        if done is not None:
            return done
        try:
            current, etag = await self.read_versioned(key)
        except KeyNotFoundError:
            return False
        if current != expected or etag is None:
            return False
        return await self._put_if_match(key, etag, data)
