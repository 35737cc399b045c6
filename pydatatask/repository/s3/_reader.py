"""Streaming S3 reads that survive a dropped connection.

A ``GetObject`` body is a live HTTP response: when its connection breaks mid-body, the
bytes already returned are good and the rest can be asked for again with a ranged GET from
the first byte not yet received. ``If-Match`` on the first response's ETag makes the
ranged GET fail (rather than splice two versions) if the object was replaced meanwhile.
botocore never retries a body read, so this resume is the only retry of it, under the
repository's ``retry`` policy.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from ..base import BlobReader
from ._errors import retryable, translate

if TYPE_CHECKING:
    from ._bucket import S3BucketRepository

__all__ = ("S3Reader",)

log = logging.getLogger("pydatatask.repository.s3")


class S3Reader(BlobReader):
    """Streams a ``GetObject`` body; resumes with a ranged GET after a transient failure."""

    def __init__(self, repo: S3BucketRepository, key: str, response: dict[str, Any]) -> None:
        self._repo = repo
        self._key = key
        self._body: Any = response["Body"]
        self._etag: str | None = response.get("ETag")
        self._size: int | None = response.get("ContentLength")
        self._received = 0  # bytes taken from the server so far
        self._pending = b""  # received but not yet returned
        self._broken = False  # the body failed: the next read resumes first

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
        what = f"reading {repo.url(self._key)} at byte {self._received}"

        async def once() -> bytes:
            if self._broken:
                log.info("%s: resuming the read of %r at byte %d", repo.describe(), self._key, self._received)
                await self._resume()
            try:
                data: bytes = await self._body.read(n)
            except Exception:
                self._broken = True
                raise
            return data

        data = await repo.retry.run(
            what,
            once,
            transient=lambda exc: retryable(exc, idempotent=True),
            fail=lambda exc, attempts: translate(
                exc, f"reading {repo.url(self._key)}", repo._where(), attempts
            ),
            logger=log,
        )
        self._received += len(data)
        return data

    async def _resume(self) -> None:
        self._body.close()
        self._broken = False
        if self._size is not None and self._received >= self._size:
            self._body = _EmptyBody()
            return
        extra: dict[str, Any] = {"Range": f"bytes={self._received}-"}
        if self._etag:
            extra["IfMatch"] = self._etag
        # a failed resume leaves the reader broken: the next attempt resumes again
        self._broken = True
        response = await self._repo._get_object(self._key, **extra)
        self._body = response["Body"]
        self._broken = False

    async def aclose(self) -> None:
        self._body.close()


class _EmptyBody:
    async def read(self, n: int = -1) -> bytes:
        return b""

    def close(self) -> None:
        pass
