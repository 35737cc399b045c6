"""The file workload against Luigi, Snakemake and Prefect, each in its own virtualenv.

N jobs that each read an 8-byte input file and write it upper-cased to an output file,
then a no-op run over the same directories with everything done. Every series is a
driver script (``benchmarks/peers/``) run in a process of its own; this worker makes
the inputs, runs the driver, samples the memory of its process tree, counts the
outputs, and runs the driver a second time for the no-op run.

* ``ours``: the ``file_jobs`` pipeline (``FunctionTask`` over ``FileRepository`` in/out,
  ``Pipeline(state_dir=...)``: a YAML done record and a claim per job, atomic durable
  writes), concurrency 15.
* ``luigi-w1`` / ``luigi-w2``: one ``luigi.Task`` per file with a ``LocalTarget`` output
  (written through a temporary file and a rename), one ``WrapperTask`` requiring them
  all, ``luigi.build(local_scheduler=True)`` with 1 or 2 workers. With more than one
  worker Luigi runs every task in a forked process.
* ``snakemake-c2``: a rule ``out/{k}.txt`` from ``in/{k}.txt`` with the shell command
  ``tr a-z A-Z``, ``--cores 2 --scheduler greedy`` (the default ILP scheduler took 2.5x
  as long here; a ``run:`` block costs a new Snakemake process per job).
* ``prefect-tp``: a flow mapping a task over the files whose output is missing, with a
  ``ThreadPoolTaskRunner(max_workers=15)``; no server: Prefect's ephemeral API server
  on a loopback port with a fresh SQLite database (``PREFECT_HOME`` under the run's
  directory), analytics off; the server is started before the clock starts.

Figures per series: ``seconds`` (the driver's run, after its imports), ``jobs_per_s``,
``noop_seconds`` (the second run, same clock), ``peak_rss_mb`` (the run's process
tree: the largest sum of the RSS of the driver and all its descendants, sampled every
50 ms, and never less than the peak of the largest single process), ``peak_pss_mb``
(the same sum of proportional set sizes: pages shared by forked workers counted once),
``wall_seconds`` (the whole process, interpreter and imports included). A run past the
time budget (counted from when the driver's clock starts) is killed: ``finished`` 0,
``jobs_done`` the outputs it wrote by then, ``jobs_per_s`` that count over the budget.

Target: ours at least 10x the best peer in each column (throughput, no-op time, peak
RSS).
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import REPO_ROOT, RESULT_PREFIX
from . import Options, Point, ScenarioResult, Stats, Verdict

NAME = "peer_files"
TITLE = "file jobs against Luigi, Snakemake and Prefect (each in its best mode)"
DRIVERS = Path(__file__).resolve().parent.parent / "peers"
CONCURRENCY = 15
TARGET = 10.0  # ours >= 10x the best peer in every column
SAMPLE_INTERVAL = 0.05
START_LINE = b"BENCH-START\n"  # a driver prints it when its clock starts
STARTUP_LIMIT = 900.0  # seconds a driver may take to get there (imports, Prefect's server)


@dataclass(frozen=True)
class Series:
    """One series: which peer (None: ours), its driver, its parallelism, its mode in words."""

    dist: str | None
    driver: str
    parallelism: int
    mode: str


SERIES: dict[str, Series] = {
    "ours": Series(None, "ours_files.py", CONCURRENCY, "FunctionTask, concurrency 15, state_dir"),
    "luigi-w1": Series("luigi", "luigi_files.py", 1, "local scheduler, workers=1"),
    "luigi-w2": Series("luigi", "luigi_files.py", 2, "local scheduler, workers=2"),
    "snakemake-c2": Series("snakemake", "snakemake_files.py", 2, "--cores 2 --scheduler greedy, shell"),
    "prefect-tp": Series("prefect", "prefect_files.py", CONCURRENCY, "ThreadPoolTaskRunner(15), ephemeral"),
}
PEER_SERIES = tuple(s for s in SERIES if s != "ours")


def points(opts: Options) -> list[Point]:
    sizes = (50,) if opts.quick else opts.peer_sizes
    series = ["ours"] + (list(PEER_SERIES) if opts.with_peers else [])
    return [Point(f"{n} jobs", n, {"n": n, "budget": opts.peer_budget}, series) for n in sizes]


def reps(opts: Options) -> int:
    """Repetitions: ``--peer-reps`` (at 10,000 jobs one takes 20-30 minutes)."""
    return 1 if opts.quick else opts.peer_reps


def prepare(opts: Options) -> dict[str, Any] | str:
    """The peers' pythons (their virtualenvs were made by the runner), and the series
    that have none, with the reason (a failed install is reported, never skipped)."""
    pythons: dict[str, str] = {}
    unavailable: dict[str, str] = {}
    if opts.with_peers:
        for name in PEER_SERIES:
            dist = SERIES[name].dist
            assert dist is not None
            python, why = opts.peer_pythons.get(dist, (None, f"no virtualenv for {dist} was made"))
            if python is None:
                unavailable[name] = why
            else:
                pythons[name] = python
    return {"pythons": pythons, "unavailable": unavailable}


# ---------------------------------------------------------------------- verdicts and table
def _best_peer(res: ScenarioResult, label: str, metric: str, higher: bool) -> tuple[str, float] | None:
    """The peer series with the best median of ``metric`` at ``label`` (and that median)."""
    found = [
        (name, value)
        for name in PEER_SERIES
        if (value := res.median(label, name, metric)) is not None
        and (metric != "noop_seconds" or finished(res, label, name))
    ]
    if not found:
        return None
    return (max if higher else min)(found, key=lambda item: item[1])


def finished(res: ScenarioResult, label: str, series: str) -> bool:
    """Every measurement of ``series`` at ``label`` finished within the time budget."""
    values = res.data.get(label, {}).get(series, {}).get("finished") or []
    return bool(values) and all(v == 1 for v in values)


#: column -> (metric, higher is better, unit)
COLUMNS = {
    "throughput": ("jobs_per_s", True, "jobs/s"),
    "no-op time": ("noop_seconds", False, "s"),
    "peak RSS": ("peak_rss_mb", False, "MiB"),
}


def column_ratio(res: ScenarioResult, label: str, column: str) -> tuple[float, str] | None:
    """How many times better ours is than the best peer in ``column`` (and that peer)."""
    metric, higher, _unit = COLUMNS[column]
    ours = res.median(label, "ours", metric)
    best = _best_peer(res, label, metric, higher)
    if ours is None or best is None or ours <= 0 or best[1] <= 0:
        return None
    return (ours / best[1] if higher else best[1] / ours), best[0]


def verdicts(res: ScenarioResult) -> list[Verdict]:
    out = []
    for point in res.points:
        for column in COLUMNS:
            r = column_ratio(res, point.label, column)
            out.append(
                Verdict(
                    f">= {TARGET:g}x the best peer: {column} ({point.label})",
                    "n/a" if r is None else f"{r[0]:.2f}x (best peer: {r[1]})",
                    None if r is None else r[0] >= TARGET,
                )
            )
    return out


def _cell(res: ScenarioResult, label: str, series: str, metric: str, fmt: str) -> str:
    values = res.data.get(label, {}).get(series, {}).get(metric)
    if not values:
        return "n/a"
    st = Stats(values)
    text = format(st.median, fmt)
    return text if len(values) == 1 else f"{text} [{format(st.min, fmt)}-{format(st.max, fmt)}]"


def table_lines(res: ScenarioResult) -> list[str]:
    """The peer table: per size and series its mode, throughput, no-op time and peak RSS,
    then ours / the best peer per column."""
    lines = [
        f"  {'size':>11} {'series':<13} {'jobs/s':>18} {'no-op s':>18} {'peak RSS MiB':>18}"
        f" {'PSS MiB':>9} {'wall s':>8}  mode"
    ]
    for point in res.points:
        label = point.label
        for series in point.series:
            mode = SERIES[series].mode
            slot = res.data.get(label, {}).get(series)
            if not slot:
                why = res.unavailable.get(series, "no measurement")
                lines.append(f"  {label:>11} {series:<13} n/a: {why[:200]}")
                continue
            if not finished(res, label, series):
                done = Stats(slot.get("jobs_done", [0.0])).median
                budget = point.params["budget"]
                rate = _cell(res, label, series, "jobs_per_s", ".1f")
                lines.append(
                    f"  {label:>11} {series:<13} did not finish in {budget:g} s"
                    f" ({done:.0f} of {point.x:.0f} jobs done, {rate} jobs/s)  {mode}"
                )
                continue
            lines.append(
                f"  {label:>11} {series:<13} {_cell(res, label, series, 'jobs_per_s', '.1f'):>18}"
                f" {_cell(res, label, series, 'noop_seconds', '.3f'):>18}"
                f" {_cell(res, label, series, 'peak_rss_mb', '.1f'):>18}"
                f" {_cell(res, label, series, 'peak_pss_mb', '.1f'):>9}"
                f" {_cell(res, label, series, 'wall_seconds', '.1f'):>8}  {mode}"
            )
        for column in COLUMNS:
            r = column_ratio(res, label, column)
            text = "n/a" if r is None else f"{r[0]:.2f}x vs {r[1]}"
            lines.append(f"  {label:>11} ours / best peer, {column}: {text}")
    return lines


# ---------------------------------------------------------------------- the worker
def make_inputs(root: Path, n: int) -> None:
    (root / "in").mkdir(parents=True)
    (root / "out").mkdir()
    for i in range(n):
        (root / "in" / f"k{i:07d}.txt").write_bytes(b"abcdefgh")


def count_outputs(root: Path) -> int:
    """Outputs that are complete: named like an input and holding the upper-cased bytes."""
    done = 0
    with os.scandir(root / "out") as entries:
        for e in entries:
            if e.name.startswith("k") and e.name.endswith(".txt"):
                try:
                    with open(e.path, "rb") as f:
                        done += f.read() == b"ABCDEFGH"
                except OSError:
                    pass
    return done


def tree_pids(pid: int) -> list[int]:
    """``pid`` and all its descendants (through ``/proc/PID/task/TID/children``)."""
    pids, i = [pid], 0
    while i < len(pids):
        p = pids[i]
        i += 1
        try:
            for tid in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{tid}/children") as f:
                    pids.extend(int(c) for c in f.read().split())
        except OSError:
            continue  # gone meanwhile
    return pids


def memory_mb(pid: int) -> tuple[float, float]:
    """RSS and PSS of one process in MiB (0 when it is gone)."""
    rss = pss = 0.0
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Rss:"):
                    rss = float(line.split()[1]) / 1024
                elif line.startswith("Pss:"):
                    pss = float(line.split()[1]) / 1024
    except OSError:
        pass
    return rss, pss


class TreeSampler:
    """Samples the summed RSS and PSS of a process tree in a thread until stopped."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak_rss = self.peak_pss = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            rss = pss = 0.0
            for p in tree_pids(self.pid):
                r, s = memory_mb(p)
                rss, pss = rss + r, pss + s
            self.peak_rss, self.peak_pss = max(self.peak_rss, rss), max(self.peak_pss, pss)
            self._stop.wait(SAMPLE_INTERVAL)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


