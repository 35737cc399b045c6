"""The benchmark runner must keep working: ``python -m benchmarks --quick`` in CI.

Thresholds are never asserted here (the issue: benchmarks are not timed tests); this
checks that every scenario ran and produced numbers, within a time budget. The quick run
leaves out the pydatatask 0.4.7 baseline (``--no-baseline-047``): creating its
virtualenv downloads a few hundred MB of dependencies and takes minutes. The 0.4.7
scripts are exercised by the full run (``python -m benchmarks``), checked by hand.
The S3 scenario needs the S3 test server (``scripts/test-services``), like the S3 tests.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.__main__ import run_scenario
from benchmarks.scenarios import SCENARIOS, Options, Point, ScenarioResult, peer_files

ROOT = Path(__file__).resolve().parent.parent
#: seconds before a quick run counts as hung (it takes well under a minute on an idle 2-core
#: machine, several under a loaded one: a guard against a hang, not a speed goal, which
#: the benchmarks report themselves)
BUDGET = 600.0


@pytest.mark.s3
@pytest.mark.timeout(BUDGET + 30)
def test_quick_run_reports_every_scenario(tmp_path: Path, services: dict[str, object]) -> None:
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--no-baseline-047", "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=BUDGET,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "machine:" in proc.stdout and "cores" in proc.stdout
    doc = json.loads(out.read_text())
    assert doc["options"] == {"quick": True, "reps": 1, "baseline_047": False}
    assert set(doc["scenarios"]) == set(SCENARIOS)
    for name, scen in doc["scenarios"].items():
        assert not scen["unavailable"], (name, scen["unavailable"])
        assert not scen["failures"], (name, scen["failures"])
        for point in scen["points"]:
            medians = scen["medians"][point["label"]]
            for series in point["series"]:
                values = medians[series]
                assert values, (name, series)
                assert all(isinstance(v, float) and math.isfinite(v) for v in values.values()), (
                    name,
                    series,
                    values,
                )
        assert scen["targets"], name


def test_help_lists_the_options() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    for option in (
        "--quick",
        "--only",
        "--reps",
        "--json",
        "--plot",
        "--profile",
        "--no-baseline-047",
        "--peers",
        "--no-peers",
        "--peer-sizes",
        "--peer-reps",
        "--peer-budget",
    ):
        assert option in proc.stdout


# ---------------------------------------------------------------------- peers (peer_files)
# The peers' own drivers need their virtualenvs (Prefect's alone installs in minutes and
# starts its server in a minute or more on this machine kind), so these tests run our
# driver through the same machinery and check the table and ratio code on given figures.


def _peer_result(data: dict[str, dict[str, list[float]]], unavailable: dict[str, str]) -> ScenarioResult:
    series = ["ours", *peer_files.PEER_SERIES]
    res = ScenarioResult("peer_files", [Point("1000 jobs", 1000, {"n": 1000, "budget": 300.0}, series)])
    res.data["1000 jobs"] = data
    res.unavailable.update(unavailable)
    return res


def test_peer_ratios_take_the_best_peer_of_each_column() -> None:
    done = {"finished": [1.0]}
    res = _peer_result(
        {
            "ours": {
                "jobs_per_s": [400.0, 300.0, 500.0],
                "noop_seconds": [0.1],
                "peak_rss_mb": [30.0],
                **done,
            },
            "luigi-w1": {"jobs_per_s": [50.0], "noop_seconds": [0.2], "peak_rss_mb": [25.0], **done},
            "luigi-w2": {"jobs_per_s": [10.0], "noop_seconds": [0.4], "peak_rss_mb": [80.0], **done},
            # did not finish: its rate counts, its no-op time (of a partial run) does not
            "snakemake-c2": {
                "jobs_per_s": [2.0],
                "noop_seconds": [0.01],
                "jobs_done": [600.0],
                "finished": [0.0],
            },
            "prefect-tp": {"jobs_per_s": [20.0], "noop_seconds": [0.05], "peak_rss_mb": [400.0], **done},
        },
        {},
    )
    assert peer_files.column_ratio(res, "1000 jobs", "throughput") == (400.0 / 50.0, "luigi-w1")
    assert peer_files.column_ratio(res, "1000 jobs", "no-op time") == (0.05 / 0.1, "prefect-tp")
    assert peer_files.column_ratio(res, "1000 jobs", "peak RSS") == (25.0 / 30.0, "luigi-w1")
    verdicts = peer_files.verdicts(res)
    assert [(v.met, v.value) for v in verdicts] == [
        (False, "8.00x (best peer: luigi-w1)"),
        (False, "0.50x (best peer: prefect-tp)"),
        (False, "0.83x (best peer: luigi-w1)"),
    ]
    text = "\n".join(peer_files.table_lines(res))
    assert "snakemake-c2  did not finish in 300 s (600 of 1000 jobs done, 2.0 jobs/s)" in text
    assert "400.0 [300.0-500.0]" in text  # median and spread of ours


def test_peer_target_met_and_missing_figures() -> None:
    done = {"finished": [1.0]}
    res = _peer_result(
        {
            "ours": {"jobs_per_s": [1000.0], "noop_seconds": [0.01], "peak_rss_mb": [30.0], **done},
            "luigi-w1": {"jobs_per_s": [100.0], "noop_seconds": [0.1], "peak_rss_mb": [300.0], **done},
        },
        {"prefect-tp": "could not install prefect==3.9.1: no matching distribution"},
    )
    assert [v.met for v in peer_files.verdicts(res)] == [True, True, True]
    lines = peer_files.table_lines(res)
    assert any("prefect-tp" in line and "n/a: could not install prefect==3.9.1" in line for line in lines)
    empty = _peer_result({"ours": {"jobs_per_s": [1.0], **done}}, {})
    assert [v.met for v in peer_files.verdicts(empty)] == [None, None, None]


def test_peer_scenario_runs_ours_and_reports_a_failed_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The runner's path end to end at 50 jobs: our driver measured (a run, then the
    no-op run), every peer whose virtualenv could not be made listed with the reason."""
    monkeypatch.setenv("PDT_BENCH_TMP", str(tmp_path))
    opts = Options(quick=True, reps=1, with_047=False, with_peers=True)
    opts.peer_pythons = {
        dist: (None, f"could not install {dist}=={version}: pip exited 1")
        for dist, version in (("luigi", "3.8.1"), ("snakemake", "9.27.1"), ("prefect", "3.9.1"))
    }
    res = run_scenario(peer_files, opts)
    assert not res.failures
    assert set(res.unavailable) == set(peer_files.PEER_SERIES)
    assert res.unavailable["luigi-w2"] == "could not install luigi==3.8.1: pip exited 1"
    assert res.unavailable["prefect-tp"] == "could not install prefect==3.9.1: pip exited 1"
    ours = res.data["50 jobs"]["ours"]
    assert ours["finished"] == [1.0] and ours["jobs_done"] == [50.0]
    for metric in ("seconds", "jobs_per_s", "noop_seconds", "peak_rss_mb", "peak_pss_mb", "wall_seconds"):
        assert math.isfinite(ours[metric][0]) and ours[metric][0] > 0, metric
    assert ours["peak_pss_mb"][0] <= ours["peak_rss_mb"][0]
    assert ours["noop_seconds"][0] < ours["wall_seconds"][0]
    lines = peer_files.table_lines(res)
    assert sum("n/a: could not install luigi==3.8.1" in line for line in lines) == 2  # both Luigi series
    assert list(tmp_path.iterdir()) == []  # the run's directory is removed


def test_a_driver_past_its_budget_is_killed_and_its_outputs_counted(tmp_path: Path) -> None:
    n = 3000
    peer_files.make_inputs(tmp_path, n)
    argv, env = peer_files.driver_command("ours", tmp_path, {})
    run = peer_files.run_driver(argv, env, tmp_path, 0.2, "run")
    assert not run.finished
    assert run.result == {}  # killed before it printed its result
    assert 0 <= peer_files.count_outputs(tmp_path) < n
    # the whole process group is gone: no driver left running over the directory
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                assert os.readlink(f"/proc/{pid}/cwd") != str(tmp_path), pid
            except OSError:
                continue
