"""The command line: every subcommand in-process through ``run_cli``, the important ones
through a real subprocess, and crash/interrupt recovery (SIGKILL, SIGTERM) end to end."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

import pydatatask
from pydatatask import MemoryBlobRepository, Session
from pydatatask.cli import run_cli
from pydatatask.pipeline import Pipeline
from pydatatask.task import FunctionTask

from .demo_pipeline import build_pipeline

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "tests" / "cli" / "demo_pipeline.py"
EXAMPLE = ROOT / "examples" / "documents" / "pipeline.py"
KEYS = [f"k{i}" for i in range(1, 6)]


# ---------------------------------------------------------------- fixtures and helpers
def write_sources(data: Path, keys: list[str], extra: dict[str, str] | None = None) -> None:
    (data / "src").mkdir(parents=True, exist_ok=True)
    for key in keys:
        (data / "src" / f"{key}.txt").write_text(f"hello world {key}\n")
    for key, text in (extra or {}).items():
        (data / "src" / f"{key}.txt").write_text(text)


@pytest.fixture
def data(tmp_path: Path) -> Path:
    write_sources(tmp_path, KEYS)
    return tmp_path


@pytest.fixture
def pipeline(data: Path) -> Iterator[Pipeline]:
    p = build_pipeline(data)
    yield p
    p.tasks["upper"].executor.pool.shutdown()  # type: ignore[attr-defined]


class Cli:
    """``run_cli`` with captured output: returns (exit status, stdout, stderr)."""

    def __init__(self, pipeline: Pipeline, capsys: pytest.CaptureFixture[str]) -> None:
        self.pipeline = pipeline
        self.capsys = capsys

    def __call__(self, *argv: str) -> tuple[int, str, str]:
        self.capsys.readouterr()
        code = run_cli(self.pipeline, list(argv))
        out, err = self.capsys.readouterr()
        return code, out, err

    def json(self, *argv: str) -> Any:
        code, out, err = self(*argv, "--json")
        assert code == 0, err
        return json.loads(out)


@pytest.fixture
def cli(pipeline: Pipeline, capsys: pytest.CaptureFixture[str]) -> Cli:
    return Cli(pipeline, capsys)


def assert_one_line_error(err: str, *fragments: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: "), err
    assert "Traceback" not in err
    for f in fragments:
        assert f in lines[0], err


def set_stdin(monkeypatch: pytest.MonkeyPatch, data: bytes) -> None:
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data)))


def env_for(data: Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["PDT_CLI_DATA"] = str(data)
    env.update(extra)
    return env


def demo(data: Path, *argv: str, timeout: float = 30, **kw: Any) -> subprocess.CompletedProcess[str]:
    kw.setdefault("stdin", subprocess.DEVNULL)
    return subprocess.run(
        [sys.executable, str(DEMO), *argv],
        env=env_for(data),
        capture_output=True,
        text=True,
        timeout=timeout,
        **kw,
    )


# ---------------------------------------------------------------- run
def test_run_json_then_rerun_does_nothing(cli: Cli) -> None:
    first = cli.json("run")
    assert first["ok"] is True
    assert first["per_task"] == {
        "upper": {"succeeded": 5, "failed": 0},
        "count": {"succeeded": 5, "failed": 0},
    }
    again = cli.json("run")
    assert again["succeeded"] == 0 and again["ok"] is True


def test_run_human_output_has_summary_and_status_table(cli: Cli, data: Path) -> None:
    code, out, err = cli("run")
    assert code == 0, err
    assert "10 job(s) succeeded, 0 failed" in out
    lines = out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.split()[:2] == ["task", "ready"])
    assert lines[header + 1].split() == ["upper", "0", "0", "0", "5", "0", "0", "0", "0", "0"]
    assert lines[header + 2].split() == ["count", "0", "0", "0", "5", "0", "0", "0", "0", "0"]
    assert yaml.safe_load((data / "counts" / "k1.yaml").read_text()) == {"words": 3, "chars": 15}


def test_run_with_a_failed_job_exits_1_and_explains(cli: Cli, data: Path) -> None:
    write_sources(data, [], {"bad": "please fail\n"})
    code, out, err = cli("run")
    assert code == 1
    assert "1 failed" in out
    assert "upper failed (1): bad" in out
    assert "bad asked to fail" in err  # the failure is logged once, on stderr
    code, out, _ = cli("why", "count", "bad")
    assert code == 0
    assert "upstream task 'upper' has no success record for 'bad' (failed)" in out


def test_run_only_selected_task_and_options(cli: Cli) -> None:
    summary = cli.json("run", "--task", "upper", "--max-jobs", "1", "--timeout", "1m", "--grace", "2s")
    assert summary["per_task"] == {"upper": {"succeeded": 5, "failed": 0}}
    status = cli.json("status")
    assert status["count"]["counts"]["ready"] == 5


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["run", "--task", "nope"], "no task named 'nope'"),
        (["run", "--max-jobs", "0"], "at least 1"),
        (["run", "--timeout", "soon"], "--timeout"),
        (["frobnicate"], "invalid choice"),
        ([], "required"),
    ],
)
def test_usage_errors_exit_2_with_one_line(cli: Cli, argv: list[str], fragment: str) -> None:
    code, out, err = cli(*argv)
    assert code == 2
    assert out == ""
    assert_one_line_error(err, fragment)


def test_help_exits_0(cli: Cli) -> None:
    for argv in (["--help"], ["run", "--help"], ["rm", "--help"], ["inject", "--help"]):
        code, out, _ = cli(*argv)
        assert code == 0
        assert "usage:" in out


# ---------------------------------------------------------------- status
def test_status_table_samples_and_all(cli: Cli, data: Path) -> None:
    write_sources(data, [f"x{i}" for i in range(10)])
    code, out, _ = cli("status")
    assert code == 0
    assert out.splitlines()[1].split() == ["upper", "15", "0", "0", "0", "0", "0", "0", "0", "0"]
    assert "upper ready (15): k1, k2, k3, k4, k5, ... (+10 more)" in out
    code, out, _ = cli("status", "upper", "--all")
    assert "count" not in out
    assert "upper ready (15): " + ", ".join(sorted(KEYS + [f"x{i}" for i in range(10)])) in out


def test_status_json_counts_and_keys(cli: Cli) -> None:
    before = cli.json("status")
    assert before["upper"]["counts"] == {
        "ready": 5,
        "running": 0,
        "retrying": 0,
        "succeeded": 0,
        "failed": 0,
        "blocked": 0,
        "held": 0,
        "corrupt": 0,
        "stale": 0,
    }
    assert before["upper"]["ready"] == KEYS
    cli("run")
    after = cli.json("status", "count")
    assert list(after) == ["count"]
    assert after["count"]["succeeded"] == KEYS


def test_status_unknown_task(cli: Cli) -> None:
    code, _, err = cli("status", "nope")
    assert code == 2
    assert_one_line_error(err, "no task named 'nope'", "upper, count")


# ---------------------------------------------------------------- rm
def test_rm_keys_cascade_and_nothing_to_remove(cli: Cli, data: Path) -> None:
    cli("run")
    code, out, _ = cli("rm", "upper", "k1")
    assert code == 0
    assert "removed 1 key(s) from upper.up: k1" in out
    assert "removed 1 key(s) from upper.done: k1" in out
    assert (data / "counts" / "k1.yaml").exists()
    removed = cli.json("rm", "upper", "k2", "--cascade")
    assert {(r["task"], r["link"]) for r in removed} >= {
        ("upper", "up"),
        ("count", "counts"),
        ("count", "done"),
    }
    assert not (data / "counts" / "k2.yaml").exists()
    code, out, err = cli("rm", "upper", "k2")
    assert (code, out) == (1, "")
    assert_one_line_error(err, "nothing to remove", "'k2'")
    summary = cli.json("run")
    assert summary["per_task"]["upper"]["succeeded"] == 2  # k1 and k2 again
    assert summary["per_task"]["count"]["succeeded"] == 1  # k2 (k1's count was kept)


def test_rm_all_refuses_without_tty_or_yes(cli: Cli, data: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cli("run")
    set_stdin(monkeypatch, b"y\n")  # not a terminal: nobody can confirm
    code, out, err = cli("rm", "upper", "--all")
    assert code == 1
    assert_one_line_error(err, "--yes")
    assert len(list((data / "up").iterdir())) == 5
    code, out, _ = cli("rm", "upper", "--all", "--yes", "--cascade")
    assert code == 0
    assert list((data / "up").iterdir()) == [] and list((data / "counts").iterdir()) == []


def test_rm_all_asks_on_a_terminal(cli: Cli, data: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cli("run")
    master, slave = os.openpty()
    with os.fdopen(slave, "r") as tty, os.fdopen(master, "wb", buffering=0) as keyboard:
        monkeypatch.setattr(sys, "stdin", tty)
        keyboard.write(b"n\n")
        code, _, err = cli("rm", "upper", "--all")
        assert code == 1 and "remove every output, record and log of upper? [y/N]" in err
        assert len(list((data / "up").iterdir())) == 5
        keyboard.write(b"y\n")
        code, out, _ = cli("rm", "upper", "--all")
        assert code == 0 and "removed 5 key(s) from upper.up" in out
    assert list((data / "up").iterdir()) == []


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["rm", "upper"], "--all"),
        (["rm", "upper", "k1", "--all"], "not both"),
        (["rm", "upper", "../x"], "invalid key '../x'"),
        (["rm", "upper.nope", "k1"], "no link 'nope'"),
        (["rm", "nope", "k1"], "no task named 'nope'"),
    ],
)
def test_rm_usage_errors(cli: Cli, argv: list[str], fragment: str) -> None:
    code, _, err = cli(*argv)
    assert code == 2
    assert_one_line_error(err, fragment)


# ---------------------------------------------------------------- ls, cat
def test_ls_and_cat(cli: Cli) -> None:
    cli("run")
    code, out, _ = cli("ls", "upper.up")
    assert (code, out) == (0, "".join(k + "\n" for k in KEYS))
    assert cli.json("ls", "count.counts") == KEYS
    code, out, _ = cli("cat", "upper.up", "k1")
    assert (code, out) == (0, "HELLO WORLD K1\n")
    assert cli.json("cat", "upper.up", "k1") == {"key": "k1", "text": "HELLO WORLD K1\n"}
    code, out, _ = cli("cat", "count.counts", "k2")
    assert yaml.safe_load(out) == {"words": 3, "chars": 15}
    assert cli.json("cat", "count.done", "k2")["state"] == "succeeded"


def test_cat_errors(cli: Cli) -> None:
    code, _, err = cli("cat", "upper.up", "missing")
    assert code == 1
    assert_one_line_error(err, "'missing' not found")
    code, _, err = cli("cat", "upper.up", "../x")
    assert code == 2
    assert_one_line_error(err, "invalid key '../x'")
    code, _, err = cli("cat", "upper", "k1")
    assert code == 2
    assert_one_line_error(err, "expected TASK.LINK")
    code, _, err = cli("ls", "nope.up")
    assert code == 2
    assert_one_line_error(err, "no task named 'nope'")


# ---------------------------------------------------------------- inject
def test_inject_from_file_stdin_and_metadata(
    cli: Cli, data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = tmp_path / "new.txt"
    source.write_bytes(b"from a file\n")
    assert cli("inject", "upper.src", "from-file", str(source))[0] == 0
    assert (data / "src" / "from-file.txt").read_bytes() == b"from a file\n"
    set_stdin(monkeypatch, b"from stdin\n")
    assert cli("inject", "upper.src", "from-stdin")[0] == 0
    assert (data / "src" / "from-stdin.txt").read_bytes() == b"from stdin\n"
    set_stdin(monkeypatch, b"")
    assert cli("inject", "upper.src", "empty", "-")[0] == 0
    assert (data / "src" / "empty.txt").read_bytes() == b""
    set_stdin(monkeypatch, b"words: 7\nchars: 1\n")
    assert cli("inject", "count.counts", "k1")[0] == 0
    assert cli.json("cat", "count.counts", "k1") == {"words": 7, "chars": 1}
    assert "k1" not in cli.json("status")["count"]["ready"]  # the output now exists


def test_inject_errors(cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    code, _, err = cli("inject", "upper.src", "../x", str(tmp_path))
    assert code == 2
    assert_one_line_error(err, "invalid key '../x'")
    code, _, err = cli("inject", "upper.src", "k9", str(tmp_path / "absent"))
    assert code == 1
    assert_one_line_error(err, "cannot read")
    master, slave = os.openpty()
    with os.fdopen(slave, "r") as tty:
        monkeypatch.setattr(sys, "stdin", tty)
        code, _, err = cli("inject", "upper.src", "k9")
    os.close(master)
    assert code == 2
    assert_one_line_error(err, "stdin is a terminal")


# ---------------------------------------------------------------- launch
def test_launch(cli: Cli, data: Path) -> None:
    code, _, err = cli("launch", "count", "k1")
    assert code == 1
    assert_one_line_error(err, "not ready", "does not have 'k1'")
    code, out, _ = cli("launch", "upper", "k1")
    assert code == 0
    record = yaml.safe_load(out)
    assert record["success"] is True and record["state"] == "succeeded" and record["key"] == "k1"
    assert (data / "up" / "k1.txt").read_text() == "HELLO WORLD K1\n"
    code, _, err = cli("launch", "upper", "k1")
    assert code == 1
    assert_one_line_error(err, "not ready", "already has 'k1'")
    forced = cli.json("launch", "upper", "k1", "--force")
    assert forced["success"] is True and forced["attempts"] == 1
    assert len((data / "runs" / "upper" / "k1").read_text().splitlines()) == 2


def test_launch_failure_and_errors(cli: Cli, data: Path) -> None:
    write_sources(data, [], {"bad": "fail please\n"})
    code, out, err = cli("launch", "upper", "bad")
    assert code == 1
    assert yaml.safe_load(out)["state"] == "failed"
    assert_one_line_error(err, "failed", "bad asked to fail")
    code, _, err = cli("launch", "nope", "k1")
    assert code == 2
    assert_one_line_error(err, "no task named 'nope'")
    code, _, err = cli("launch", "upper", "k1", "--sync")  # the flag that did nothing is gone
    assert code == 2
    assert_one_line_error(err, "unrecognized arguments: --sync")


# ---------------------------------------------------------------- logs
def test_logs(cli: Cli) -> None:
    code, _, err = cli("logs", "count", "k1")
    assert code == 1
    assert_one_line_error(err, "no log for 'k1'")
    cli("run")
    code, out, _ = cli("logs", "count", "k1")
    assert code == 0 and out.endswith("counting k1\n")


def test_logs_without_a_logs_repository(capsys: pytest.CaptureFixture[str]) -> None:
    async def noop(key: str) -> None:
        return None

    p = Pipeline([FunctionTask("t", noop, inputs={"src": MemoryBlobRepository()})])
    code = run_cli(p, ["logs", "t", "k"])
    _, err = capsys.readouterr()
    assert code == 1
    assert_one_line_error(err, "no logs repository")


# ---------------------------------------------------------------- why (graph: test_cli_graph.py)
def test_why(cli: Cli) -> None:
    code, out, _ = cli("why", "upper", "k1")
    assert (code, out) == (0, "upper k1: ready\n")
    assert cli.json("why", "count", "k1")["ready"] is False
    cli("run")
    code, out, _ = cli("why", "upper", "k1")
    assert "not ready" in out
    assert "output 'up'" in out and "already has 'k1'" in out
    assert "a job record exists (succeeded)" in out
    code, _, err = cli("why", "upper", "../x")
    assert code == 2
    assert_one_line_error(err, "invalid key '../x'")


# ---------------------------------------------------------------- unexpected errors
def _on_fire() -> None:
    raise RuntimeError("the database is on fire")


def test_unexpected_error_is_one_line_unless_verbose(capsys: pytest.CaptureFixture[str]) -> None:
    session = Session()

    @session.resource
    async def broken() -> AsyncIterator[None]:
        _on_fire()
        yield None

    async def noop(key: str) -> None:
        return None

    p = Pipeline([FunctionTask("t", noop, inputs={"src": MemoryBlobRepository()})], session)
    assert run_cli(p, ["status"]) == 1
    _, err = capsys.readouterr()
    assert_one_line_error(err, "unexpected RuntimeError: the database is on fire", "-v")
    assert run_cli(p, ["status", "-v"]) == 1
    _, err = capsys.readouterr()
    assert "Traceback" in err and err.strip().splitlines()[-1].startswith("error: unexpected RuntimeError")


def test_main_is_lazy_and_exits(tmp_path: Path) -> None:
    code = (
        "import sys, pydatatask; assert 'rich' not in sys.modules and 'pydatatask.cli' not in sys.modules; "
        "from pydatatask import main; assert 'rich' not in sys.modules; "
        "from pydatatask import MemoryBlobRepository\n"
        "from pydatatask.task import FunctionTask\n"
        "from pydatatask.pipeline import Pipeline\n"
        "async def f(key): pass\n"
        "main(Pipeline([FunctionTask('t', f, inputs={'src': MemoryBlobRepository()})]), ['status', 'nope'])"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2, proc.stderr
    assert_one_line_error(proc.stderr, "no task named 'nope'")
    assert pydatatask.main is pydatatask.cli.main


# ---------------------------------------------------------------- real subprocesses
def test_subprocess_run_status_and_errors(data: Path) -> None:
    proc = demo(data, "run", "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["succeeded"] == 10
    proc = demo(data, "status", "--json")
    assert proc.returncode == 0
    assert json.loads(proc.stdout)["count"]["counts"]["succeeded"] == 5
    proc = demo(data, "status", "nope")
    assert proc.returncode == 2
    assert_one_line_error(proc.stderr, "no task named 'nope'")
    proc = demo(data, "cat", "upper.up", "../x")
    assert proc.returncode == 2
    assert_one_line_error(proc.stderr, "invalid key '../x'")


def test_subprocess_inject_empty_stdin_does_not_hang(data: Path) -> None:
    proc = demo(data, "inject", "upper.src", "nothing", timeout=20)  # stdin is /dev/null
    assert proc.returncode == 0, proc.stderr
    assert (data / "src" / "nothing.txt").read_bytes() == b""
    proc = demo(data, "inject", "upper.src", "piped", input="piped in\n", stdin=None)
    assert proc.returncode == 0, proc.stderr
    assert (data / "src" / "piped.txt").read_text() == "piped in\n"


def _wait_for(predicate: Any, timeout: float, proc: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert proc.poll() is None, f"the run ended early: {proc.communicate()}"
        assert time.monotonic() < deadline, "timed out waiting for the run to make progress"
        time.sleep(0.02)


def _files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def _check_complete(data: Path, keys: list[str]) -> None:
    for folder, ext in (("up", ".txt"), ("counts", ".yaml")):
        names = _files(data / folder)
        assert names == sorted(k + ext for k in keys), f"{folder}: {names}"
    for key in keys:
        assert (data / "up" / f"{key}.txt").read_text() == f"hello world {key}\n".upper()
        assert yaml.safe_load((data / "counts" / f"{key}.yaml").read_text()) == {
            "words": 3,
            "chars": len(f"hello world {key}\n"),
        }
    for task in ("upper", "count"):
        assert [n for n in _files(data / "state" / task / "live") if not n.startswith(".")] == []  # no claims
        done = data / "state" / task / "done"
        assert _files(done) == sorted(k + ".yaml" for k in keys)
        for key in keys:
            assert yaml.safe_load((done / f"{key}.yaml").read_text())["success"] is True
        for key in keys:  # every job really ran
            assert (data / "runs" / task / key).exists()


def _start_slow_run(data: Path, keys: list[str], output: int) -> subprocess.Popen[str]:
    """``run --json`` of the demo over sources ``keys``, each job 0.2 s; stdout and stderr to ``output``."""
    write_sources(data, keys)
    return subprocess.Popen(
        [sys.executable, str(DEMO), "run", "--json"],
        env=env_for(data, PDT_CLI_SLEEP="0.2"),
        stdin=subprocess.DEVNULL,
        stdout=output,
        stderr=output,
        text=True,
    )


def test_sigkill_midway_then_rerun_completes_without_redoing_work(tmp_path: Path) -> None:
    keys = [f"doc{i:02d}" for i in range(40)]
    proc = _start_slow_run(tmp_path, keys, subprocess.DEVNULL)
    try:
        _wait_for(lambda: len(_files(tmp_path / "state" / "count" / "done")) >= 8, 30, proc)
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(10) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert len(_files(tmp_path / "up")) < len(keys), "the run finished before it was killed"
    finished = {p.stem for p in (tmp_path / "state" / "upper" / "done").glob("*.yaml")}
    assert finished

    proc2 = demo(tmp_path, "run", "--json", timeout=60)
    assert proc2.returncode == 0, proc2.stderr
    summary = json.loads(proc2.stdout)
    assert summary["per_task"]["upper"]["succeeded"] == len(keys) - len(finished)
    _check_complete(tmp_path, keys)
    for folder in ("up", "counts", "state/upper/done", "state/count/done"):
        assert not [n for n in _files(tmp_path / folder) if n.startswith(".")], f"debris in {folder}"
    for key in finished:  # finished work is never redone
        assert len((tmp_path / "runs" / "upper" / key).read_text().splitlines()) == 1, key
    status = json.loads(demo(tmp_path, "status", "--json").stdout)
    for task in ("upper", "count"):
        assert status[task]["counts"] == {
            "ready": 0,
            "running": 0,
            "retrying": 0,
            "succeeded": len(keys),
            "failed": 0,
            "blocked": 0,
            "held": 0,
            "corrupt": 0,
            "stale": 0,
        }


def test_sigterm_stops_cleanly_and_rerun_completes(tmp_path: Path) -> None:
    keys = [f"doc{i:02d}" for i in range(40)]
    proc = _start_slow_run(tmp_path, keys, subprocess.PIPE)
    try:
        _wait_for(lambda: len(_files(tmp_path / "up")) >= 4, 30, proc)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 128 + signal.SIGTERM, err
    summary = json.loads(out)
    assert summary["interrupted"] is True and summary["signal"] == "SIGTERM" and summary["ok"] is False
    # no half outputs: every output present belongs to a job with a success record, no temporaries
    ups = {Path(n).stem for n in _files(tmp_path / "up")}
    assert not [n for n in _files(tmp_path / "up") if n.startswith(".")]
    assert ups == {p.stem for p in (tmp_path / "state" / "upper" / "done").glob("*.yaml")}
    assert len(ups) < len(keys)
    assert [n for n in _files(tmp_path / "state" / "upper" / "live") if not n.startswith(".")] == []
    proc2 = demo(tmp_path, "run", "--json", timeout=60)
    assert proc2.returncode == 0, proc2.stderr
    _check_complete(tmp_path, keys)


# ---------------------------------------------------------------- the main example
def test_example_runs_end_to_end(tmp_path: Path) -> None:
    env = dict(os.environ, PDT_EXAMPLE_DELAY="0", PYTHONPATH=str(ROOT))
    cmd = [sys.executable, str(EXAMPLE), "--data", str(tmp_path)]
    proc = subprocess.run([*cmd, "run"], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "121 job(s) succeeded, 0 failed" in proc.stdout  # 60 stats, 60 reports, 1 summary
    assert "corpus summary: 60 documents" in proc.stderr
    assert len(_files(tmp_path / "reports")) == 60
    assert (tmp_path / "summary.md").read_text().startswith("# Corpus summary")
    assert "notes_v1.final.md" in _files(tmp_path / "reports")
    proc = subprocess.run([*cmd, "run", "--json"], env=env, capture_output=True, text=True, timeout=60)
    assert json.loads(proc.stdout)["succeeded"] == 0
    proc = subprocess.run(
        [*cmd, "rm", "stats", "doc-007", "--cascade", "--json"], env=env, capture_output=True, text=True
    )
    assert {(r["task"], r["link"], r["key"]) for r in json.loads(proc.stdout)} >= {
        ("stats", "stats", "doc-007"),
        ("report", "report", "doc-007"),
        ("summary", "summary", "summary"),  # the fan-in group of the document
    }
    proc = subprocess.run([*cmd, "run", "--json"], env=env, capture_output=True, text=True, timeout=60)
    assert json.loads(proc.stdout)["per_task"] == {
        "stats": {"succeeded": 1, "failed": 0},
        "report": {"succeeded": 1, "failed": 0},
        "summary": {"succeeded": 1, "failed": 0},
    }
    record = yaml.safe_load((tmp_path / "state" / "summary" / "done" / "summary.yaml").read_text())
    assert len(record["members"]) == 60 and "doc-007" in record["members"]
