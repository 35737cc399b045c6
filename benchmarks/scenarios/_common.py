"""What several scenarios share: the test servers' settings, the verdict of a ratio, the
worker coroutines of a bare loop and a directory listing. Nothing here is measured on its
own: a bare loop runs the same calls through these helpers as it did inline."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from . import Verdict

__all__ = (
    "at_least",
    "at_most",
    "figure",
    "is_loopback",
    "listing",
    "run_workers",
    "test_services",
    "timed_count",
    "timed_jobs",
)

#: the hosts a scenario sends its requests to (it never loads a remote server)
LOOPBACK = ("127.0.0.1", "localhost", "::1")


def test_services() -> dict[str, Any] | None:
    """The settings of the test servers: ``$PDT_TEST_SERVICES``, else what
    ``scripts/test-services env`` names; None when there are none."""
    path = os.environ.get("PDT_TEST_SERVICES")
    if not path:
        root = Path(__file__).resolve().parents[2]
        try:
            out = subprocess.run(
                ["bash", str(root / "scripts" / "test-services"), "env"],
                capture_output=True,
                text=True,
                timeout=30,
            )
            path = out.stdout.strip().splitlines()[-1] if out.returncode == 0 and out.stdout.strip() else None
        except (OSError, subprocess.TimeoutExpired):
            path = None
    if not path or not Path(path).is_file():
        return None
    return json.loads(Path(path).read_text())  # type: ignore[no-any-return]


def is_loopback(url: str) -> bool:
    """Whether ``url`` names this machine."""
    return urlparse(url).hostname in LOOPBACK


def at_least(target: str, r: float | None, threshold: float) -> Verdict:
    """The verdict of a ratio that must reach ``threshold`` (shown as ``1.23x``)."""
    return Verdict(target, "n/a" if r is None else f"{r:.2f}x", None if r is None else r >= threshold)


def at_most(target: str, r: float | None, threshold: float) -> Verdict:
    """The verdict of a ratio that must stay within ``threshold`` (shown as ``1.23x``)."""
    return Verdict(target, "n/a" if r is None else f"{r:.2f}x", None if r is None else r <= threshold)


def figure(target: str, r: float | None) -> Verdict:
    """A ratio reported without a target (shown as ``1.23x``)."""
    return Verdict(target, "n/a" if r is None else f"{r:.2f}x", None)


async def run_workers(concurrency: int, worker: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Run ``concurrency`` copies of ``worker`` at once (they share one iterator of the
    work) and wait for all of them."""
    async with asyncio.TaskGroup() as tg:
        for _ in range(concurrency):
            tg.create_task(worker())


def timed_count(main: Callable[[], Coroutine[Any, Any, int]], n: int) -> float:
    """The seconds of ``asyncio.run(main())``, checking that it did ``n`` things."""
    t1 = time.perf_counter()
    count = asyncio.run(main())
    seconds = time.perf_counter() - t1
    assert count == n, (count, n)
    return seconds


def listing(directory: str, ext: str) -> set[str]:
    """The names in ``directory`` ending with ``ext`` (without it), hidden files left out:
    what a bare loop lists of a ``FileRepository``."""
    return {
        e.name[: -len(ext)]
        for e in os.scandir(directory)
        if e.name.endswith(ext) and not e.name.startswith(".")
    }


def timed_jobs(main: Callable[[], Coroutine[Any, Any, int]], n: int, import_s: float = 0.0) -> dict[str, Any]:
    """The metrics of a bare loop ``main`` that runs ``n`` jobs: seconds, jobs per second
    and the seconds of its imports."""
    seconds = timed_count(main, n)
    return {"seconds": seconds, "jobs_per_s": n / seconds, "import_seconds": import_s}
