"""The file workload for Prefect, run with the python of Prefect's own virtualenv.

Usage: ``python -I prefect_files.py ROOT THREADS``: one flow with a
``ThreadPoolTaskRunner(max_workers=THREADS)`` maps an ``upper`` task (read the input,
write it upper-cased) over the files of ``ROOT/in`` whose output in ``ROOT/out`` does
not exist yet, and waits for every task run. Prefect has no notion of an output that
makes a task complete; the flow checks each output itself before submitting, so the
no-op run (again over the same ``ROOT``) submits no task, the cheapest form such a
check takes (Prefect's result caching would still create a task run per key).

No server: the caller unsets ``PREFECT_API_URL`` and sets ``PREFECT_HOME`` to a fresh
directory, so Prefect starts its ephemeral API server on a loopback port with a SQLite
database of its own; analytics are off (``DO_NOT_TRACK``,
``PREFECT_SERVER_ANALYTICS_ENABLED=false``). The ephemeral server is started before
the clock starts (a request to it), which leaves its start-up (seconds) out of the
run's time.

Prints ``BENCH-RESULT {json}``: the run's seconds, the import time, the start-up of the
ephemeral server and this process's peak RSS. Stand-alone: it imports nothing from our
checkout but ``_driver.py`` (standard library only).
"""

from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # for _driver (-I adds no script folder)
from _driver import report, started  # noqa: E402


def main() -> None:
    root, threads = sys.argv[1], int(sys.argv[2])
    t0 = time.perf_counter()
    from prefect import flow, task
    from prefect.client.orchestration import get_client
    from prefect.task_runners import ThreadPoolTaskRunner

    import_s = time.perf_counter() - t0
    src, dst = os.path.join(root, "in"), os.path.join(root, "out")

    @task  # type: ignore[untyped-decorator]
    def upper(key: str) -> None:
        with open(os.path.join(src, key + ".txt"), "rb") as f:
            data = f.read()
        with open(os.path.join(dst, key + ".txt"), "wb") as f:
            f.write(data.upper())

    @flow(task_runner=ThreadPoolTaskRunner(max_workers=threads))  # type: ignore[untyped-decorator]
    def uppercase_all() -> int:
        todo = [
            name[:-4]
            for name in sorted(os.listdir(src))
            if name.endswith(".txt") and not os.path.exists(os.path.join(dst, name))
        ]
        upper.map(todo).result()
        return len(todo)

    t1 = time.perf_counter()
    with get_client(sync_client=True) as client:  # starts the ephemeral server
        client.hello()
    startup_s = time.perf_counter() - t1
    started()
    t2 = time.perf_counter()
    ran = uppercase_all()
    seconds = time.perf_counter() - t2
    report({"seconds": seconds, "import_seconds": import_s, "startup_seconds": startup_s, "ran": ran})


if __name__ == "__main__":
    main()
