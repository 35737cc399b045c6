"""The ``pydatatask`` command: -f FILE, -m MODULE:NAME, validate, several pipelines."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from pydatatask.cli.command import run_command
from tests.pipeline_files import ROOT, write_pipeline_file


def pipeline_file(tmp_path: Path, name: str) -> Path:
    """A two-stage pipeline over files in ``tmp_path/name``, with three input keys."""
    return write_pipeline_file(
        tmp_path,
        name,
        {key: f"{name} {key}\n" for key in ("a", "b", "c")},
        {
            "upper": {"kind": "files", "root": f"{name}/upper", "extension": ".txt"},
            "sizes": {"kind": "yaml_files", "root": f"{name}/sizes"},
        },
        {
            "shout": {
                "kind": "process",
                "command": "tr a-z A-Z < {{ src.path }} > {{ upper.path }}",
                "inputs": {"src": "src"},
                "outputs": {"upper": "upper"},
            },
            "size": {
                "kind": "function",
                "function": "tests.config.test_command:size",
                "inputs": {"upper": "upper"},
                "outputs": {"size": "sizes"},
            },
        },
    )


def size(key: str, upper: bytes) -> dict[str, dict[str, int]]:
    return {"size": {"bytes": len(upper)}}


def test_run_status_and_graph_of_a_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = pipeline_file(tmp_path, "one")
    assert run_command(["-f", str(path), "run", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["succeeded"] == 6
    assert (tmp_path / "one" / "upper" / "b.txt").read_text() == "ONE B\n"
    assert run_command(["-f", str(path), "status", "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["size"]["counts"]["succeeded"] == 3
    assert run_command([f"--file={path}", "cat", "size.size", "a"]) == 0
    assert capsys.readouterr().out == "bytes: 6\n"
    assert run_command(["-f", str(path), "graph", "--format", "mermaid"]) == 0
    assert "shout" in capsys.readouterr().out


def test_the_options_are_those_of_main(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = pipeline_file(tmp_path, "one")
    assert run_command(["-f", str(path), "run", "--no-such-option"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unrecognized arguments: --no-such-option") and err.count("\n") == 1
    assert run_command(["-f", str(path), "--help"]) == 0
    out = capsys.readouterr().out
    for command in ("run", "status", "rm", "ls", "cat", "inject", "launch", "logs", "graph", "why", "serve"):
        assert command in out


def test_a_module_pipeline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "mypipe.py").write_text(
        textwrap.dedent(
            f"""\
            from pydatatask import FileRepository
            from pydatatask.pipeline import Pipeline
            from pydatatask.task import FunctionTask

            def double(key, src):
                return {{"out": src * 2}}

            def build():
                return Pipeline(
                    [FunctionTask("double", double, inputs={{"src": FileRepository({str(tmp_path)!r} + "/in")}},
                                  outputs={{"out": FileRepository({str(tmp_path)!r} + "/out")}})]
                )

            pipeline = build()
            """
        )
    )
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "k").write_bytes(b"ab")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert run_command(["-m", "mypipe:pipeline", "run", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["succeeded"] == 1
    assert (tmp_path / "out" / "k").read_bytes() == b"abab"
    assert run_command(["-m", "mypipe:build", "status", "--json"]) == 0  # a function returning one
    capsys.readouterr()
    for bad, why in (
        ("mypipe", "expected package.module:name"),
        ("mypipe:nothing", "mypipe has no 'nothing'"),
        ("mypipe:double", "calling it without arguments failed"),
        ("no_such_mod_x:p", "cannot import no_such_mod_x"),
        ("json:__name__", "is a str, not a pydatatask Pipeline"),
    ):
        assert run_command(["-m", bad, "status"]) == 1
        err = capsys.readouterr().err
        assert err.startswith("error: ") and why in err and err.count("\n") == 1, err


def test_validate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    one, two = pipeline_file(tmp_path, "one"), pipeline_file(tmp_path, "two")
    assert run_command(["validate", "-f", str(one), "-f", str(two)]) == 0
    assert capsys.readouterr().out == (
        f"{one}: ok (2 task(s): shout, size)\n{two}: ok (2 task(s): shout, size)\n"
    )
    two.write_text(two.read_text().replace("{{ upper.path }}", "{{ uper.path }}"))
    line = next(n for n, text in enumerate(two.read_text().splitlines(), 1) if "command:" in text)
    assert run_command(["-f", str(one), "-f", str(two), "validate"]) == 1
    err = capsys.readouterr().err
    # the place of the command's value in the file
    assert err.startswith(
        f"error: {two}:{line}:14: tasks.shout.command: command template uses an undefined name"
    )
    assert err.count("\n") == 1


def test_several_pipelines_side_by_side(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    one, two = pipeline_file(tmp_path, "one"), pipeline_file(tmp_path, "two")
    both = ["-f", str(one), "-f", str(two)]
    assert run_command([*both, "run", "--json"]) == 0
    results = json.loads(capsys.readouterr().out)
    assert list(results) == [str(one), str(two)]
    assert all(r["succeeded"] == 6 and r["failed"] == 0 for r in results.values())
    for name in ("one", "two"):  # each its own data and state
        assert (tmp_path / name / "upper" / "c.txt").read_text() == f"{name.upper()} C\n"
        assert len(list((tmp_path / name / "state" / "size" / "done").iterdir())) == 3
    assert run_command([*both, "status"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"# {one}\n") and f"\n# {two}\n" in out
    assert run_command([*both, "graph", "--json"]) == 0
    decoder, text, docs = json.JSONDecoder(), capsys.readouterr().out, []
    while text.strip():
        doc, end = decoder.raw_decode(text.lstrip())
        docs.append(doc)
        text = text.lstrip()[end:]
    assert len(docs) == 2
    assert [d["repository"] for d in docs[0]["dependencies"]] == [f"files at {tmp_path}/one/upper (*.txt)"]
    assert [d["repository"] for d in docs[1]["dependencies"]] == [f"files at {tmp_path}/two/upper (*.txt)"]
    (tmp_path / "two" / "in" / "d.txt").write_text("two d\n")
    assert run_command([*both, "run"]) == 0  # one new key in two, nothing to do in one
    out = capsys.readouterr().out
    lines = out.splitlines()
    progress = lines[lines.index(f"# {one}") - 1]  # one display: a row per task of each pipeline
    assert progress.startswith("[") and f"{one}: shout 3 ok/0 failed" in progress
    assert f"{two}: size 4 ok/0 failed/0 running/0 ready" in progress
    assert f"# {one}\n" in out and f"# {two}\n" in out
    assert "0 job(s) succeeded" in out and "2 job(s) succeeded" in out
    assert run_command([*both, "ls", "size.size"]) == 2
    assert "ls works on one pipeline" in capsys.readouterr().err
    assert run_command([*both, "run", "--task", "nope"]) == 2
    assert capsys.readouterr().err == "error: no pipeline has a task named 'nope'\n"
    assert run_command([*both, "run", "--allow-actions"]) == 2
    assert capsys.readouterr().err == "error: --allow-actions goes with --serve [HOST:]PORT\n"
    assert run_command([*both, "run", "--task", "shout", "--json"]) == 0  # each pipeline's task of that name
    assert all(r["succeeded"] == 0 for r in json.loads(capsys.readouterr().out).values())


def _serving(*args: str) -> tuple[subprocess.Popen[str], str]:
    """``python -m pydatatask ARGS`` started, and the address it serves at (from stderr)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "pydatatask", *args],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert proc.stderr is not None
    seen = []
    for line in proc.stderr:
        seen.append(line)
        found = re.match(
            r"serving the page at (http://\S+) \(pipelines: one, one-2; each at /p/NAME/\)$", line
        )
        if found:
            return proc, found.group(1)
    proc.wait(timeout=30)
    raise AssertionError("".join(seen))


