"""The command line on stale keys: the ``stale`` column of ``status`` (human and
``--json``), ``why`` naming what changed, ``run --rerun-stale``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pydatatask.cli import run_cli

from ..task.stale_pipeline import build
from ..task.stale_support import runs


def cli(
    data: Path, capsys: pytest.CaptureFixture[str], *argv: str, version: str | None = None
) -> tuple[int, str]:
    capsys.readouterr()
    code = run_cli(build(data, version=version), list(argv))
    out, _err = capsys.readouterr()
    return code, out


def write(data: Path, **values: str) -> None:
    (data / "src").mkdir(parents=True, exist_ok=True)
    for key, value in values.items():
        (data / "src" / f"{key}.txt").write_text(value)


def test_status_why_and_rerun_stale(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write(tmp_path, k1="one", k2="two", k3="three")
    assert cli(tmp_path, capsys, "run", "--json")[0] == 0
    write(tmp_path, k2="second")
    (tmp_path / "out" / "k3.txt").unlink()

    code, out = cli(tmp_path, capsys, "status")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split()[-1] == "stale"
    assert lines[1].split() == ["upper", "0", "0", "0", "3", "0", "0", "0", "0", "1"]
    assert lines[2].split() == ["mark", "0", "0", "0", "3", "0", "0", "0", "0", "2"]  # k2: stale upstream
    assert "upper stale (1): k2" in out and "mark stale (2): k2, k3" in out
    assert "  k2: what it reads is stale upstream (task 'upper')" in out
    assert "  k2: input 'src' changed: " in out
    assert "  k3: output 'out' (files at " in out and "no longer has 'k3'" in out

    code, out = cli(tmp_path, capsys, "status", "--json")
    status = json.loads(out)
    assert status["upper"]["counts"]["stale"] == 1 and status["upper"]["stale"] == ["k2"]
    (reason,) = status["upper"]["stale_details"]["k2"]
    assert reason["kind"] == "input" and reason["link"] == "src" and reason["old"] != reason["new"]

    code, out = cli(tmp_path, capsys, "why", "upper", "k2")
    assert code == 0
    assert f"input 'src' changed: {reason['old']} -> {reason['new']}" in out

    code, out = cli(tmp_path, capsys, "why", "upper", "k1", "--json", version="2")
    assert code == 0
    reasons = json.loads(out)["reasons"]
    assert reasons and not [r for r in reasons if r.startswith("stale")]  # None: unknown, not changed

    before = len(runs(tmp_path))
    code, out = cli(tmp_path, capsys, "run", "--json")
    assert code == 0 and json.loads(out)["succeeded"] == 0  # never without being asked
    code, out = cli(tmp_path, capsys, "run", "--rerun-stale", "--json")
    assert code == 0 and json.loads(out)["succeeded"] == 3, out
    assert sorted(runs(tmp_path)[before:]) == [("mark", "k2"), ("mark", "k3"), ("upper", "k2")]
    assert (tmp_path / "out" / "k2.txt").read_text() == "SECOND!"
    assert (tmp_path / "out" / "k3.txt").read_text() == "THREE!"
    code, out = cli(tmp_path, capsys, "status", "--json")
    assert all(s["counts"]["stale"] == 0 for s in json.loads(out).values())
