"""``serve``, ``run --serve`` and ``--log-format json`` through the command line, in
subprocesses on the CLI's demo pipeline (files and YAML records)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "tests" / "cli" / "demo_pipeline.py"


def data_dir(tmp_path: Path, keys: dict[str, str]) -> Path:
    (tmp_path / "src").mkdir()
    for key, text in keys.items():
        (tmp_path / "src" / f"{key}.txt").write_text(text)
    return tmp_path


def env(data: Path, **more: str) -> dict[str, str]:
    return {**os.environ, "PDT_CLI_DATA": str(data), **more}


class Started:
    """A command of the demo pipeline that serves the page: its process, the page's URL and
    its stderr lines (a thread keeps reading them)."""

    def __init__(
        self, data: Path, *args: str, script: Path = DEMO, environ: dict[str, str] | None = None, **more: str
    ) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(script), *args],
            env={**(environ or env(data)), **more},
            stderr=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            text=True,
        )
        assert self.proc.stderr is not None
        self.lines: list[str] = []
        self.url = ""
        for line in self.proc.stderr:
            self.lines.append(line)
            found = re.match(r"serving the page at (http://\S+)", line)
            if found:
                self.url = found.group(1)
                break
        self.reader = threading.Thread(target=self._drain, daemon=True)
        self.reader.start()
        assert self.url, self.stderr()

    def _drain(self) -> None:
        assert self.proc.stderr is not None
        self.lines.extend(self.proc.stderr)

    def stderr(self) -> str:
        return "".join(self.lines)

    def wait(self, signum: int | None = None) -> int:
        """Its exit status (after sending ``signum``)."""
        if signum is not None:
            self.proc.send_signal(signum)
        code = self.proc.wait(timeout=60)
        self.reader.join(timeout=10)
        assert self.proc.stderr is not None
        self.proc.stderr.close()
        return code


def get(url: str, path: str) -> Any:
    with urllib.request.urlopen(url.split("#")[0].rstrip("/") + path, timeout=30) as r:
        return json.loads(r.read())


def test_serve_until_sigterm(tmp_path: Path) -> None:
    data = data_dir(tmp_path, {"a": "one two", "b": "fail here"})
    done = subprocess.run(
        [sys.executable, str(DEMO), "run"], env=env(data), capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 1, done.stderr
    served = Started(data, "serve", "--port", "0")
    url = served.url
    try:
        assert url.startswith("http://127.0.0.1:") and not url.endswith(":0/")
        status = get(url, "/api/status")
        assert status["tasks"]["upper"]["counts"]["succeeded"] == 1
        assert status["tasks"]["upper"]["counts"]["failed"] == 1
        job = get(url, "/api/job?task=upper&key=b")
        assert "ValueError: b asked to fail" in job["record"]["error"]["traceback"]
        assert get(url, "/api/log?task=count&key=a")["size"] > 0
    finally:
        assert served.wait(signal.SIGTERM) == 128 + signal.SIGTERM, served.stderr()


def test_run_serve_shows_the_live_run(tmp_path: Path) -> None:
    data = data_dir(tmp_path, {f"k{i}": f"text {i}" for i in range(6)})
    served = Started(data, "run", "--serve", "127.0.0.1:0", "--max-jobs", "2", PDT_CLI_SLEEP="0.4")
    status = get(served.url, "/api/status")
    while status["source"] == "starting":  # the scheduler lists the repositories first
        status = get(served.url, "/api/status")
    assert status["source"] == "scheduler", status
    counts = status["tasks"]["upper"]["counts"]
    assert counts["succeeded"] < 6 and counts["ready"] + counts["running"] + counts["succeeded"] == 6, counts
    assert 0 < counts["running"] <= 2
    assert served.wait() == 0, served.stderr()


def test_serve_usage_errors(tmp_path: Path) -> None:
    data = data_dir(tmp_path, {"a": "x"})
    for args, message in (
        (["serve", "--port", "70000"], "port 70000 is outside 0..65535"),
        (["run", "--serve", "host:port"], "'host:port' is not [HOST:]PORT (the port is not a number)"),
        (["run", "--allow-actions"], "--allow-actions goes with --serve [HOST:]PORT"),
    ):
        done = subprocess.run(
            [sys.executable, str(DEMO), *args], env=env(data), capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 2, (args, done.stderr)
        assert done.stderr.count("\n") == 1 and message in done.stderr, done.stderr


def test_json_logs_with_per_job_events(tmp_path: Path) -> None:
    data = data_dir(tmp_path, {"a": "one two", "b": "fail here"})
    done = subprocess.run(
        [sys.executable, str(DEMO), "-v", "--log-format", "json", "run", "--no-status"],
        env=env(data),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1, done.stderr
    events = [json.loads(line) for line in done.stderr.splitlines()]  # every line is one JSON object
    jobs = [e for e in events if e["logger"] == "pydatatask.jobs"]
    ended = {(e["task"], e["key"]): e for e in jobs if e["state"] in ("succeeded", "failed")}
    assert set(ended) == {("upper", "a"), ("upper", "b"), ("count", "a")}
    failed = ended[("upper", "b")]
    assert failed["state"] == "failed" and failed["error_type"] == "ValueError" and failed["attempt"] == 1
    assert failed["level"] == "info" and isinstance(failed["duration"], float)
    assert ended[("count", "a")]["error_type"] is None
    started = [(e["task"], e["key"]) for e in jobs if e["state"] == "running"]
    assert sorted(started) == [("count", "a"), ("upper", "a"), ("upper", "b")]
    assert any(e["level"] == "warning" and "failed after 1 attempt" in e["message"] for e in events)
    # without -v: no per-job events; the human format stays the default
    quiet = subprocess.run(
        [sys.executable, str(DEMO), "run"], env=env(data), capture_output=True, text=True, timeout=60
    )
    assert "pydatatask.jobs" not in quiet.stderr and not quiet.stderr.lstrip().startswith("{")
