"""A periodic pipeline for the ``run --forever`` tests.

``python tests/task/periodic_pipeline.py COMMAND ...`` with ``PDT_PERIODIC_DATA`` naming the
data directory. The task ``tick`` runs every second (``PDT_PERIODIC_SCHEDULE``) and writes
``out/<window>.txt`` (the window's start) and appends a line to ``runs/<window>`` per
execution; the pipeline polls only once an hour, so every
window after the first is launched by the wake-up for the next window.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydatatask import FileRepository
from pydatatask.cli import main
from pydatatask.pipeline import Pipeline
from pydatatask.task import FunctionTask


def build_pipeline(data: Path) -> Pipeline:
    """The periodic pipeline over ``data``."""

    def tick(key: str, clock: dict[str, Any]) -> dict[str, str]:
        runs = data / "runs"
        runs.mkdir(parents=True, exist_ok=True)
        fd = os.open(runs / key, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:  # one line per execution, whichever scheduler runs it
            os.write(fd, f"{os.getpid()}\n".encode())
        finally:
            os.close(fd)
        return {"out": clock["start"]}

    task = FunctionTask(
        "tick",
        tick,
        schedule=os.environ.get("PDT_PERIODIC_SCHEDULE", "1s"),
        outputs={"out": FileRepository(data / "out", ".txt")},
    )
    return Pipeline([task], state_dir=data / "state", poll_interval="1h")


if __name__ == "__main__":
    main(build_pipeline(Path(os.environ["PDT_PERIODIC_DATA"])))