@dataclass
class DriverRun:
    """One run of a driver: whether it finished in time, its result line, its figures."""

    finished: bool
    wall_seconds: float
    result: dict[str, Any]
    peak_rss_mb: float
    peak_pss_mb: float


def driver_command(series: str, root: Path, params: dict[str, Any]) -> tuple[list[str], dict[str, str]]:
    """argv and environment of ``series``' driver over ``root``."""
    spec = SERIES[series]
    script = str(DRIVERS / spec.driver)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    if spec.dist is None:
        env["PYTHONPATH"] = str(REPO_ROOT)
        return [sys.executable, script, str(root), str(spec.parallelism)], env
    env["XDG_CACHE_HOME"] = str(root / ".cache")  # Snakemake's source cache: per run
    if spec.dist == "prefect":
        # no server anywhere: the ephemeral one on a loopback port, its own database,
        # no analytics, nothing but warnings on the console
        for k in [k for k in env if k.startswith("PREFECT_")]:
            del env[k]
        env.update(
            PREFECT_HOME=str(root / ".prefect"),
            PREFECT_SERVER_ALLOW_EPHEMERAL_MODE="true",
            PREFECT_SERVER_ANALYTICS_ENABLED="false",
            PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="300",
            PREFECT_LOGGING_LEVEL="WARNING",
            DO_NOT_TRACK="1",
        )
    return [params["pythons"][series], "-I", script, str(root), str(spec.parallelism)], env


