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
import subprocess
import sys
import time
from pathlib import Path

import pytest

from benchmarks.scenarios import SCENARIOS

ROOT = Path(__file__).resolve().parent.parent
BUDGET = 150.0  # seconds; a quick run takes well under a minute on an idle 2-core machine


@pytest.mark.s3
@pytest.mark.timeout(BUDGET + 30)
def test_quick_run_reports_every_scenario(tmp_path: Path, services: dict[str, object]) -> None:
    out = tmp_path / "bench.json"
    t0 = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--no-baseline-047", "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=BUDGET,
    )
    elapsed = time.monotonic() - t0
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
    assert elapsed < BUDGET


def test_help_lists_the_options() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    for option in ("--quick", "--only", "--reps", "--json", "--plot", "--profile", "--no-baseline-047"):
        assert option in proc.stdout
