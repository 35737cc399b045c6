"""One retry layer per request, counted on a real TCP listener that fails every request.

The listener is a local socket (127.0.0.1, port 0) started by the test: it answers every
HTTP request with 503 (a server saying "not now"), or drops the connection after reading
the request. Counting what reaches it shows how many attempts were made, whoever made them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest

from pydatatask import BackendUnavailableError, Backoff, ConfigurationError
from pydatatask.repository.docker import DockerRepository
from pydatatask.repository.s3 import S3BucketRepository


@dataclass
class Listener:
    port: int
    mode: str = "503"  # or "drop"
    requests: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@pytest.fixture
async def listener() -> AsyncIterator[Listener]:
    state = Listener(port=0)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                state.requests += 1
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                if length:
                    await reader.readexactly(length)
                if state.mode == "drop":
                    break
                writer.write(
                    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/xml\r\n"
                    b"Retry-After: 0\r\nContent-Length: 0\r\n\r\n"
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.transport.abort()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    state.port = server.sockets[0].getsockname()[1]
    try:
        yield state
    finally:
        server.close()
        await server.wait_closed()


def s3_client(url: str, **retries: Any) -> Any:
    from aiobotocore.config import AioConfig
    from aiobotocore.session import get_session

    config = AioConfig(retries=retries, connect_timeout=2, read_timeout=2) if retries else None
    return get_session().create_client(
        "s3",
        endpoint_url=url,
        aws_access_key_id="test-access",
        aws_secret_access_key="test-secret",
        region_name="us-east-1",
        config=config,
    )


FAST = Backoff(attempts=3, initial=0.001, max_delay=0.01)


async def test_s3_retries_are_ours_when_the_client_does_not_retry(listener: Listener) -> None:
    async with s3_client(listener.url, total_max_attempts=1) as client:
        repo = S3BucketRepository(client, "bucket", retry=FAST)
        with pytest.raises(BackendUnavailableError, match=r"after 3 attempts") as info:
            await repo.keys()
    assert listener.requests == 3
    assert "test-secret" not in str(info.value)


async def test_s3_a_client_that_retries_is_the_only_layer(listener: Listener) -> None:
    # botocore tries each request twice here; the repository (default retry) must not
    # multiply that by its own attempts
    async with s3_client(listener.url, total_max_attempts=2) as client:
        repo = S3BucketRepository(client, "bucket")
        with pytest.raises(BackendUnavailableError):
            await repo.keys()
        assert listener.requests == 2
        listener.requests = 0
        with pytest.raises(BackendUnavailableError):
            await repo.contains("k")
        assert listener.requests == 2


async def test_s3_dropped_connections_count_once_per_layer(listener: Listener) -> None:
    listener.mode = "drop"
    async with s3_client(listener.url, total_max_attempts=1) as client:
        with pytest.raises(BackendUnavailableError):
            await S3BucketRepository(client, "bucket", retry=Backoff(attempts=1)).keys()
        once = listener.requests  # what one attempt costs (the HTTP library may resend)
        assert once >= 1
        listener.requests = 0
        with pytest.raises(BackendUnavailableError, match="after 3 attempts"):
            await S3BucketRepository(client, "bucket", retry=FAST).keys()
    assert listener.requests == 3 * once


async def test_s3_retry_given_with_a_retrying_client_is_refused(listener: Listener) -> None:
    async with s3_client(listener.url, total_max_attempts=2) as client:
        repo = S3BucketRepository(client, "bucket", retry=FAST)
        with pytest.raises(
            ConfigurationError, match=r"retries each request itself \(2 attempts.*total_max_attempts"
        ):
            await repo.keys()
        # asking for no retries of ours is consistent with the client's
        with pytest.raises(BackendUnavailableError):
            await S3BucketRepository(client, "bucket", retry=Backoff(attempts=1)).keys()
    assert listener.requests == 2


def test_s3_retry_must_be_a_backoff() -> None:
    with pytest.raises(ConfigurationError, match="retry must be a pydatatask.Backoff, not int"):
        S3BucketRepository(object(), "bucket", retry=3)  # type: ignore[arg-type]


async def test_registry_retries_under_the_backoff(
    listener: Listener, caplog: pytest.LogCaptureFixture
) -> None:
    async with DockerRepository(listener.url, "a/b", retry=FAST) as repo:
        with caplog.at_level(logging.INFO, logger="pydatatask.backoff"):
            with pytest.raises(BackendUnavailableError, match=r"keeps failing: 503 .* after 3 attempt"):
                await repo.keys()
    assert listener.requests == 3
    retries = [r.getMessage() for r in caplog.records if r.name == "pydatatask.backoff"]
    assert len(retries) == 2 and all("failed (HTTP 503); retry" in m for m in retries), retries
