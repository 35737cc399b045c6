"""Atomic S3 writes: one ``PutObject`` for small values, a multipart upload for large ones.

The writer buffers up to the repository's ``multipart_threshold``; past it, it starts a
multipart upload and sends ``part_size`` parts as they fill, so at most about one part is
held in memory. Nothing is visible under the key until :meth:`S3Writer.commit` (the
``PutObject``, or ``CompleteMultipartUpload``); :meth:`S3Writer.abort` aborts the upload,
so a failed write leaves no object and no parts.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from ...errors import PydatataskError, RepositoryError
from ...session import resolve
from ..base import BlobWriter
from ._errors import Expected

if TYPE_CHECKING:
    from ._bucket import S3BucketRepository

__all__ = ("S3Writer", "MAX_PARTS")

log = logging.getLogger("pydatatask.repository.s3")

MAX_PARTS = 10_000


class S3Writer(BlobWriter):
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
        except Expected:
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
