"""What the stale-redo pipeline scripts (``stale_pipeline.py``, ``stale_fan_pipeline.py``)
and their tests share: the log of job starts, the files that hold a job, running a script
as a second scheduler and killing it in the middle of a job."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from pydatatask.pipeline import Pipeline

ROOT = Path(__file__).resolve().parents[2]


def note(data: Path, line: str) -> None:
    """Append ``line`` to ``DATA/runs.log`` (O_APPEND: whole lines from several processes)."""
    fd = os.open(data / "runs.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


async def wait_while(data: Path, hold: str) -> None:
    """Wait while the file ``DATA/hold`` exists (20 s at the most)."""
    for _ in range(400):
        if not (data / hold).exists():
            break
        await asyncio.sleep(0.05)


def runs(data: Path) -> list[tuple[str, str]]:
    """``(task, key)`` of every job started so far."""
    path = data / "runs.log"
    if not path.exists():
        return []
    return [(line.split()[0], line.split()[1]) for line in path.read_text().splitlines()]


def main(build: Callable[[Path], Pipeline]) -> None:
    """A script's body: ``SCRIPT DATA [--rerun-stale]`` runs ``build(DATA)`` once and prints
    its summary as JSON on the last line."""
    root = Path(sys.argv[1])
    summary = build(root).run_sync(rerun_stale="--rerun-stale" in sys.argv[2:])
    print(json.dumps(summary.as_dict()))


def start(script: Path, data: Path, *args: str) -> subprocess.Popen[str]:
    """Start ``script DATA ARGS`` (this checkout on its path), its output piped."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, str(script), str(data), *args],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def kill_when(proc: subprocess.Popen[str], data: Path, before: int, job: tuple[str, str], never: str) -> None:
    """SIGKILL ``proc`` once ``job`` (``(task, key)``) is among the starts after the first
    ``before``; fail with ``never`` if it does not start within 20 s (or ``proc`` ends)."""
    try:
        for _ in range(400):
            if job in runs(data)[before:]:
                break
            assert proc.poll() is None, proc.communicate()
            subprocess.run(["sleep", "0.05"], check=True)
        else:
            raise AssertionError(never)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=30)
