"""S3 repositories: one object per key in a bucket, named ``prefix + key + suffix``.

:class:`S3BucketRepository` stores blobs; :class:`YamlMetadataS3Repository` and
:class:`JsonMetadataS3Repository` store structured values as YAML/JSON objects on top of
it. The client is an aiobotocore S3 client, or the accessor ``@session.resource``
returns; it is resolved at every call, so repositories can be built before the session
opens. aiobotocore is imported only when a repository is built (``pip install
'pydatatask[s3]'``), so importing this module stays light.

Semantics:

* Listing is one ``ListObjectsV2`` pass over ``prefix``. The prefix is used verbatim: write
  ``"dir/"`` for a directory-like prefix (``"dir"`` also matches ``"directory/..."``).
  Names deeper than the prefix (containing ``/``) are not valid keys and are skipped with
  one warning.
* Writes are atomic: small values (up to ``multipart_threshold``) are one ``PutObject``
  at commit; larger ones are a multipart upload whose parts are sent as they fill (at most
  about one part is buffered) and which is completed on commit or aborted otherwise.
* ``create_bytes`` is ``PutObject`` with ``If-None-Match: *``: of concurrent creators
  exactly one wins.
* Backend errors are translated once, in :meth:`S3BucketRepository._call`: missing
  bucket -> :class:`RepositoryError`; refused credentials, unreachable endpoint and
  exhausted retries -> :class:`BackendUnavailableError`. Transient failures (5xx,
  throttling, connection errors, timeouts) are retried with exponential backoff and
  jitter. Messages name the bucket and endpoint, never the secret key.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable, Iterable
from types import ModuleType
from typing import Any, TypeVar

from .._deps import require
from ..errors import (
    BackendUnavailableError,
    ConfigurationError,
    KeyNotFoundError,
    PydatataskError,
    RepositoryError,
)
from ..keys import validate_key
from .base import BlobReader, BlobRepository, BlobWriter, resolve
from .journal import current_journal
from .serialized import JsonMetadataRepository, YamlMetadataRepository

__all__ = ("S3BucketRepository", "YamlMetadataS3Repository", "JsonMetadataS3Repository")

log = logging.getLogger("pydatatask.repository.s3")

T = TypeVar("T")

MiB = 1024 * 1024
#: the smallest part S3 accepts in a multipart upload (all parts but the last)
MIN_PART_SIZE = 5 * MiB
MAX_SINGLE_PUT = 5 * 1024 * MiB  # the S3 limit of one PutObject
MAX_PARTS = 10_000

# server said "not now": the request was not carried out, safe to repeat in any case
_THROTTLE_CODES = frozenset(
    {
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "RequestThrottled",
        "RequestLimitExceeded",
        "TooManyRequests",
        "TooManyRequestsException",
        "ServiceUnavailable",
        "503",
        "429",
    }
)
# server-side failures whose effect is unknown: repeat only idempotent requests
_TRANSIENT_CODES = frozenset(
    {"InternalError", "RequestTimeout", "RequestTimeoutException", "500", "502", "504"}
)
_AUTH_CODES = frozenset(
    {
        "AccessDenied",
        "AllAccessDisabled",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "InvalidToken",
        "ExpiredToken",
        "TokenRefreshRequired",
        "403",
    }
)
_NOT_FOUND_CODES = frozenset({"NoSuchKey", "404", "NotFound"})
_EXISTS_CODES = frozenset({"PreconditionFailed", "412", "ConditionalRequestConflict", "409"})

_botocore_exceptions: ModuleType | None = None


def _bexc() -> ModuleType:
    global _botocore_exceptions
    if _botocore_exceptions is None:
        _botocore_exceptions = require("botocore.exceptions", "s3")
    return _botocore_exceptions


def _error_code(exc: BaseException) -> str:
    """The S3 error code of a botocore ``ClientError`` (``""`` for anything else)."""
    response = getattr(exc, "response", None)
    if not isinstance(response, dict):
        return ""
    return str(response.get("Error", {}).get("Code", ""))


def _error_message(exc: BaseException) -> str:
    response = getattr(exc, "response", None)
    if not isinstance(response, dict):
        return ""
    return str(response.get("Error", {}).get("Message", ""))


def _http_status(exc: BaseException) -> int:
    response = getattr(exc, "response", None)
    if not isinstance(response, dict):
        return 0
    return int(response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)


def _is_client_error(exc: BaseException) -> bool:
    return isinstance(exc, _bexc().ClientError)


def _is_unsent(exc: BaseException) -> bool:
    """The request never reached the server (connection refused, connect timeout, DNS)."""
    b = _bexc()
    if isinstance(exc, b.SSLError):
        return False  # a TLS misconfiguration does not heal by retrying
    return isinstance(exc, b.ConnectionError | ConnectionRefusedError)


def _is_network(exc: BaseException) -> bool:
    """Any transport failure (including ones after the request was sent)."""
    b = _bexc()
    if isinstance(exc, b.SSLError):
        return False
    network: tuple[type[BaseException], ...] = (
        b.ConnectionError,
        b.HTTPClientError,  # ReadTimeoutError, ConnectionClosedError, ResponseStreamingError
        b.IncompleteReadError,
        OSError,  # ConnectionResetError, TimeoutError, ...
    )
    try:
        import aiohttp

        network += (aiohttp.ClientError,)
    except ImportError:  # pragma: no cover - aiobotocore depends on aiohttp
        pass
    return isinstance(exc, network)


def _retryable(exc: BaseException, idempotent: bool) -> bool:
    if _is_client_error(exc):
        code = _error_code(exc)
        status = _http_status(exc)
        if code in _THROTTLE_CODES or status in (429, 503):
            return True
        return idempotent and (code in _TRANSIENT_CODES or status >= 500)
    if _is_unsent(exc):
        return True
    return idempotent and _is_network(exc)


class _Expected(Exception):
    """An S3 error the caller asked to handle itself (``expect=`` of :meth:`_call`)."""

    def __init__(self, code: str, cause: BaseException) -> None:
        super().__init__(code)
        self.code = code
        self.cause = cause


class S3BucketRepository(BlobRepository):
    """Blobs as S3 objects ``prefix + key + suffix`` in ``bucket``.

    ``client`` is an aiobotocore S3 client or a session accessor for one. ``prefix`` is
    used verbatim (use ``"dir/"`` for a directory-like prefix). Values up to
    ``multipart_threshold`` bytes are sent with one ``PutObject``; larger ones as a
    multipart upload of ``part_size`` parts (at least 5 MiB, the S3 minimum). Transient
    errors are retried ``max_retries`` times with exponential backoff starting at
    ``retry_backoff`` seconds (capped at ``max_backoff``), with full jitter. With
    ``create_bucket=True``, :meth:`validate` creates a missing bucket.
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
        max_retries: int = 4,
        retry_backoff: float = 0.1,
        max_backoff: float = 5.0,
        create_bucket: bool = False,
        abort_uploads_on_delete: bool = True,
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
        if max_retries < 0 or retry_backoff < 0 or max_backoff < 0:
            raise ConfigurationError("max_retries, retry_backoff and max_backoff must not be negative")
        self._client = client
        self._bucket = bucket
        self._prefix = prefix
        self._suffix = suffix
        self.multipart_threshold = multipart_threshold
        self.part_size = part_size
        self.max_retries = max_retries
        self.retry_backoff = retry_backoff
        self.max_backoff = max_backoff
        self.create_bucket = create_bucket
        self.abort_uploads_on_delete = abort_uploads_on_delete

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
    async def _call(
        self,
        what: str,
        fn: Callable[[], Awaitable[T]],
        *,
        idempotent: bool = True,
        expect: frozenset[str] = frozenset(),
    ) -> T:
        """Run ``fn`` with retries; translate its failure into the pydatatask error tree.

        Error codes in ``expect`` are raised as :class:`_Expected` for the caller.
        ``asyncio.CancelledError`` is a ``BaseException`` and always passes through.
        """
        attempt = 0
        while True:
            try:
                return await fn()
            except Exception as exc:
                code = _error_code(exc)
                if code and code in expect:
                    raise _Expected(code, exc) from exc
                if attempt < self.max_retries and _retryable(exc, idempotent):
                    delay = random.uniform(0, min(self.max_backoff, self.retry_backoff * 2**attempt))
                    attempt += 1
                    log.debug(
                        "%s: %s failed (%s); retry %d/%d in %.2fs",
                        self.describe(),
                        what,
                        code or type(exc).__name__,
                        attempt,
                        self.max_retries,
                        delay,
                    )
                    await asyncio.sleep(delay)
                    continue
                raise self._translate(exc, what, attempt + 1) from exc

    def _translate(self, exc: Exception, what: str, attempts: int) -> RepositoryError:
        where = self._where()
        tries = f" (after {attempts} attempts)" if attempts > 1 else ""
        b = _bexc()
        if _is_client_error(exc):
            code = _error_code(exc)
            status = _http_status(exc)
            detail = f"{code}: {_error_message(exc)}".rstrip(": ")
            if code == "NoSuchBucket":
                return RepositoryError(
                    f"{what}: {where} does not exist; create it, or call validate(create=True) "
                    "or pass create_bucket=True to create it when the pipeline opens"
                )
            if code in _AUTH_CODES or status == 403:
                hint = {
                    "InvalidAccessKeyId": "the server does not know this access key",
                    "SignatureDoesNotMatch": "the secret key does not match the access key",
                }.get(code, "check the access key, the secret key and the bucket's permissions")
                return BackendUnavailableError(f"{what}: access refused to {where} ({detail}): {hint}")
            if code in _THROTTLE_CODES or code in _TRANSIENT_CODES or status >= 500:
                return BackendUnavailableError(f"{what}: {where} failed{tries}: {detail} (HTTP {status})")
            return RepositoryError(f"{what}: {where} failed: {detail} (HTTP {status})")
        if isinstance(exc, b.NoCredentialsError | b.PartialCredentialsError | b.CredentialRetrievalError):
            return BackendUnavailableError(
                f"{what}: no usable S3 credentials for {where}: {exc}; set them on the client "
                "(e.g. from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY)"
            )
        if _is_network(exc) or isinstance(exc, b.SSLError):
            return BackendUnavailableError(
                f"{what}: cannot reach {where}{tries}: {type(exc).__name__}: {exc}"
            )
        return RepositoryError(f"{what}: {where} failed: {type(exc).__name__}: {exc}")

    # --- listing and single keys ------------------------------------------------
    async def _list(self) -> Iterable[str]:
        client = resolve(self._client)
        prefix, suffix = self._prefix, self._suffix
        cut, n = len(prefix), len(suffix)

        async def scan() -> list[str]:
            names: list[str] = []
            kwargs: dict[str, Any] = {"Bucket": self._bucket}
            if prefix:
                kwargs["Prefix"] = prefix
            async for page in client.get_paginator("list_objects_v2").paginate(**kwargs):
                for obj in page.get("Contents", ()):
                    name: str = obj["Key"][cut:]
                    if n:
                        if len(name) <= n or not name.endswith(suffix):
                            continue
                        name = name[:-n]
                    names.append(name)
            return names

        return await self._call(f"listing {self.describe()}", scan)

    async def _contains(self, key: str) -> bool:
        client = resolve(self._client)
        name = self.object_name(key)
        try:
            await self._call(
                f"checking {self.url(key)}",
                lambda: client.head_object(Bucket=self._bucket, Key=name),
                expect=_NOT_FOUND_CODES,
            )
        except _Expected:
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
            except _Expected:
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
        except _Expected:
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
        except _Expected:
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
                expect=_NOT_FOUND_CODES | {"PreconditionFailed", "412"},
            )
        except _Expected as exc:
            if exc.code in _NOT_FOUND_CODES:
                raise KeyNotFoundError(key, self.describe()) from None
            raise RepositoryError(
                f"reading {self.url(key)}: the object changed while it was being read"
            ) from exc.cause
        return response

    async def _open_reader(self, key: str) -> BlobReader:
        return _S3Reader(self, key, await self._get_object(key))

    async def _open_writer(self, key: str) -> BlobWriter:
        return _S3Writer(self, key)

    async def read_bytes(self, key: str) -> bytes:
        """The whole object, with one ``GetObject`` (a dropped connection restarts the read)."""
        validate_key(key)
        for attempt in range(self.max_retries + 1):
            response = await self._get_object(key)
            try:
                async with response["Body"] as body:
                    data: bytes = await body.read()
            except Exception as exc:
                if not _is_network(exc):
                    raise
                if attempt >= self.max_retries:
                    raise BackendUnavailableError(f"reading {self.url(key)} failed: {exc}") from exc
                continue
            return data
        raise AssertionError("unreachable")

    async def write_bytes(self, key: str, data: bytes) -> None:
        """Store ``data`` with one ``PutObject`` (atomic; no multipart upload to leave behind)."""
        if len(data) > MAX_SINGLE_PUT:
            await super().write_bytes(key, data)
            return
        client = resolve(self._client)
        key = validate_key(key)
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
                expect=_EXISTS_CODES,
            )
        except _Expected:
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
                expect=_EXISTS_CODES | _NOT_FOUND_CODES,
            )
        except _Expected:
            return False
        return True


