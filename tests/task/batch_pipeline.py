"""A one-stage batched pipeline over local files for tests/task/test_batch_processes.py.

``python tests/task/batch_pipeline.py DATA [BATCH]`` runs it once and prints its summary as
JSON on the last line. Layout under ``DATA``::

    src/<key>.txt    inputs (written by the test)
    out/<key>.txt    the input upper-cased, written by the batch's one call
    state/           job records and claims (``Pipeline(state_dir=...)``)
    runs.log         "start KEY PID BATCHSIZE" per key when a call begins, "end KEY PID" when it
                     returns (O_APPEND)
    hold             while this file exists, a call waits (at most 20 s) after writing its
                     outputs and before returning
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

from pydatatask import FileRepository
from pydatatask.pipeline import Pipeline
from pydatatask.task import FunctionTask


def note(data: Path, lines: list[str]) -> None:
    fd = os.open(data / "runs.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, "".join(lines).encode())
    finally:
        os.close(fd)


def build(data: Path, batch: int = 10) -> Pipeline:
    """The pipeline over ``data``, with batches of ``batch`` keys."""

    async def upper(keys: list[str], src: FileRepository, out: FileRepository) -> None:
        pid = os.getpid()
        note(data, [f"start {k} {pid} {len(keys)}\n" for k in keys])
        for key in keys:
            await out.write_bytes(key, (await src.read_bytes(key)).upper())
            await asyncio.sleep(0.002)  # let a second scheduler interleave
        for _ in range(400):
            if not (data / "hold").exists():
                break
            await asyncio.sleep(0.05)
        note(data, [f"end {k} {pid}\n" for k in keys])

    task = FunctionTask(
        "upper",
        upper,
        inputs={"src": FileRepository(data / "src", ".txt")},
        outputs={"out": FileRepository(data / "out", ".txt")},
        batch=batch,
        concurrency=2,
    )
    return Pipeline([task], state_dir=data / "state")


def runs(data: Path) -> list[tuple[str, str]]:
    """``(event, key)`` of every line of ``runs.log`` so far."""
    path = data / "runs.log"
    if not path.exists():
        return []
    return [(line.split()[0], line.split()[1]) for line in path.read_text().splitlines() if line.strip()]


if __name__ == "__main__":
    folder = Path(sys.argv[1])
    size = int(sys.argv[2]) if len(sys.argv) > 2 else 10
    summary = build(folder, size).run_sync()
    print(json.dumps(summary.as_dict()))
