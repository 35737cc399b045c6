"""The S3 client the example tests check the bucket with."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.conftest import service


@pytest.fixture
async def s3(services: dict[str, Any]) -> AsyncIterator[tuple[Any, dict[str, Any]]]:
    """An aiobotocore client of the S3 test server, and that server's settings."""
    import aiobotocore.session
    from aiobotocore.config import AioConfig

    conf = service(services, "s3")
    session = aiobotocore.session.get_session()
    async with session.create_client(
        "s3",
        endpoint_url=conf["endpoint"],
        aws_access_key_id=conf["access_key"],
        aws_secret_access_key=conf["secret_key"],
        region_name=conf.get("region", "us-east-1"),
        config=AioConfig(max_pool_connections=32),
    ) as client:
        yield client, conf