class _S3Reader(BlobReader):
    """Streams a ``GetObject`` body; resumes with a ranged GET after a transient failure."""

    def __init__(self, repo: S3BucketRepository, key: str, response: dict[str, Any]) -> None:
        self._repo = repo
        self._key = key
        self._body: Any = response["Body"]
        self._etag: str | None = response.get("ETag")
        self._size: int | None = response.get("ContentLength")
        self._received = 0  # bytes taken from the server so far
        self._pending = b""  # received but not yet returned

    async def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            chunks = [self._pending]
            self._pending = b""
            while chunk := await self._fetch(1 << 20):
                chunks.append(chunk)
            return b"".join(chunks)
        if n == 0:
            return b""
        if self._pending:
            out, self._pending = self._pending[:n], self._pending[n:]
            return out
        data = await self._fetch(n)
        if len(data) > n:
            data, self._pending = data[:n], data[n:]
        return data

    async def _fetch(self, n: int) -> bytes:
        repo = self._repo
        attempt = 0
        while True:
            try:
                data: bytes = await self._body.read(n)
            except Exception as exc:
                if attempt >= repo.max_retries or not _retryable(exc, idempotent=True):
                    raise repo._translate(exc, f"reading {repo.url(self._key)}", attempt + 1) from exc
                delay = random.uniform(0, min(repo.max_backoff, repo.retry_backoff * 2**attempt))
                attempt += 1
                log.debug(
                    "%s: reading %r failed at byte %d (%s); resuming, retry %d/%d in %.2fs",
                    repo.describe(),
                    self._key,
                    self._received,
                    type(exc).__name__,
                    attempt,
                    repo.max_retries,
                    delay,
                )
                await asyncio.sleep(delay)
                await self._resume()
                continue
            self._received += len(data)
            return data

    async def _resume(self) -> None:
        self._body.close()
        if self._size is not None and self._received >= self._size:
            self._body = _EmptyBody()
            return
        extra: dict[str, Any] = {"Range": f"bytes={self._received}-"}
        if self._etag:
            extra["IfMatch"] = self._etag
        response = await self._repo._get_object(self._key, **extra)
        self._body = response["Body"]

    async def aclose(self) -> None:
        self._body.close()