def run_driver(argv: list[str], env: dict[str, str], root: Path, budget: float, log: str) -> DriverRun:
    """Run a driver in a session of its own; kill its whole process group when its run
    takes longer than ``budget`` (counted from its start line: its imports and start-up,
    Prefect's server, are not) or its start-up longer than ``STARTUP_LIMIT``."""
    out_path = root / f"{log}.out"
    with open(out_path, "wb") as out, open(root / f"{log}.err", "wb") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(argv, cwd=root, env=env, stdout=out, stderr=err, start_new_session=True)
        sampler = TreeSampler(proc.pid)
        deadline = t0 + STARTUP_LIMIT
        clock_started = False
        done_in_time = False
        try:
            while True:
                try:
                    proc.wait(timeout=0.1)
                    done_in_time = True
                    break
                except subprocess.TimeoutExpired:
                    pass
                now = time.perf_counter()
                if not clock_started and START_LINE in out_path.read_bytes():
                    clock_started, deadline = True, now + budget
                if now > deadline:
                    break
        finally:
            sampler.stop()
            try:  # the driver, and anything it left behind (Prefect's server)
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()
    wall = time.perf_counter() - t0
    text = out_path.read_text(errors="replace")
    result: dict[str, Any] = {}
    for line in reversed(text.splitlines()):
        if line.startswith(RESULT_PREFIX):
            result = json.loads(line[len(RESULT_PREFIX) :])
            break
    if done_in_time and (proc.returncode != 0 or not result):
        tail = (root / f"{log}.err").read_text(errors="replace").strip().splitlines()[-5:]
        raise RuntimeError(f"{argv[2 if '-I' in argv else 1]} exited {proc.returncode}: " + " | ".join(tail))
    return DriverRun(done_in_time, wall, result, sampler.peak_rss, sampler.peak_pss)


