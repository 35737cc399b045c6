"""A one-task pipeline over local files for tests/task/test_claim_identity.py.

``python tests/task/claim_ns_pipeline.py DATA LEASE`` runs it once (``Pipeline.run``) and
prints its summary as JSON on the last line. Layout under ``DATA``::

    src/<key>.txt   inputs (written by the test)
    out/<key>.txt   outputs: the input upper-cased
    state/          job records and claims (``Pipeline(state_dir=...)``)
    runs.log        one line per job start (O_APPEND): "KEY PID PID-NAMESPACE"
    release         a job waits until this file exists (at most 20 s), then writes its output
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

from pydatatask import FileRepository
from pydatatask.pipeline import Pipeline
from pydatatask.task import FunctionTask


def build(data: Path, lease: str) -> Pipeline:
    """The pipeline over ``data`` with claims leased for ``lease``."""

    async def upper(key: str, src: FileRepository, out: FileRepository) -> None:
        line = f"{key} {os.getpid()} {os.readlink('/proc/self/ns/pid')}\n"
        fd = os.open(data / "runs.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)
        for _ in range(400):  # 20 s: the test touches the file (a signal across processes)
            if (data / "release").exists():
                break
            await asyncio.sleep(0.05)
        await out.write_bytes(key, (await src.read_bytes(key)).upper())

    task = FunctionTask(
        "upper",
        upper,
        inputs={"src": FileRepository(data / "src", ".txt")},
        outputs={"out": FileRepository(data / "out", ".txt")},
    )
    return Pipeline([task], state_dir=data / "state", claim_lease=lease, claim_check_interval="0.2s")


def main(argv: list[str]) -> None:
    data, lease = Path(argv[0]), argv[1]
    summary: Any = asyncio.run(build(data, lease).run())
    print(json.dumps(summary.as_dict()), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