class _EmptyBody:
    async def read(self, n: int = -1) -> bytes:
        return b""

    def close(self) -> None:
        pass


class _S3Writer(BlobWriter):
    """Buffers up to the threshold, then streams parts of a multipart upload."""

    def __init__(self, repo: S3BucketRepository, key: str) -> None:
        self._repo = repo
        self._key = key
        self._name = repo.object_name(key)
        self._buf = bytearray()
        self._upload_id: str | None = None
        self._parts: list[dict[str, Any]] = []
        self._done = False

    async def write(self, data: bytes) -> int:
        if self._done:
            raise RepositoryError(f"writing {self._repo.url(self._key)}: the writer is already closed")
        view = memoryview(data).cast("B")
        total = len(view)
        repo = self._repo
        while True:
            if self._upload_id is None:
                room = repo.multipart_threshold - len(self._buf)
                if len(view) <= room:
                    self._buf += view
                    return total
                await self._start()
            while len(self._buf) >= repo.part_size:
                await self._send_part(bytes(self._buf[: repo.part_size]))
                del self._buf[: repo.part_size]
            if not view:
                return total
            room = repo.part_size - len(self._buf)
            self._buf += view[:room]
            view = view[room:]

    async def _start(self) -> None:
        repo = self._repo
        client = resolve(repo._client)
        response = await repo._call(
            f"starting a multipart upload to {repo.url(self._key)}",
            lambda: client.create_multipart_upload(Bucket=repo.bucket, Key=self._name),
        )
        self._upload_id = str(response["UploadId"])

    async def _send_part(self, data: bytes) -> None:
        repo = self._repo
        client = resolve(repo._client)
        number = len(self._parts) + 1
        if number > MAX_PARTS:
            raise RepositoryError(
                f"writing {repo.url(self._key)}: more than {MAX_PARTS} parts; use a larger part_size"
            )
        response = await repo._call(
            f"uploading part {number} of {repo.url(self._key)}",
            lambda: client.upload_part(
                Bucket=repo.bucket, Key=self._name, UploadId=self._upload_id, PartNumber=number, Body=data
            ),
        )
        part: dict[str, Any] = {"PartNumber": number, "ETag": response["ETag"]}
        for field in (
            "ChecksumCRC32",
            "ChecksumCRC32C",
            "ChecksumCRC64NVME",
            "ChecksumSHA1",
            "ChecksumSHA256",
        ):
            if response.get(field):
                part[field] = response[field]
        self._parts.append(part)

    async def commit(self) -> None:
        if self._done:
            return
        repo = self._repo
        client = resolve(repo._client)
        if self._upload_id is None:
            body = bytes(self._buf)
            await repo._call(
                f"writing {repo.url(self._key)}",
                lambda: client.put_object(Bucket=repo.bucket, Key=self._name, Body=body),
            )
        else:
            if self._buf or not self._parts:
                await self._send_part(bytes(self._buf))
            self._buf = bytearray()
            parts = self._parts
            await repo._call(
                f"completing the multipart upload to {repo.url(self._key)}",
                lambda: client.complete_multipart_upload(
                    Bucket=repo.bucket,
                    Key=self._name,
                    UploadId=self._upload_id,
                    MultipartUpload={"Parts": parts},
                ),
            )
            self._upload_id = None
        self._buf = bytearray()
        self._done = True

    async def abort(self) -> None:
        self._done = True
        self._buf = bytearray()
        upload_id, self._upload_id = self._upload_id, None
        if upload_id is None:
            return
        repo = self._repo
        try:
            client = resolve(repo._client)
            await repo._call(
                f"aborting the multipart upload to {repo.url(self._key)}",
                lambda: client.abort_multipart_upload(Bucket=repo.bucket, Key=self._name, UploadId=upload_id),
                expect=frozenset({"NoSuchUpload"}),
            )
        except _Expected:
            pass
        except PydatataskError as exc:
            # raising here would replace the error (or cancellation) that made us abort
            log.warning(
                "%s: could not abort multipart upload %s of %r; it stays invisible but uses "
                "storage until a bucket lifecycle rule removes it: %s",
                repo.describe(),
                upload_id,
                self._name,
                exc,
            )


