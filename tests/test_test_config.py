"""The project's own test configuration reports failures instead of crashing on them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_a_failing_hypothesis_example_is_reported_not_an_internal_error(tmp_path: Path) -> None:
    (tmp_path / "test_falsified.py").write_text(
        "from hypothesis import given, strategies as st\n"
        "import mypy_extensions  # noqa: F401  (the suite's mypy runs import it)\n\n"
        "@given(st.text())\n"
        "def test_short(s):\n"
        "    assert len(s) < 3\n"
    )
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-c",
            str(ROOT / "pyproject.toml"),
            "--rootdir",
            str(tmp_path),
            str(tmp_path / "test_falsified.py"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    out = run.stdout + run.stderr
    assert "INTERNALERROR" not in out, out[-3000:]
    assert "1 failed" in out and "Falsifying example" in out, out[-3000:]
