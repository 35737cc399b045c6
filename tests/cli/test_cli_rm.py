"""``rm``: what it removes is what makes the keys run again, and it says so.

Over the demo pipeline (``upper`` writes ``up/``, ``count`` reads it and writes
``counts/``; records and logs under ``state/``) and, for the cases it cannot show, small
pipelines of memory repositories.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from pydatatask import MemoryBlobRepository, ReadOnlyRepository
from pydatatask.pipeline import Pipeline
from pydatatask.task import FunctionTask

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


def runs(data: Path, task: str, key: str) -> int:
    """How many times the job of ``key`` has been executed."""
    path = data / "runs" / task / key
    return len(path.read_text().splitlines()) if path.exists() else 0


def state(data: Path, task: str, what: str) -> list[str]:
    folder = data / "state" / task / what
    return sorted(p.stem for p in folder.iterdir()) if folder.exists() else []


def test_rm_an_output_link_removes_the_record_so_the_key_runs_again(cli: Cli, data: Path) -> None:
    cli("run")
    assert state(data, "upper", "done") == KEYS
    code, out, err = cli("rm", "upper.up", "k1")
    assert code == 0, err
    assert "removed 1 key(s) from upper.up: k1" in out
    assert "removed 1 key(s) from upper.done: k1" in out
    assert not (data / "up" / "k1.txt").exists()
    assert "k1" not in state(data, "upper", "done")
    assert cli.json("status")["upper"]["ready"] == ["k1"]
    summary = cli.json("run")
    assert summary["per_task"]["upper"] == {"succeeded": 1, "failed": 0}
    assert runs(data, "upper", "k1") == 2
    assert (data / "up" / "k1.txt").read_text() == "HELLO WORLD K1\n"
    assert runs(data, "count", "k1") == 1  # count's output is still there: not cascaded


def test_rm_an_output_link_json_lists_record_and_log(cli: Cli, data: Path) -> None:
    cli("run")
    removed = cli.json("rm", "count.counts", "k2")
    assert removed == [
        {"task": "count", "link": "counts", "key": "k2"},
        {"task": "count", "link": "done", "key": "k2"},
        {"task": "count", "link": "logs", "key": "k2"},
    ]
    assert "k2" not in state(data, "count", "logs")
    assert cli.json("run")["per_task"]["count"] == {"succeeded": 1, "failed": 0}


def test_rm_an_output_link_with_cascade(cli: Cli, data: Path) -> None:
    cli("run")
    removed = cli.json("rm", "upper.up", "k3", "--cascade")
    assert {(r["task"], r["link"]) for r in removed} == {
        ("upper", "up"),
        ("upper", "done"),
        ("count", "counts"),
        ("count", "done"),
        ("count", "logs"),
    }
    assert {r["key"] for r in removed} == {"k3"}
    summary = cli.json("run")
    assert summary["per_task"] == {
        "upper": {"succeeded": 1, "failed": 0},
        "count": {"succeeded": 1, "failed": 0},
    }
    assert (runs(data, "upper", "k3"), runs(data, "count", "k3")) == (2, 2)


def test_rm_an_input_written_upstream_removes_the_writers_record(cli: Cli, data: Path) -> None:
    cli("run")
    removed = cli.json("rm", "count.up", "k4")
    assert removed == [
        {"task": "count", "link": "up", "key": "k4"},
        {"task": "upper", "link": "done", "key": "k4"},
    ]
    assert cli.json("run")["per_task"]["upper"] == {"succeeded": 1, "failed": 0}
    assert runs(data, "upper", "k4") == 2


def test_rm_an_input_written_upstream_with_cascade_redoes_the_reader_too(cli: Cli, data: Path) -> None:
    cli("run")
    removed = cli.json("rm", "count.up", "k5", "--cascade")
    assert {(r["task"], r["link"]) for r in removed} == {
        ("count", "up"),
        ("upper", "done"),
        ("count", "counts"),
        ("count", "done"),
        ("count", "logs"),
    }
    summary = cli.json("run")
    assert summary["per_task"] == {
        "upper": {"succeeded": 1, "failed": 0},
        "count": {"succeeded": 1, "failed": 0},
    }
    assert (runs(data, "upper", "k5"), runs(data, "count", "k5")) == (2, 2)


def test_rm_the_done_link_removes_record_and_log_but_keeps_the_output(cli: Cli, data: Path) -> None:
    cli("run")
    assert cli.json("rm", "count.done", "k3") == [
        {"task": "count", "link": "done", "key": "k3"},
        {"task": "count", "link": "logs", "key": "k3"},
    ]
    assert (data / "counts" / "k3.yaml").exists()


def test_rm_link_all_takes_the_keys_of_that_link(cli: Cli, data: Path) -> None:
    write_sources(data, [], {"bad": "please fail\n"})
    cli("run")
    assert "bad" in state(data, "upper", "done")  # a failure record, and no output
    removed = cli.json("rm", "upper.up", "--all", "--yes")
    assert {r["key"] for r in removed} == set(KEYS)
    assert state(data, "upper", "done") == ["bad"]  # only records of the keys removed from up


def test_rm_a_key_that_is_not_there_fails(cli: Cli, data: Path) -> None:
    cli("run")
    code, out, err = cli("rm", "upper", "nosuch")
    assert (code, out) == (1, "")
    assert_one_line_error(err, "nothing to remove", "'nosuch'", "upper")
    code, out, err = cli("rm", "upper.up", "k1", "nosuch")
    assert code == 1
    assert "removed 1 key(s) from upper.up: k1" in out  # what was there went, and it says so
    assert_one_line_error(err, "nothing to remove for 1 key(s)", "'nosuch'")
    code, out, err = cli("rm", "upper", "k1", "--json")  # k1 is gone already
    assert code == 1
    assert json.loads(out) == []
    assert_one_line_error(err, "'k1'")


def test_rm_all_of_nothing_says_so(cli: Cli) -> None:
    code, out, err = cli("rm", "count", "--all", "--yes")
    assert code == 0, err
    assert out == "nothing to remove: count holds no keys\n"


def _two_outputs(
    capsys: pytest.CaptureFixture[str],
) -> tuple[Cli, MemoryBlobRepository, MemoryBlobRepository]:
    src = MemoryBlobRepository({"a": b"1", "b": b"2"})
    left, right = MemoryBlobRepository(), MemoryBlobRepository()

    async def split(
        key: str, src: MemoryBlobRepository, left: MemoryBlobRepository, right: MemoryBlobRepository
    ) -> None:
        data = await src.read_bytes(key)
        await left.write_bytes(key, data)
        await right.write_bytes(key, data * 2)

    async def show(key: str, view: MemoryBlobRepository) -> None:
        return None

    pipeline = Pipeline(
        [
            FunctionTask("split", split, inputs={"src": src}, outputs={"left": left, "right": right}),
            FunctionTask("show", show, inputs={"view": ReadOnlyRepository(left)}),
        ]
    )
    return Cli(pipeline, capsys), left, right


def test_rm_one_output_of_two_refuses_and_removes_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    cli, left, right = _two_outputs(capsys)
    assert cli("run", "--task", "split")[0] == 0
    code, out, err = cli("rm", "split.left", "a")
    assert (code, out) == (1, "")
    assert_one_line_error(err, "split.right also holds 'a'", "nothing removed", "rm split KEY")
    assert cli.json("ls", "split.left") == ["a", "b"]
    assert cli.json("ls", "split.done") == ["a", "b"]
    removed = cli.json("rm", "split", "a")
    assert {r["link"] for r in removed} == {"left", "right", "done"}
    assert cli.json("run", "--task", "split")["succeeded"] == 1


def test_rm_through_a_read_only_link_is_an_error(capsys: pytest.CaptureFixture[str]) -> None:
    cli, left, _ = _two_outputs(capsys)
    cli("run")
    code, _, err = cli("rm", "show.view", "a")
    assert code == 1
    assert_one_line_error(err, "show.view", "read-only")
    assert cli.json("ls", "split.left") == ["a", "b"]
