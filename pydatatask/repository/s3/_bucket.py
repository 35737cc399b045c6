"""S3 blobs: :class:`S3BucketRepository`, one object per key in a bucket.

The operations (listing, single keys, bucket checks, conditional writes) live here; what
errors mean is in ``_errors``, streaming reads in ``_reader``, writes in ``_writer``.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, TypeVar

from ..._deps import require
from ...backoff import Backoff
from ...errors import ConfigurationError, InvalidKeyError, KeyNotFoundError, PydatataskError, RepositoryError
from ...session import resolve
from ..base import BlobReader, BlobRepository, BlobWriter
from ..journal import current_journal
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

    async def _delete(self, key: str) -> None:
        client = resolve(self._client)
        name = self.object_name(key)
        await self._call(
            f"deleting {self.url(key)}", lambda: client.delete_object(Bucket=self._bucket, Key=name)
        )
        if not self.abort_uploads_on_delete:
            return
        # a writer that was killed, or could not abort while the server was down, leaves an
        # in-progress multipart upload (invisible, but stored): deleting the key removes it
        # too, so cleaning up after a crashed or failed job leaves no debris
        response = await self._call(
            f"listing the uploads in progress to {self.url(key)}",
            lambda: client.list_multipart_uploads(Bucket=self._bucket, Prefix=name),
        )
        for upload in response.get("Uploads", ()):
            if upload.get("Key") != name:
                continue
            try:
                await self._call(
                    f"aborting the multipart upload to {self.url(key)}",
                    lambda u=upload["UploadId"]: client.abort_multipart_upload(  # type: ignore[misc]
                        Bucket=self._bucket, Key=name, UploadId=u
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
        await self._call(
            f"writing {self.url(key)}", lambda: client.put_object(Bucket=self._bucket, Key=name, Body=body)
        )

    async def _create_bytes(self, key: str, data: bytes) -> bool:
        client = resolve(self._client)
        name = self.object_name(key)
        try:
            # not idempotent: a repeat after a lost response would see our own object and
            # answer False, so only failures that never reached the server are retried
            await self._call(
                f"creating {self.url(key)}",
                lambda: client.put_object(Bucket=self._bucket, Key=name, Body=data, IfNoneMatch="*"),
                idempotent=False,
                expect=EXISTS_CODES,
            )
        except Expected:
            return False
        return True

    async def _replace_bytes_if(self, key: str, expected: bytes, data: bytes) -> bool:
        # compare-and-swap on the ETag: read, compare, then PutObject with If-Match; a 412
        # (or, on some servers, 404 for a vanished object) means another writer won
        try:
            response = await self._get_object(key)
        except KeyNotFoundError:
            return False
        async with response["Body"] as body:
            current = await body.read()
        if current != expected:
            return False
        client = resolve(self._client)
        name = self.object_name(key)
        etag = response.get("ETag")
        try:
            await self._call(
                f"replacing {self.url(key)}",
                lambda: client.put_object(Bucket=self._bucket, Key=name, Body=data, IfMatch=etag),
                idempotent=False,
                expect=EXISTS_CODES | NOT_FOUND_CODES,
            )
        except Expected:
            return False
        return True
