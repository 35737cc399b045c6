"""``logs`` (with ``--json``) and the errors of ``logs`` and ``ls`` when there is nothing to show."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import pytest

from .demo_pipeline import build_pipeline
from .test_cli import KEYS, Cli, assert_one_line_error, write_sources


@pytest.fixture
def data(tmp_path: Path) -> Path:
    write_sources(tmp_path, KEYS)
    return tmp_path


@pytest.fixture
def cli(data: Path, capsys: pytest.CaptureFixture[str]) -> Iterator[Cli]:
    p = build_pipeline(data)
    yield Cli(p, capsys)
    p.tasks["upper"].executor.pool.shutdown()  # type: ignore[attr-defined]


def test_logs_json_text(cli: Cli) -> None:
    cli("run")
    got = cli.json("logs", "count", "k1")
    assert set(got) == {"task", "key", "log"}
    assert (got["task"], got["key"]) == ("count", "k1")
    assert got["log"].endswith("counting k1\n")
    code, out, _ = cli("logs", "count", "k1")
    assert (code, out) == (0, got["log"])


def test_logs_json_of_bytes_that_are_not_text(cli: Cli, data: Path) -> None:
    cli("run")
    raw = b"\xff\xfe binary \x00 log\n"
    (data / "state" / "count" / "logs" / "k2.log").write_bytes(raw)
    got = cli.json("logs", "count", "k2")
    assert set(got) == {"task", "key", "base64"}
    assert base64.b64decode(got["base64"]) == raw


def test_logs_of_a_key_without_a_log_says_why(cli: Cli, data: Path) -> None:
    code, out, err = cli("logs", "count", "k1")
    assert (code, out) == (1, "")
    assert_one_line_error(err, "no log for 'k1'", "no job of it has run")
    cli("run")
    code, _, err = cli("logs", "upper", "k1", "--json")  # upper's jobs log nothing
    assert code == 1
    assert_one_line_error(err, "no log for 'k1'", "wrote no log")
    code, _, err = cli("logs", "count", "../x")
    assert code == 2
    assert_one_line_error(err, "invalid key '../x'")


def test_ls_errors_and_empty(cli: Cli) -> None:
    code, out, err = cli("ls", "upper.nope")
    assert (code, out) == (2, "")
    assert_one_line_error(err, "no link 'nope'", "src")
    code, out, err = cli("ls", "upper")
    assert code == 2
    assert_one_line_error(err, "expected TASK.LINK")
    assert cli.json("ls", "count.counts") == []
    code, out, err = cli("ls", "count.counts")
    assert (code, out) == (0, "")
    assert err.startswith("count.counts (") and err.endswith(") holds no keys\n")
    assert cli.json("ls", "upper.src") == KEYS
