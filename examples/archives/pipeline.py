"""Archives on S3 -> pages (fan-out) -> per-page statistics -> one report per archive (fan-in).

Point it at your own bucket with environment variables (credentials never on the command
line)::

    export AWS_ACCESS_KEY_ID=... AWS_SECRET_ACCESS_KEY=...   # the usual AWS variables
    export PDT_S3_BUCKET=my-bucket PDT_S3_PREFIX=books/        # where the dataset lives
    export PDT_S3_ENDPOINT=https://s3.example.com              # optional (other S3 servers)
    python examples/archives/pipeline.py run
    python examples/archives/pipeline.py status

Layout under ``s3://$PDT_S3_BUCKET/$PDT_S3_PREFIX``::

    archives/<archive>.tar.gz          the input archives (yours): text files inside
    pages/<archive>/page-0001.txt      task ``unpack`` (fan-out): one object per file of
                                       the archive, in the archive's order
    page-stats/<archive>/page-0001.yaml
                                       task ``page_stats``: words, lines, characters
    reports/<archive>.md               task ``report`` (fan-in): one per archive, over all
                                       of its pages
    state/<task>/done/...              job records;  state/<task>/live/...  claims

``unpack`` writes the pages of an archive as children of the archive's key; ``page_stats``
starts on a page only once the success record of its archive's ``unpack`` job lists it
(never on the pages of an unpack that is running, failed or was killed), and ``report``
starts on an archive once every one of its pages has its statistics. Kill a run at any
point and run it again: every output appears once, and nothing is left of the jobs that
were cut off. ``PDT_EXAMPLE_DELAY`` adds pretend work per page (seconds).
"""

from __future__ import annotations

import asyncio
import io
import os
import sys
import tarfile
from collections.abc import AsyncIterator
from typing import Any

import pydatatask
from pydatatask import Session
from pydatatask.pipeline import Pipeline
from pydatatask.repository import S3BucketRepository, YamlMetadataS3Repository
from pydatatask.task import FanOut, FunctionTask, RetryPolicy

BUCKET = os.environ.get("PDT_S3_BUCKET", "")
PREFIX = os.environ.get("PDT_S3_PREFIX", "")
ENDPOINT = os.environ.get("PDT_S3_ENDPOINT") or None
DELAY = float(os.environ.get("PDT_EXAMPLE_DELAY", "0"))
CONCURRENCY = int(os.environ.get("PDT_S3_CONCURRENCY", "8"))
#: pages are keyed under their archive: ``book-1/page-0001``
SEP = "/"

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


archives = S3BucketRepository(s3, BUCKET, f"{PREFIX}archives/", ".tar.gz")
pages = S3BucketRepository(s3, BUCKET, f"{PREFIX}pages/", ".txt")
page_figures = YamlMetadataS3Repository(s3, BUCKET, f"{PREFIX}page-stats/")
reports = S3BucketRepository(s3, BUCKET, f"{PREFIX}reports/", ".md")


async def unpack(key: str, archive: S3BucketRepository, pages: S3BucketRepository) -> None:
    """Fan-out: every regular file of the archive ``key`` becomes the page ``key/page-NNNN``.

    The pages become visible one by one, but no downstream task reads them before this
    job's success record exists; a failure or a kill removes them all.
    """
    data = await archive.read_bytes(key)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        files = [m for m in tar.getmembers() if m.isfile()]
        bodies = []
        for member in files:
            extracted = tar.extractfile(member)
            assert extracted is not None  # a regular file
            bodies.append(extracted.read())
    for number, body in enumerate(bodies, start=1):
        await pages.write_bytes(f"{key}{SEP}page-{number:04d}", body)


async def count(key: str, page: S3BucketRepository, stats: YamlMetadataS3Repository) -> None:
    """Size figures of one page."""
    text = (await page.read_bytes(key)).decode("utf-8", errors="replace")
    if DELAY:
        await asyncio.sleep(DELAY)
    await stats.put(key, {"words": len(text.split()), "lines": text.count("\n"), "characters": len(text)})


def archive_of(page: str) -> str:
    """The group of a page: the archive it came from."""
    return page.rsplit(SEP, 1)[0]


async def write_report(
    key: str, members: list[str], stats: YamlMetadataS3Repository, report: S3BucketRepository
) -> None:
    """Fan-in: one markdown report for the archive ``key`` over the figures of its pages."""
    figures = await stats.get_many(members)
    rows = [
        f"| {page[len(key) + 1 :]} | {f['words']} | {f['lines']} | {f['characters']} |"
        for page, f in sorted(figures.items())
    ]
    words = sum(f["words"] for f in figures.values())
    text = "\n".join(
        [
            f"# {key}",
            "",
            f"{len(members)} page(s), {words} words.",
            "",
            "| page | words | lines | characters |",
            "|------|------:|------:|-----------:|",
            *rows,
            "",
        ]
    )
    await report.write_bytes(key, text.encode())


tasks = [
    FunctionTask(
        "unpack",
        unpack,
        inputs={"archive": archives},
        outputs={"pages": FanOut(pages, SEP)},
        done=state("unpack", "done"),
        live=state("unpack", "live"),
        concurrency=CONCURRENCY,
        retry=RetryPolicy(max_attempts=3, backoff="1s"),
    ),
    FunctionTask(
        "page_stats",
        count,
        inputs={"page": pages},
        outputs={"stats": page_figures},
        done=state("page_stats", "done"),
        live=state("page_stats", "live"),
        concurrency=CONCURRENCY,
        retry=RetryPolicy(max_attempts=3, backoff="1s"),
    ),
    FunctionTask(
        "report",
        write_report,
        inputs={"stats": page_figures},
        outputs={"report": reports},
        group_by=archive_of,
        done=state("report", "done"),
        live=state("report", "live"),
        concurrency=CONCURRENCY,
    ),
]
pipeline = Pipeline(tasks, session, poll_interval="1s", claim_lease="30s")


if __name__ == "__main__":
    if not BUCKET:
        sys.exit("error: set PDT_S3_BUCKET (and PDT_S3_PREFIX, credentials, optionally PDT_S3_ENDPOINT)")
    pydatatask.main(pipeline)
