"""The file workload for Luigi, run with the python of Luigi's own virtualenv.

Usage: ``python -I luigi_files.py ROOT WORKERS``: one ``Upper`` task per file of
``ROOT/in`` (its output a ``LocalTarget`` in ``ROOT/out``, which Luigi writes through a
temporary file and a rename), all required by one ``WrapperTask``; ``luigi.build`` with
the local scheduler and ``WORKERS`` worker processes. Run again over the same ``ROOT``,
every ``Upper`` is complete (its output exists) and nothing runs: the no-op run.

Prints ``BENCH-RESULT {json}``: the run's seconds (after the imports), the import time
and this process's peak RSS. Stand-alone: it imports nothing from our checkout but
``_driver.py`` (standard library only).
"""

from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # for _driver (-I adds no script folder)
from _driver import report, started  # noqa: E402


def main() -> None:
    root, workers = sys.argv[1], int(sys.argv[2])
    t0 = time.perf_counter()
    import luigi
    import luigi.format

    import_s = time.perf_counter() - t0
    src, dst = os.path.join(root, "in"), os.path.join(root, "out")

    class Upper(luigi.Task):  # type: ignore[misc]
        key = luigi.Parameter()

        def output(self) -> luigi.LocalTarget:
            return luigi.LocalTarget(os.path.join(dst, self.key + ".txt"), format=luigi.format.Nop)

        def run(self) -> None:
            with open(os.path.join(src, self.key + ".txt"), "rb") as f:
                data = f.read()
            with self.output().open("w") as out:
                out.write(data.upper())

    class All(luigi.WrapperTask):  # type: ignore[misc]
        def requires(self) -> list[Upper]:
            return [Upper(key=name[:-4]) for name in sorted(os.listdir(src)) if name.endswith(".txt")]

    started()
    t1 = time.perf_counter()
    ok = luigi.build([All()], workers=workers, local_scheduler=True, log_level="WARNING")
    seconds = time.perf_counter() - t1
    if not ok:
        raise SystemExit("luigi.build reported a failure")
    report({"seconds": seconds, "import_seconds": import_s})


if __name__ == "__main__":
    main()
