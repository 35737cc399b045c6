"""The command line on bad data and bad input: one-line errors, the right exit status,
corrupt keys shown in ``status``, never an exception group or an "unexpected" error."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from pydatatask import MemoryMetadataRepository, Session
from pydatatask.cli import run_cli
from pydatatask.pipeline import Pipeline
from pydatatask.task import Event, FunctionTask

from ..test_corrupt import build, corrupt_state, write_inputs
from .test_cli import DEMO, assert_one_line_error, env_for, set_stdin, write_sources


def cli(pipeline: Pipeline, capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = run_cli(pipeline, list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_status_with_a_corrupt_record_claim_and_input(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_inputs(tmp_path, bad="k4")
    corrupt_state(tmp_path)
    pipeline = build(tmp_path, {})
    code, out, err = cli(pipeline, capsys, "run")
    assert code == 1  # the job of k4 could not read its input
    assert "ExceptionGroup" not in out + err and "unexpected" not in err
    assert sorted(p.stem for p in (tmp_path / "out").iterdir()) == ["k1", "k5"]

    code, out, err = cli(pipeline, capsys, "status")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split() == [
        "task",
        "ready",
        "running",
        "retrying",
        "succeeded",
        "failed",
        "blocked",
        "held",
        "corrupt",
        "stale",
    ]
    assert lines[1].split() == ["A", "0", "0", "0", "2", "0", "0", "0", "3", "0"]
    assert "A corrupt (3): k2, k3, k4" in out
    assert "  k2: job record: " in out and str(tmp_path / "state" / "A" / "done" / "k2.yaml") in out
    assert "  k3: claim: " in out and "  k4: input: " in out

    code, out, err = cli(pipeline, capsys, "status", "--json")
    assert code == 0, err
    status = json.loads(out)["A"]
    assert status["counts"]["corrupt"] == 3 and status["corrupt"] == ["k2", "k3", "k4"]
    assert status["corrupt_details"]["k4"]["location"] == str(tmp_path / "src" / "k4.yaml")

    code, out, err = cli(pipeline, capsys, "why", "A", "k2")
    assert code == 0, err
    assert "job record is corrupt" in out and "k2.yaml" in out


def test_inject_bad_yaml_is_a_one_line_error_and_stores_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    write_inputs(tmp_path)
    pipeline = build(tmp_path, {})
    set_stdin(monkeypatch, b"a: [\n")
    code, _, err = cli(pipeline, capsys, "inject", "A.src", "newkey")
    assert code == 1
    assert_one_line_error(err, "A.src 'newkey'", "not valid YAML", "line 2, column 1")
    assert "unexpected" not in err
    assert not (tmp_path / "src" / "newkey.yaml").exists()


def test_inject_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    write_inputs(tmp_path)
    pipeline = build(tmp_path, {})
    set_stdin(monkeypatch, b'{"n": 7}\n')
    code, out, err = cli(pipeline, capsys, "inject", "A.src", "k7", "--json")
    assert code == 0, err
    assert json.loads(out) == {"task": "A", "link": "src", "key": "k7", "bytes": 9}
    assert (tmp_path / "src" / "k7.yaml").read_text() == "n: 7\n"


def test_subprocess_inject_bad_yaml(tmp_path: Path) -> None:
    """The command of the report, as a user types it."""
    write_sources(tmp_path, ["k1"])
    proc = subprocess.run(
        [sys.executable, str(DEMO), "inject", "count.counts", "newkey"],
        input="a: [\n",
        env=env_for(tmp_path),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 1
    assert_one_line_error(proc.stderr, "not valid YAML")
    assert "unexpected" not in proc.stderr and "ParserError" not in proc.stderr


def test_an_exception_group_from_user_code_is_reported_as_its_error(
    capsys: pytest.CaptureFixture[str],
) -> None:
    session = Session()

    @session.resource
    async def client() -> AsyncIterator[object]:
        refused = [ConnectionRefusedError(111, "Connection refused")]
        if refused:  # as a client library running its own task group would
            raise ExceptionGroup("connecting", refused)
        yield object()

    async def a(key: str) -> None:
        pass

    pipeline = Pipeline([FunctionTask("A", a, inputs={"src": MemoryMetadataRepository({"k": 1})})], session)
    code, _, err = cli(pipeline, capsys, "run")
    assert code == 1
    assert_one_line_error(err, "Connection refused")
    assert "ExceptionGroup" not in err and "unexpected" not in err


@pytest.mark.parametrize("verbose", [False, True])
def test_a_hook_that_raises_prints_one_line_unless_verbose(
    capsys: pytest.CaptureFixture[str], verbose: bool
) -> None:
    async def a(key: str) -> None:
        pass

    pipeline = Pipeline([FunctionTask("A", a, inputs={"src": MemoryMetadataRepository({"k1": 1})})])

    def notify(event: Event) -> None:
        raise RuntimeError("mail server said no")

    pipeline.hooks.on("job_succeeded", notify)

    code, _, err = cli(pipeline, capsys, *(["-v"] if verbose else []), "run", "--no-status")
    assert code == 0, err
    hook_lines = [line for line in err.splitlines() if line.startswith("warning: task A key 'k1': hook")]
    assert len(hook_lines) == 1, err
    for part in ("task A", "'k1'", "notify", "job_succeeded", "RuntimeError: mail server said no"):
        assert part in hook_lines[0], err
    assert ("Traceback" in err) is verbose
    if not verbose:
        assert err.splitlines() == hook_lines


def test_format_status_shows_next_attempts_and_where_corrupt_values_are() -> None:
    from pydatatask.cli.output import STATUS_COLUMNS, format_status, status_rows

    empty: dict[str, list[str]] = {c: [] for c in STATUS_COLUMNS}
    status = {
        "A": {
            **empty,
            "retrying": ["k1"],
            "corrupt": ["k2"],
            "next_attempt": {"k1": "2026-11-23T01:02:08.500000+00:00"},
            "corrupt_details": {"k2": {"what": "claim", "message": "live: the value of key 'k2' ..."}},
        }
    }
    assert status_rows(status) == [["A", 0, 0, 1, 0, 0, 0, 0, 1, 0]]
    assert format_status(status).splitlines() == [
        "A retrying (1): k1",
        "  k1: next attempt at 2026-11-23T01:02:08.500000+00:00",
        "A corrupt (1): k2",
        "  k2: claim: live: the value of key 'k2' ...",
    ]
