"""A pipeline that carries credentials through failure paths, for the leak test.

``python tests/reliability/pipelines/leaky.py COMMAND ...`` with:

``PDT_SEC_DATA``   local directory (inputs, logs)
``PDT_SEC_MODE``   ``s3``: records/claims/logs on S3 with the credentials of ``PDT_SEC_S3``
                   (JSON: endpoint, access_key, secret_key, region, bucket, prefix); every
                   job fails, and one job's input is read through a client with a wrong
                   secret ``PDT_SEC_BAD_SECRET``;
                   ``mongo``: records in Mongo at ``PDT_SEC_MONGO`` (a URI with a password,
                   pointing at a port where nothing listens).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from pydatatask import Backoff, FileRepository, Session
from pydatatask.cli import main
from pydatatask.pipeline import Pipeline
from pydatatask.task import FunctionTask

DATA = Path(os.environ["PDT_SEC_DATA"])
MODE = os.environ["PDT_SEC_MODE"]


def build() -> Pipeline:
    session = Session()
    src = FileRepository(DATA / "src", ".txt")
    state: dict[str, Any] = {}
    if MODE == "s3":
        from aiobotocore.config import AioConfig
        from aiobotocore.session import get_session

        from pydatatask import S3BucketRepository, YamlMetadataS3Repository

        conf = json.loads(os.environ["PDT_SEC_S3"])

        def client(secret: str) -> Any:
            return get_session().create_client(
                "s3",
                endpoint_url=conf["endpoint"],
                aws_access_key_id=conf["access_key"],
                aws_secret_access_key=secret,
                region_name=conf["region"],
                config=AioConfig(retries={"total_max_attempts": 1}),
            )

        @session.resource
        async def good() -> AsyncIterator[Any]:
            async with client(conf["secret_key"]) as c:
                yield c

        @session.resource
        async def bad() -> AsyncIterator[Any]:
            async with client(os.environ["PDT_SEC_BAD_SECRET"]) as c:
                yield c

        b, p = conf["bucket"], conf["prefix"]
        state = {
            "done": YamlMetadataS3Repository(good, b, f"{p}done/"),
            "live": YamlMetadataS3Repository(good, b, f"{p}live/"),
            "logs": S3BucketRepository(good, b, f"{p}logs/", ".log"),
        }
        wrong = S3BucketRepository(bad, b, f"{p}src/", ".txt", retry=Backoff(attempts=1))

        async def job(key: str, src: FileRepository) -> None:
            if key == "viabad":
                await wrong.read_bytes(key)  # refused: the signature does not match
            raise RuntimeError(f"job {key} fails on purpose")

    elif MODE == "mongo":
        from pymongo import AsyncMongoClient

        from pydatatask import MongoMetadataRepository

        @session.resource
        async def mongo() -> AsyncIterator[Any]:
            c: Any = AsyncMongoClient(os.environ["PDT_SEC_MONGO"], serverSelectionTimeoutMS=300)
            try:
                yield c["pdt_secret"]
            finally:
                await c.close()

        state = {
            "done": MongoMetadataRepository(lambda: mongo()["done"], retry=Backoff(attempts=2, initial=0.05)),
            "live": MongoMetadataRepository(lambda: mongo()["live"], retry=Backoff(attempts=2, initial=0.05)),
        }

        async def job(key: str, src: FileRepository) -> None:
            raise RuntimeError(f"job {key} fails on purpose")

    else:
        raise SystemExit(f"unknown PDT_SEC_MODE {MODE!r}")
    return Pipeline([FunctionTask("leaky", job, inputs={"src": src}, **state)], session)


if __name__ == "__main__":
    main(build(), sys.argv[1:])
