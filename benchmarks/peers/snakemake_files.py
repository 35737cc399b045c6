"""The file workload for Snakemake, run with the python of Snakemake's own virtualenv.

Usage: ``python -I snakemake_files.py ROOT CORES``: writes ``ROOT/Snakefile`` (rule
``all`` asks for ``out/{k}.txt`` of every ``in/{k}.txt``; rule ``upper`` reads the input
and writes it upper-cased with ``tr``, a shell command: Snakemake 9 runs each job of a
``run:`` block as a new ``python -m snakemake`` process, seconds per job, so a shell
command is its fast mode) and runs Snakemake's command line in this process: ``--cores CORES --quiet``.
Run again over the same ``ROOT``, every output is newer than its input and Snakemake
has nothing to do: the no-op run.

Prints ``BENCH-RESULT {json}``: the run's seconds (after the imports: parsing the
Snakefile, building the DAG and running the jobs), the import time and this process's
peak RSS. Stand-alone: it imports nothing from our checkout but
``_driver.py`` (standard library only).
"""

from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # for _driver (-I adds no script folder)
from _driver import report, started  # noqa: E402

SNAKEFILE = """\
KEYS = sorted(glob_wildcards("in/{k}.txt").k)

rule all:
    input: expand("out/{k}.txt", k=KEYS)

rule upper:
    input: "in/{k}.txt"
    output: "out/{k}.txt"
    shell: "tr a-z A-Z < {input:q} > {output:q}"
"""


def main() -> None:
    root, cores = sys.argv[1], int(sys.argv[2])
    snakefile = os.path.join(root, "Snakefile")
    with open(snakefile, "w") as f:
        f.write(SNAKEFILE)
    t0 = time.perf_counter()
    from snakemake.cli import main as snakemake_main

    import_s = time.perf_counter() - t0
    argv = [
        "--snakefile",
        snakefile,
        "--directory",
        root,
        "--cores",
        str(cores),
        "--scheduler",
        "greedy",
        "--quiet",
    ]
    started()
    t1 = time.perf_counter()
    try:
        snakemake_main(argv)
        status: object = 0
    except SystemExit as exc:  # the command line ends with sys.exit
        status = exc.code
    seconds = time.perf_counter() - t1
    if status not in (0, None):
        raise SystemExit(f"snakemake exited with {status}")
    report({"seconds": seconds, "import_seconds": import_s})


if __name__ == "__main__":
    main()
