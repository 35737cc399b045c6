"""The S3 scenarios' client, listing, clean-up and one-time upload of their inputs, on the
local S3 test server (``$PDT_TEST_SERVICES``) in the bucket ``pdt-bench``."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from ._common import is_loopback, test_services

__all__ = ("BUCKET", "client", "empty", "names", "prepare_inputs")

BUCKET = "pdt-bench"


@contextlib.asynccontextmanager
async def client(conf: dict[str, Any]) -> AsyncIterator[Any]:
    """An aiobotocore S3 client of the test server ``conf`` (64 connections at most)."""
    from aiobotocore.config import AioConfig
    from aiobotocore.session import get_session

    async with get_session().create_client(
        "s3",
        endpoint_url=conf["endpoint"],
        aws_access_key_id=conf["access_key"],
        aws_secret_access_key=conf["secret_key"],
        region_name=conf.get("region", "us-east-1"),
        config=AioConfig(max_pool_connections=64),
    ) as c:
        yield c


async def names(c: Any, prefix: str) -> list[str]:
    """Every object name under ``prefix`` of the bucket (a paginated listing)."""
    out: list[str] = []
    async for page in c.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix):
        out.extend(obj["Key"] for obj in page.get("Contents", ()))
    return out


async def empty(c: Any, prefix: str) -> None:
    """Delete every object under ``prefix`` of the bucket."""
    found = await names(c, prefix)
    for i in range(0, len(found), 1000):
        batch = [{"Key": k} for k in found[i : i + 1000]]
        await c.delete_objects(Bucket=BUCKET, Delete={"Objects": batch, "Quiet": True})


def prepare_inputs(n: int, prefix: str, suffix: str = "") -> dict[str, Any] | str:
    """Upload the inputs ``{prefix}k0000000{suffix}``... (8 bytes each, ``n`` of them) once,
    those missing only; return the params (``{"s3": conf}``), or why the scenario cannot run."""
    services = test_services()
    if not services or "s3" not in services:
        return "no S3 test server: run `bash scripts/test-services up` (sets PDT_TEST_SERVICES)"
    conf = services["s3"]
    if not is_loopback(conf["endpoint"]):
        return f"refusing a non-loopback S3 endpoint {conf['endpoint']}"
    try:
        import aiobotocore  # noqa: F401
    except ImportError:
        return "aiobotocore is not installed (pip install 'pydatatask[s3]')"
    try:
        from pydatatask.repository import S3BucketRepository  # noqa: F401
    except (ImportError, AttributeError) as exc:
        return f"S3BucketRepository not available yet ({exc})"

    async def upload() -> None:
        async with client(conf) as c:
            with contextlib.suppress(Exception):
                await c.create_bucket(Bucket=BUCKET)
            have = set(await names(c, prefix))
            sem = asyncio.Semaphore(32)

            async def put(i: int) -> None:
                name = f"{prefix}k{i:07d}{suffix}"
                if name not in have:
                    async with sem:
                        await c.put_object(Bucket=BUCKET, Key=name, Body=b"abcdefgh")

            await asyncio.gather(*(put(i) for i in range(n)))

    try:
        asyncio.run(upload())
    except Exception as exc:
        return f"S3 server not usable: {type(exc).__name__}: {exc}"
    return {"s3": conf}