def run(series: str, params: dict[str, Any]) -> dict[str, Any]:
    n, budget = params["n"], float(params["budget"])
    root = Path(tempfile.mkdtemp(prefix="pdt-bench-peers-", dir=os.environ.get("PDT_BENCH_TMP")))
    try:
        make_inputs(root, n)
        argv, env = driver_command(series, root, params)
        first = run_driver(argv, env, root, budget, "run")
        done = count_outputs(root)
        if not first.finished:
            return {
                "seconds": budget,
                "jobs_per_s": done / budget,
                "jobs_done": done,
                "finished": 0,
                "peak_rss_mb": first.peak_rss_mb,
                "peak_pss_mb": first.peak_pss_mb,
                "wall_seconds": first.wall_seconds,
            }
        if done != n:
            raise RuntimeError(f"{series} finished with {done} of {n} outputs")
        # the largest single process's peak: the driver's own, or a child's (waited for)
        children_peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        peak = max(first.peak_rss_mb, children_peak, float(first.result.get("driver_peak_mb", 0.0)))
        second = run_driver(argv, env, root, budget, "noop")
        if not second.finished:
            raise RuntimeError(f"{series}: the no-op run did not finish in {budget:g} s")
        if count_outputs(root) != n:
            raise RuntimeError(f"{series}: the no-op run changed the outputs")
        seconds = float(first.result["seconds"])
        metrics = {
            "seconds": seconds,
            "jobs_per_s": n / seconds,
            "noop_seconds": float(second.result["seconds"]),
            "jobs_done": done,
            "finished": 1,
            "peak_rss_mb": peak,
            "peak_pss_mb": first.peak_pss_mb,
            "wall_seconds": first.wall_seconds,
            "noop_wall_seconds": second.wall_seconds,
            "import_seconds": float(first.result.get("import_seconds", 0.0)),
        }
        if "startup_seconds" in first.result:
            metrics["startup_seconds"] = float(first.result["startup_seconds"])
        return metrics
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    from .. import worker_main

    worker_main(run)
