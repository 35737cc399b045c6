"""A small two-task pipeline on local files for the CLI tests.

``python tests/cli/demo_pipeline.py COMMAND ...`` with ``PDT_CLI_DATA`` naming the data
directory. ``PDT_CLI_SLEEP`` (seconds) slows each job down so a test can interrupt a run.

Layout under the data directory::

    src/<key>.txt      inputs (written by the test)
    up/<key>.txt       task ``upper`` (a FunctionTask on a thread pool): the text upper-cased;
                       a text containing "fail" makes the job fail
    counts/<key>.yaml  task ``count`` (an async FunctionTask): words and characters of up/
    runs/<task>/<key>  one line appended (O_APPEND) per execution of a job: a side-effect counter
    state/             job records, claims and logs
"""

from __future__ import annotations

import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from pydatatask import FileRepository, MetadataRepository, YamlMetadataFileRepository
from pydatatask.cli import main
from pydatatask.executor import PoolExecutor
from pydatatask.pipeline import Pipeline
from pydatatask.task import FunctionTask, JobContext

SLEEP = float(os.environ.get("PDT_CLI_SLEEP", "0"))


def _mark(data: Path, task: str, key: str) -> None:
    folder = data / "runs" / task
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / key, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, f"{os.getpid()}\n".encode())
    finally:
        os.close(fd)


def build_pipeline(data: Path, *, workers: int = 4) -> Pipeline:
    """The demo pipeline over ``data``."""
    src = FileRepository(data / "src", ".txt")
    up = FileRepository(data / "up", ".txt")
    counts = YamlMetadataFileRepository(data / "counts")

    def upper(key: str, src: bytes) -> dict[str, bytes]:
        _mark(data, "upper", key)
        time.sleep(SLEEP)
        if b"fail" in src:
            raise ValueError(f"{key} asked to fail")
        return {"up": src.upper()}

    async def count(key: str, job: JobContext, up: FileRepository, counts: MetadataRepository) -> None:
        _mark(data, "count", key)
        text = await up.read_text(key)
        job.log(f"counting {key}")
        await counts.put(key, {"words": len(text.split()), "chars": len(text)})

    return Pipeline(
        [
            FunctionTask(
                "upper",
                upper,
                executor=PoolExecutor(ThreadPoolExecutor(workers)),
                inputs={"src": src},
                outputs={"up": up},
                concurrency=workers,
            ),
            FunctionTask("count", count, inputs={"up": up}, outputs={"counts": counts}),
        ],
        state_dir=data / "state",
    )


if __name__ == "__main__":
    main(build_pipeline(Path(os.environ["PDT_CLI_DATA"])), sys.argv[1:])
