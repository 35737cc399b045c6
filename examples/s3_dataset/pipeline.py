"""Every object under an S3 prefix through two stages, with a dataset summary written back.

Point it at your own bucket with environment variables (credentials never on the command
line)::

    export AWS_ACCESS_KEY_ID=... AWS_SECRET_ACCESS_KEY=...   # the usual AWS variables
    export PDT_S3_BUCKET=my-bucket PDT_S3_PREFIX=corpus/       # where the dataset lives
    export PDT_S3_ENDPOINT=https://s3.example.com              # optional (other S3 servers)
    python examples/s3_dataset/pipeline.py run
    python examples/s3_dataset/pipeline.py status

Layout under ``s3://$PDT_S3_BUCKET/$PDT_S3_PREFIX``::

    docs/<key>.txt              the input objects (yours)
    stats/<key>.yaml            stage 1, task ``stats``: words, lines, characters
    words/<key>.json            stage 2, task ``words``: the ten most frequent words
    summary.yaml                per-dataset summary, rewritten at the end of every run
    state/<task>/done/...       job records;  state/<task>/live/...  claims of running jobs

State lives in the bucket too, so a run killed on one machine is resumed by a run on
another: finished keys are not recomputed, interrupted ones are cleaned up and redone.
``PDT_EXAMPLE_DELAY`` adds pretend work per document (seconds), ``PDT_S3_CONCURRENCY``
sets the jobs per stage (default 16).
"""

from __future__ import annotations

import asyncio
import collections
import functools
import json
import os
import re
import sys
from collections.abc import AsyncIterator
from typing import Any

import pydatatask
from pydatatask import Session
from pydatatask.pipeline import Pipeline
from pydatatask.repository import S3BucketRepository, YamlMetadataS3Repository
from pydatatask.task import Event, FunctionTask, RetryPolicy

BUCKET = os.environ.get("PDT_S3_BUCKET", "")
PREFIX = os.environ.get("PDT_S3_PREFIX", "")
ENDPOINT = os.environ.get("PDT_S3_ENDPOINT") or None
DELAY = float(os.environ.get("PDT_EXAMPLE_DELAY", "0"))
CONCURRENCY = int(os.environ.get("PDT_S3_CONCURRENCY", "16"))
WORD = re.compile(r"[a-z']+")

session = Session()


@session.resource
async def s3() -> AsyncIterator[Any]:
    """One aiobotocore client for every repository; credentials from the environment."""
    import aiobotocore.session
    from aiobotocore.config import AioConfig

    client_session = aiobotocore.session.get_session()
    config = AioConfig(max_pool_connections=max(10, 2 * CONCURRENCY), retries={"total_max_attempts": 1})
    async with client_session.create_client(
        "s3",
        endpoint_url=ENDPOINT,
        region_name=os.environ.get("AWS_DEFAULT_REGION", "us-east-1"),
        config=config,
    ) as client:
        yield client


def state(task: str, kind: str) -> YamlMetadataS3Repository:
    return YamlMetadataS3Repository(s3, BUCKET, f"{PREFIX}state/{task}/{kind}/")


docs = S3BucketRepository(s3, BUCKET, f"{PREFIX}docs/", ".txt")
stats = YamlMetadataS3Repository(s3, BUCKET, f"{PREFIX}stats/")
words = S3BucketRepository(s3, BUCKET, f"{PREFIX}words/", ".json")


async def count(key: str, doc: S3BucketRepository, stats: YamlMetadataS3Repository) -> None:
    """Stage 1: size figures of one document."""
    text = (await doc.read_bytes(key)).decode("utf-8", errors="replace")
    if DELAY:
        await asyncio.sleep(DELAY)
    await stats.put(key, {"words": len(text.split()), "lines": text.count("\n") + 1, "characters": len(text)})


async def top_words(key: str, doc: S3BucketRepository, stats: Any, words: S3BucketRepository) -> None:
    """Stage 2 (after ``stats`` succeeded for the key): the ten most frequent words."""
    figures = await stats.get(key)
    counter = collections.Counter(
        WORD.findall((await doc.read_bytes(key)).decode("utf-8", "replace").lower())
    )
    if DELAY:
        await asyncio.sleep(DELAY)
    body = {"key": key, "words": figures["words"], "top": counter.most_common(10)}
    await words.write_bytes(key, json.dumps(body).encode())


tasks = [
    FunctionTask(
        "stats",
        count,
        inputs={"doc": docs},
        outputs={"stats": stats},
        done=state("stats", "done"),
        live=state("stats", "live"),
        concurrency=CONCURRENCY,
        retry=RetryPolicy(max_attempts=3, backoff="1s"),
    ),
    FunctionTask(
        "words",
        top_words,
        inputs={"doc": docs, "stats": stats},
        outputs={"words": words},
        done=state("words", "done"),
        live=state("words", "live"),
        concurrency=CONCURRENCY,
        retry=RetryPolicy(max_attempts=3, backoff="1s"),
    ),
]
pipeline = Pipeline(tasks, session, poll_interval="1s", claim_lease="30s")


async def write_summary(
    event: Event, stats: YamlMetadataS3Repository, summary: YamlMetadataS3Repository
) -> None:
    """A value over every key is not a per-key job: written once per run, from the stats
    (the hook of ``pipeline_finished``, given the repositories it reads and writes)."""
    figures = {k: v async for k, v in stats.items()}
    value = {
        "documents": len(figures),
        "words": sum(v["words"] for v in figures.values()),
        "largest": max(figures, key=lambda k: figures[k]["characters"]) if figures else None,
    }
    await summary.put("summary", value)
    print(f"dataset summary: {value} -> {summary.describe()}", file=sys.stderr)


pipeline.hooks.on(
    "pipeline_finished",
    functools.partial(
        write_summary, stats=stats, summary=YamlMetadataS3Repository(s3, BUCKET, PREFIX, ".yaml")
    ),
)


if __name__ == "__main__":
    if not BUCKET:
        sys.exit("error: set PDT_S3_BUCKET (and PDT_S3_PREFIX, credentials, optionally PDT_S3_ENDPOINT)")
    pydatatask.main(pipeline)
