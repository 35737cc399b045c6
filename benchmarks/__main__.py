"""The benchmark runner: ``python -m benchmarks [--quick] [--only NAME ...] [--reps N]
[--size N] [--json out.json] [--plot out.png] [--profile NAME] [--no-baseline-047]``.

For each scenario and repetition it runs every series (ours, the bare loop, 0.4.7, ...)
one after the other, each measurement in a fresh subprocess, then prints medians,
spreads (min-max), ratios to ours and the issue's targets (reported, never asserted).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType
from typing import Any

from . import REPO_ROOT, RESULT_PREFIX
from .scenarios import SCENARIOS, Options, ScenarioResult, Stats, Verdict, ratio

BASELINE_DIR = Path(__file__).resolve().parent / "baseline_047"
WORKER_TIMEOUT = 900.0


# ---------------------------------------------------------------------- machine
def machine() -> dict[str, Any]:
    """Cores, CPU model, memory and Python of this machine."""
    model = platform.processor() or "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = "?"
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    except OSError:
        pass
    return {
        "cores": os.cpu_count(),
        "cpu": model,
        "memory": mem,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }


# ---------------------------------------------------------------------- virtualenvs
#: the peers compared in ``peer_files``: series name -> (distribution, pinned version)
PEERS: dict[str, tuple[str, str]] = {
    "luigi": ("luigi", "3.8.1"),
    "snakemake": ("snakemake", "9.27.1"),
    "prefect": ("prefect", "3.9.1"),
}


def bench_cache() -> Path:
    """Where the benchmark virtualenvs live: ``${PDT_CACHE:-~/.cache/pydatatask}``."""
    return Path(os.environ.get("PDT_CACHE") or Path.home() / ".cache" / "pydatatask")


def pinned_venv(dist: str, version: str) -> tuple[str | None, str, float | None]:
    """The python of a virtualenv holding exactly ``dist==version``, created on first use.

    Returns (python or None, why not, seconds the install took or None when the
    virtualenv was already there). The check and the install run isolated from our
    checkout (no ``PYTHONPATH``, a directory outside it), since 0.4.7 shares our name.
    """
    venv = bench_cache() / f"bench-venv-{dist}-{version}"
    if dist == "pydatatask" and version == "0.4.7":
        venv = bench_cache() / "bench-venv-0.4.7"  # the name it always had
    python = venv / "bin" / "python"
    check = [str(python), "-I", "-c", f"import importlib.metadata as m; print(m.version({dist!r}))"]
    clean_env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    ok = (
        python.exists()
        and subprocess.run(
            check, capture_output=True, text=True, cwd=tempfile.gettempdir(), env=clean_env
        ).stdout.strip()
        == version
    )
    if ok:
        return str(python), "", None
    print(f"creating the {dist} {version} virtualenv in {venv} (once) ...", flush=True)
    t0 = time.perf_counter()
    try:
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True, capture_output=True)
        subprocess.run(
            [str(python), "-m", "pip", "install", "-q", f"{dist}=={version}"],
            check=True,
            capture_output=True,
            text=True,
            cwd=tempfile.gettempdir(),
            env=clean_env,
            timeout=1800,
        )
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as exc:
        detail = getattr(exc, "stderr", "") or str(exc)
        seconds = time.perf_counter() - t0
        print(f"  install of {dist}=={version} FAILED after {seconds:.1f} s", flush=True)
        return None, f"could not install {dist}=={version}: {str(detail).strip()[-300:]}", seconds
    seconds = time.perf_counter() - t0
    print(f"  installed {dist}=={version} in {seconds:.1f} s", flush=True)
    return str(python), "", seconds


def venv_047() -> tuple[str | None, str]:
    """The python of the pydatatask 0.4.7 virtualenv (created on demand), or None and why."""
    python, why, _seconds = pinned_venv("pydatatask", "0.4.7")
    return python, why


# ---------------------------------------------------------------------- measuring
def worker_command(
    mod: ModuleType, series: str, params: dict[str, Any], opts: Options
) -> tuple[list[str], str, dict[str, str]]:
    """argv, cwd and environment of one measurement."""
    env = dict(os.environ)
    env.pop("PYTHONHOME", None)
    if series == "0.4.7":
        env.pop("PYTHONPATH", None)
        cwd = tempfile.gettempdir()  # outside our checkout: `import pydatatask` must find 0.4.7
        if hasattr(mod, "command"):
            return mod.command(series, params, opts.python047), cwd, env
        assert opts.python047
        return (
            [opts.python047, "-I", str(BASELINE_DIR / "bench047.py"), mod.NAME, json.dumps(params)],
            cwd,
            env,
        )
    env["PYTHONPATH"] = str(REPO_ROOT)  # our checkout, not whatever is installed
    if hasattr(mod, "command"):
        return mod.command(series, params, opts.python047), str(REPO_ROOT), env
    return (
        [sys.executable, "-m", f"benchmarks.scenarios.{mod.NAME}", series, json.dumps(params)],
        str(REPO_ROOT),
        env,
    )


def measure(
    mod: ModuleType,
    series: str,
    params: dict[str, Any],
    opts: Options,
    extra_env: dict[str, str] | None = None,
) -> dict[str, Any]:
    argv, cwd, env = worker_command(mod, series, params, opts)
    env.update(extra_env or {})
    # write back what earlier measurements left dirty (10k-file scenarios leave tens of
    # MB), so that no series pays for another's writeback during its timed part
    os.sync()
    proc = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=WORKER_TIMEOUT)
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RESULT_PREFIX):
            return json.loads(line[len(RESULT_PREFIX) :])  # type: ignore[no-any-return]
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
    raise RuntimeError(f"{mod.NAME}/{series} exited {proc.returncode}: " + " | ".join(tail))


def run_scenario(mod: ModuleType, opts: Options) -> ScenarioResult:
    points = mod.points(opts)
    res = ScenarioResult(mod.NAME, points)
    extra: dict[str, Any] = {}
    if hasattr(mod, "prepare"):
        prepared = mod.prepare(opts)
        if isinstance(prepared, str):
            for p in points:
                for s in p.series:
                    res.unavailable[s] = prepared
            return res
        extra = dict(prepared)
        # series the scenario cannot run (a peer whose install failed): reported, not run
        res.unavailable.update(extra.pop("unavailable", {}))
    reps = mod.reps(opts) if hasattr(mod, "reps") else opts.reps  # peer_files: --peer-reps
    for rep in range(reps):
        for point in points:
            for series in point.series:
                if series in res.unavailable:
                    continue
                if series == "0.4.7" and not opts.python047:
                    res.unavailable[series] = "0.4.7 virtualenv not available"
                    continue
                params = {**point.params, **extra}
                try:
                    metrics = measure(mod, series, params, opts)
                except (RuntimeError, subprocess.TimeoutExpired) as exc:
                    # a failed measurement is reported and left out; the other repetitions go on
                    res.failures.setdefault(f"{point.label} {series}", []).append(str(exc)[:1500])
                    print(f"  ! {point.label} {series}: {str(exc)[:1500]}", flush=True)
                    continue
                slot = res.data.setdefault(point.label, {}).setdefault(series, {})
                for key, value in metrics.items():
                    if isinstance(value, (int, float)) and not isinstance(value, bool):
                        slot.setdefault(key, []).append(float(value))
                sec = metrics.get("seconds")
                print(
                    f"  rep {rep + 1}/{reps} {point.label:>14} {series:<12} {sec:.4f} s"
                    if sec is not None
                    else "",
                    flush=True,
                )
    for point in points:
        for series in point.series:
            failed = res.failures.get(f"{point.label} {series}")
            if failed and not res.data.get(point.label, {}).get(series):
                res.unavailable[series] = "every measurement failed: " + failed[-1][:400]
    if hasattr(mod, "cleanup"):
        mod.cleanup(opts, extra)
    return res


# ---------------------------------------------------------------------- output
def fmt_s(v: float) -> str:
    return f"{v * 1000:.1f} ms" if v < 1 else f"{v:.3f} s"


def print_table(res: ScenarioResult, title: str, verdicts: list[Verdict]) -> None:
    print(f"\n== {res.name}: {title}")
    metric_names = [
        "seconds",
        "jobs_per_s",
        "requests_per_job",
        "peak_rss_mb",
        "ready_extra_mb",
        "keyset_mb",
        "import_seconds",
        "list_pages",
        "full_pages",
        "refresh_listings",
    ]
    for point in res.points:
        for series in point.series:
            if series in res.unavailable and not res.data.get(point.label, {}).get(series):
                print(f"  {point.label:>14} {series:<12} n/a: {res.unavailable[series]}")
                continue
            slot = res.data.get(point.label, {}).get(series, {})
            parts = []
            for metric in metric_names:
                values = slot.get(metric)
                if not values or (metric == "seconds" and res.name in ("ready_rss",)):
                    continue
                st = Stats(values)
                if metric in ("seconds", "import_seconds"):
                    parts.append(f"{metric}: {fmt_s(st.median)} [{fmt_s(st.min)}-{fmt_s(st.max)}]")
                else:
                    parts.append(f"{metric}: {st.median:.1f} [{st.min:.1f}-{st.max:.1f}]")
            r = ratio(res.median(point.label, series), res.median(point.label, "ours"))
            rtxt = (
                f"  time/ours: {r:.2f}x"
                if r is not None and series not in ("ours", "python", "keyset")
                else ""
            )
            print(
                f"  {point.label:>14} {series:<12} n={len(slot.get('seconds', []))}  "
                + "; ".join(parts)
                + rtxt
            )
    for what, errors in res.failures.items():
        print(f"  FAILED {len(errors)}x: {what}: {errors[-1][-300:]}")
    mod = importlib.import_module(f"benchmarks.scenarios.{res.name}")
    if hasattr(mod, "table_lines"):  # a scenario's own table (peer_files)
        for line in mod.table_lines(res):
            print(line)
    for v in verdicts:
        mark = {True: "MET", False: "NOT MET", None: "--"}[v.met]
        print(f"  target: {v.target:<42} {v.value:<50} {mark}")


def plot(results: list[ScenarioResult], out: str) -> str:
    try:
        import matplotlib
    except ImportError:
        try:
            subprocess.run(
                [sys.executable, "-m", "pip", "install", "-q", "matplotlib"], check=True, capture_output=True
            )
            import matplotlib
        except (subprocess.CalledProcessError, ImportError, OSError) as exc:
            return f"no plot: matplotlib is not installed and could not be installed ({exc})"
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    wanted = [
        r for r in results if r.name in ("memory_jobs", "noop_scaling", "file_jobs", "noop_chain") and r.data
    ]
    if not wanted:
        return "no plot: no scaling scenario was run"
    fig, axes = plt.subplots(1, len(wanted), figsize=(5 * len(wanted), 4), squeeze=False)
    for ax, res in zip(axes[0], wanted, strict=False):
        series = sorted({s for p in res.points for s in p.series}, key=lambda s: (s != "ours", s))
        for s in series:
            xs, ys, lo, hi = [], [], [], []
            for p in res.points:
                st = res.stats(p.label, s)
                if st:
                    xs.append(p.x)
                    ys.append(st.median)
                    lo.append(st.median - st.min)
                    hi.append(st.max - st.median)
            if xs:
                ax.errorbar(xs, ys, yerr=[lo, hi], marker="o", capsize=3, label=s)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("jobs" if "jobs" in res.name else "keys")
        ax.set_ylabel("seconds (median, min-max)")
        ax.set_title(res.name)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    return f"plot written to {out}"


# ---------------------------------------------------------------------- main
def positive_seconds(text: str) -> float:
    """A number of seconds above 0 (``--peer-budget``)."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"not a number of seconds above 0: {text!r}")
    return value


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m benchmarks", description=__doc__.split("\n\n")[1] if __doc__ else None
    )
    ap.add_argument(
        "--quick", action="store_true", help="small sizes, 1 repetition, no 0.4.7 unless --baseline-047"
    )
    ap.add_argument("--only", nargs="+", metavar="NAME", choices=SCENARIOS, help="run only these scenarios")
    ap.add_argument("--reps", type=int, help="repetitions (default 5, quick 1)")
    ap.add_argument(
        "--size",
        type=int,
        metavar="N",
        help="N objects or keys per run in the scenarios that take a size (s3_shared_state, s3_listing; kube_pods: default 1,000, quick 10)",
    )
    ap.add_argument("--json", metavar="OUT", help="write all measurements to this JSON file")
    ap.add_argument(
        "--plot", metavar="OUT", help="draw the scaling curves into this PNG (installs matplotlib if needed)"
    )
    ap.add_argument(
        "--profile",
        metavar="NAME",
        choices=SCENARIOS,
        help="cProfile our series of NAME at its largest size and print the top entries",
    )
    ap.add_argument(
        "--baseline-047",
        dest="baseline_047",
        action="store_true",
        default=None,
        help="include pydatatask 0.4.7",
    )
    ap.add_argument(
        "--no-baseline-047", dest="baseline_047", action="store_false", help="skip pydatatask 0.4.7"
    )
    ap.add_argument(
        "--tmp",
        metavar="DIR",
        help="make the scenarios' files under DIR (default: the system's temporary directory); "
        "a tmpfs such as /dev/shm measures the software without the disk",
    )
    ap.add_argument(
        "--peers",
        dest="peers",
        action="store_true",
        default=None,
        help="include Luigi, Snakemake and Prefect in peer_files (default: yes, except with --quick)",
    )
    ap.add_argument("--no-peers", dest="peers", action="store_false", help="skip the peers of peer_files")
    ap.add_argument(
        "--peer-sizes",
        nargs="+",
        type=int,
        metavar="N",
        help="job counts of peer_files (default: 1000 10000)",
    )
    ap.add_argument(
        "--peer-reps",
        type=int,
        metavar="N",
        default=1,
        help="repetitions of peer_files (default 1: at 10,000 jobs one takes 20-30 minutes)",
    )
    ap.add_argument(
        "--peer-budget",
        type=positive_seconds,
        metavar="SECONDS",
        default=300.0,
        help="time one run of a peer may take before it counts as not finished (default 300)",
    )
    args = ap.parse_args(argv)

    opts = Options(quick=args.quick, reps=args.reps or (1 if args.quick else 5), size=args.size)
    opts.with_047 = args.baseline_047 if args.baseline_047 is not None else not args.quick
    opts.with_peers = args.peers if args.peers is not None else not args.quick
    if args.peer_sizes:
        opts.peer_sizes = tuple(args.peer_sizes)
    opts.peer_budget = args.peer_budget
    opts.peer_reps = args.peer_reps
    info = machine()
    print(
        f"machine: {info['cores']} cores, {info['cpu']}, {info['memory']}, Python {info['python']}, load {info['load_average']}"
    )
    print(
        f"{'quick' if opts.quick else 'full'} run, {opts.reps} repetition(s), pydatatask 0.4.7 baseline: {'yes' if opts.with_047 else 'no'}"
    )
    if "peer_files" in (args.only or SCENARIOS):
        print(
            "peers (Luigi, Snakemake, Prefect): "
            + (
                f"yes, {'/'.join(map(str, opts.peer_sizes))} jobs, {opts.peer_reps} repetition(s),"
                f" budget {opts.peer_budget:g} s per run"
                if opts.with_peers
                else "no"
            )
        )
    notes: list[str] = []
    installs: dict[str, float] = {}
    if opts.with_047:
        opts.python047, why = venv_047()
        if opts.python047 is None:
            notes.append(why)
            print(f"0.4.7 baseline unavailable: {why}")
    if opts.with_peers and "peer_files" in (args.only or SCENARIOS):
        for dist, version in PEERS.values():
            python, why, seconds = pinned_venv(dist, version)
            opts.peer_pythons[dist] = (python, why)
            if python is None:
                notes.append(why)
                print(f"{dist} {version} unavailable: {why}")
            if seconds is not None:
                installs[dist] = seconds
            if python is not None and seconds is None:
                print(f"{dist} {version}: virtualenv already there ({python})")
    tmp = tempfile.mkdtemp(prefix="pdt-bench-", dir=args.tmp)
    print(f"scenario files under {tmp}")
    os.environ["PDT_BENCH_TMP"] = tmp
    names = args.only or list(SCENARIOS)
    results: list[ScenarioResult] = []
    verdicts: dict[str, list[Verdict]] = {}
    profiles: dict[str, Any] = {}
    t_start = time.perf_counter()
    try:
        if args.profile:
            mod = importlib.import_module(f"benchmarks.scenarios.{args.profile}")
            point = mod.points(opts)[-1]
            extra = mod.prepare(opts) if hasattr(mod, "prepare") else {}
            if isinstance(extra, str):
                print(f"cannot profile {args.profile}: {extra}")
                return 1
            metrics = measure(mod, "ours", {**point.params, **extra}, opts, {"PDT_BENCH_PROFILE": "1"})
            rows = metrics.get("profile") or []
            profiles[args.profile] = rows
            print(f"\n== profile of ours in {args.profile} ({point.label}), top by tottime")
            print(f"  {'tottime':>9} {'cumtime':>9} {'calls':>9}  function")
            for row in rows:
                print(f"  {row['tottime']:9.3f} {row['cumtime']:9.3f} {row['ncalls']:>9}  {row['function']}")
            if hasattr(mod, "cleanup"):
                mod.cleanup(opts, extra)
            if not args.only:
                names = []
        for name in names:
            mod = importlib.import_module(f"benchmarks.scenarios.{name}")
            print(f"\n-- {name} ...", flush=True)
            res = run_scenario(mod, opts)
            results.append(res)
            verdicts[name] = mod.verdicts(res)
            print_table(res, mod.TITLE, verdicts[name])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    total = time.perf_counter() - t_start
    if results:
        print("\n==================== summary")
        for res in results:
            print_table(
                res, importlib.import_module(f"benchmarks.scenarios.{res.name}").TITLE, verdicts[res.name]
            )
    print(f"\ntotal time: {total:.1f} s")
    if args.plot:
        print(plot(results, args.plot))
    if args.json:
        doc = {
            "machine": info,
            "options": {"quick": opts.quick, "reps": opts.reps, "baseline_047": opts.with_047},
            "peers": {
                "included": opts.with_peers,
                "versions": {dist: version for dist, version in PEERS.values()},
                "sizes": list(opts.peer_sizes),
                "budget_seconds": opts.peer_budget,
                "reps": opts.peer_reps,
                "install_seconds": installs,
            },
            "total_seconds": total,
            "notes": notes,
            "profiles": profiles,
            "scenarios": {
                r.name: {
                    "points": [
                        {"label": p.label, "x": p.x, "params": p.params, "series": p.series} for p in r.points
                    ],
                    "data": r.data,
                    "medians": {
                        p: {s: {m: Stats(v).median for m, v in ms.items()} for s, ms in ss.items()}
                        for p, ss in r.data.items()
                    },
                    "unavailable": r.unavailable,
                    "failures": r.failures,
                    "targets": [
                        {"target": v.target, "value": v.value, "met": v.met} for v in verdicts[r.name]
                    ],
                }
                for r in results
            },
        }
        Path(args.json).write_text(json.dumps(doc, indent=1))
        print(f"JSON written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