def _get(url: str, path: str) -> Any:
    with urllib.request.urlopen(url.rstrip("/") + path, timeout=30) as r:
        return json.loads(r.read())


def _stopped(proc: subprocess.Popen[str]) -> int:
    proc.send_signal(signal.SIGTERM)
    code = proc.wait(timeout=60)
    assert proc.stderr is not None
    proc.stderr.close()
    return code


def test_several_pipelines_served_on_one_port(tmp_path: Path) -> None:
    # two files of the same stem: their pages are one and one-2
    one, two = pipeline_file(tmp_path, "one"), pipeline_file(tmp_path / "again", "one")
    both = ["-f", str(one), "-f", str(two)]
    proc, url = _serving(*both, "run", "--forever", "--serve", "127.0.0.1:0")
    try:
        deadline = time.monotonic() + 60
        while True:  # the schedulers list, then run the 6 jobs of each
            listed = _get(url, "/api/pipelines")["pipelines"]
            if all(p["source"] == "scheduler" and p["counts"]["succeeded"] == 6 for p in listed):
                break
            assert time.monotonic() < deadline, listed
            time.sleep(0.1)
        assert [p["name"] for p in listed] == ["one", "one-2"]
        status = _get(url, "/p/one-2/api/status")
        assert status["source"] == "scheduler" and list(status["tasks"]) == ["shout", "size"]
        assert status["tasks"]["size"]["counts"]["succeeded"] == 3
        with urllib.request.urlopen(url + "metrics", timeout=30) as r:
            metrics = r.read().decode()
        assert (
            'pydatatask_jobs_finished_total{pipeline="one-2",task="shout",outcome="succeeded"} 3' in metrics
        )
    finally:
        assert _stopped(proc) == 128 + signal.SIGTERM
    assert (tmp_path / "again" / "one" / "upper" / "a.txt").read_text() == "ONE A\n"
    proc, url = _serving(*both, "serve", "--port", "0")
    try:
        listed = _get(url, "/api/pipelines")["pipelines"]
        assert [(p["name"], p["source"], p["counts"]["succeeded"]) for p in listed] == [
            ("one", "listing", 6),
            ("one-2", "listing", 6),
        ]
        assert _get(url, "/p/one/api/status")["tasks"]["shout"]["counts"]["succeeded"] == 3
    finally:
        assert _stopped(proc) == 128 + signal.SIGTERM


def test_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_command(["status"]) == 2
    assert "name the pipeline with -f FILE or -m MODULE:NAME" in capsys.readouterr().err
    assert run_command(["-f"]) == 2
    assert "-f needs a value" in capsys.readouterr().err
    assert run_command([]) == 2
    assert run_command(["--help"]) == 0
    assert "-f, --file FILE" in capsys.readouterr().out
    assert run_command(["-f", "/nonexistent/p.yaml", "status"]) == 1
    assert (
        capsys.readouterr().err
        == "error: /nonexistent/p.yaml:1:1: cannot read the file: No such file or directory\n"
    )


def test_python_dash_m_pydatatask(tmp_path: Path) -> None:
    path = pipeline_file(tmp_path, "one")
    done = subprocess.run(
        [sys.executable, "-m", "pydatatask", "-f", str(path), "graph"],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 0, done.stderr
    assert "--src--> shout" in done.stdout


def test_import_pydatatask_stays_light() -> None:
    code = (
        "import sys, pydatatask, pydatatask.cli, pydatatask.config; "
        "print(sorted(m for m in ('jsonschema', 'pydatatask.cli.command', 'pydatatask.config._builder') if m in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PYTHONPATH": str(ROOT)},
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "['pydatatask.config._builder']"  # jsonschema only when a file is checked
