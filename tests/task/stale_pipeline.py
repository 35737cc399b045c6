"""A two-stage pipeline over local files for tests/task/test_stale.py.

``python tests/task/stale_pipeline.py DATA [--rerun-stale]`` runs it once and prints its
summary as JSON on the last line. Layout under ``DATA``::

    src/<key>.txt    inputs (written by the test)
    mid/<key>.txt    stage "upper": the input upper-cased
    out/<key>.txt    stage "mark": the middle value with "!" appended
    state/           job records and claims (``Pipeline(state_dir=...)``)
    runs.log         one line per job start (O_APPEND): "TASK KEY PID"
    hold-<key>       while this file exists, the job of "upper" on KEY waits (at most 20 s)
    hold-rm-<key>    while this file exists, removing KEY from mid/ waits (at most 20 s),
                     after noting "rm KEY PID" in runs.log
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from pydatatask import FileRepository
from pydatatask.pipeline import Pipeline
from pydatatask.task import FunctionTask
from tests.task.stale_support import main, note, wait_while


class HeldFiles(FileRepository):
    """Files whose removal of a key waits while ``hold-rm-<key>`` exists."""

    def __init__(self, data: Path, root: Path) -> None:
        super().__init__(root, ".txt")
        self.data = data

    async def delete(self, key: str) -> None:
        if (self.data / f"hold-rm-{key}").exists():
            note(self.data, f"rm {key} {os.getpid()}\n")
            await wait_while(self.data, f"hold-rm-{key}")
        await super().delete(key)


def build(data: Path, *, version: str | None = None) -> Pipeline:
    """The pipeline over ``data`` (``version``: the version of the "upper" task)."""

    async def upper(key: str, src: FileRepository, mid: FileRepository) -> None:
        note(data, f"upper {key} {os.getpid()}\n")
        await wait_while(data, f"hold-{key}")
        await asyncio.sleep(0.02)  # long enough for a second scheduler to try the same key
        await mid.write_bytes(key, (await src.read_bytes(key)).upper())

    async def mark(key: str, mid: FileRepository, out: FileRepository) -> None:
        note(data, f"mark {key} {os.getpid()}\n")
        await asyncio.sleep(0.02)
        await out.write_bytes(key, (await mid.read_bytes(key)) + b"!")

    mid = HeldFiles(data, data / "mid")
    t1 = FunctionTask(
        "upper",
        upper,
        inputs={"src": FileRepository(data / "src", ".txt")},
        outputs={"mid": mid},
        version=version,
    )
    t2 = FunctionTask(
        "mark", mark, inputs={"mid": mid}, outputs={"out": FileRepository(data / "out", ".txt")}
    )
    return Pipeline([t1, t2], state_dir=data / "state", claim_lease="1s", claim_check_interval="0.2s")


if __name__ == "__main__":
    main(build)