class _S3MetadataMixin:
    """Exposes the naming of the underlying :class:`S3BucketRepository`."""

    blobs: BlobRepository

    @property
    def s3(self) -> S3BucketRepository:
        assert isinstance(self.blobs, S3BucketRepository)
        return self.blobs

    @property
    def bucket(self) -> str:
        return self.s3.bucket

    @property
    def prefix(self) -> str:
        return self.s3.prefix

    @property
    def suffix(self) -> str:
        return self.s3.suffix

    @property
    def endpoint_url(self) -> str | None:
        return self.s3.endpoint_url

    def object_name(self, key: str) -> str:
        return self.s3.object_name(key)

    def url(self, key: str) -> str:
        return self.s3.url(key)


def _metadata_store(
    client: Any, bucket: str, prefix: str, suffix: str, options: dict[str, Any]
) -> S3BucketRepository:
    # metadata values are written whole (one PutObject): deletes need not look for uploads
    return S3BucketRepository(client, bucket, prefix, suffix, **{"abort_uploads_on_delete": False, **options})


class YamlMetadataS3Repository(_S3MetadataMixin, YamlMetadataRepository):
    """One YAML object per key: ``s3://bucket/prefix+key+suffix``.

    Extra keyword arguments (``max_retries``, ``create_bucket``, ...) go to
    :class:`S3BucketRepository`.
    """

    def __init__(
        self,
        client: Any,
        bucket: str,
        prefix: str = "",
        suffix: str = ".yaml",
        *,
        concurrency: int = 32,
        **options: Any,
    ) -> None:
        super().__init__(_metadata_store(client, bucket, prefix, suffix, options), concurrency=concurrency)


class JsonMetadataS3Repository(_S3MetadataMixin, JsonMetadataRepository):
    """One JSON object per key: ``s3://bucket/prefix+key+suffix``.

    Extra keyword arguments (``max_retries``, ``create_bucket``, ...) go to
    :class:`S3BucketRepository`.
    """

    def __init__(
        self,
        client: Any,
        bucket: str,
        prefix: str = "",
        suffix: str = ".json",
        *,
        concurrency: int = 32,
        **options: Any,
    ) -> None:
        super().__init__(_metadata_store(client, bucket, prefix, suffix, options), concurrency=concurrency)
