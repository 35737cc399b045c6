"""A number of a pipeline file may come from the environment (``concurrency: "${N}"``):
converted, then checked as the schema says; an error names the place and the variable."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from pydatatask.config import load_pipeline
from pydatatask.errors import PipelineFileError

FILE = """\
repositories:
  src: {kind: files, root: data/src}
  out: {kind: files, root: data/out}
executors:
  pool: {kind: threads, workers: "${WORKERS:-2}", cpu: "${CPUS}"}
tasks:
  copy:
    kind: function
    function: "shutil:copyfile"
    executor: pool
    inputs: {src: src}
    outputs: {out: out}
    concurrency: "${N}"
    retry: {max_attempts: "${TRIES:-3}", jitter: "${JITTER:-0.25}"}
"""


def write(tmp_path: Path, text: str = FILE) -> Path:
    path = tmp_path / "pipeline.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def error(path: Path, environ: dict[str, str]) -> str:
    with pytest.raises(PipelineFileError) as info:
        load_pipeline(path, environ=environ)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_numbers_from_the_environment_and_from_defaults(tmp_path: Path) -> None:
    pipeline = load_pipeline(write(tmp_path), environ={"N": "12", "CPUS": "1.5", "TRIES": " 5 "})
    task = pipeline.tasks["copy"]
    assert task.concurrency == 12 and isinstance(task.concurrency, int)
    assert task.retry.max_attempts == 5 and task.retry.jitter == 0.25
    pool = task.executor
    assert pool.capacity.cpu == 1.5  # type: ignore[attr-defined]
    assert pool.pool._max_workers == 2  # type: ignore[attr-defined]
    pool.pool.shutdown()  # type: ignore[attr-defined]


def test_a_variable_that_holds_no_number_is_named_with_the_place(tmp_path: Path) -> None:
    path = write(tmp_path)
    assert error(path, {"N": "abc", "CPUS": "1"}) == (
        f"{path}:13:18: tasks.copy.concurrency: expected a whole number, found 'abc' "
        "(from the environment variable N)"
    )
    assert error(path, {"N": "2.5", "CPUS": "1"}).endswith(
        "tasks.copy.concurrency: expected a whole number, found '2.5' (from the environment variable N)"
    )
    assert error(path, {"N": "1", "CPUS": "many"}) == (
        f"{path}:5:56: executors.pool.cpu: expected a number, found 'many' "
        "(from the environment variable CPUS)"
    )
    # the schema's bounds hold for a number read from the environment
    assert error(path, {"N": "0", "CPUS": "1"}) == (
        f"{path}:13:18: tasks.copy.concurrency: expected at least 1, found 0 "
        "(from the environment variable N)"
    )
    # a default that is no number is named as the default
    bad_default = write(tmp_path, FILE.replace("${TRIES:-3}", "${TRIES:-three}"))
    assert error(bad_default, {"N": "1", "CPUS": "1"}).endswith(
        "tasks.copy.retry.max_attempts: expected a whole number, found 'three' (from the default of ${TRIES})"
    )
    # an unset variable without a default is the usual error
    assert error(path, {"CPUS": "1"}).startswith(
        f"{path}:13:18: tasks.copy.concurrency: the environment variable N is not set"
    )


def test_the_value_of_a_credential_never_shows(tmp_path: Path) -> None:
    text = FILE.replace(
        "  out: {kind: files, root: data/out}\n",
        '  out: {kind: files, root: data/out}\n  images: {kind: docker, registry: "r.invalid:5000", repository: a/b, password: "${REG}"}\n',
    ).replace('"${N}"', '"${REG}"')
    path = write(tmp_path, text)
    message = error(path, {"REG": "hunter22", "CPUS": "1"})
    assert message.endswith(
        "tasks.copy.concurrency: expected a whole number, found a value that is not one "
        "(from the environment variable REG)"
    ), message
    assert "hunter22" not in message
    message = error(path, {"REG": "0", "CPUS": "1"})
    assert message.endswith(
        "tasks.copy.concurrency: expected at least 1, found another value (from the environment variable REG)"
    ), message
    # a name that says it is a secret is enough
    named = write(tmp_path, FILE.replace('"${N}"', '"${API_TOKEN}"'))
    assert "x1y2z3" not in error(named, {"API_TOKEN": "x1y2z3", "CPUS": "1"})


def test_a_literal_string_is_still_no_number(tmp_path: Path) -> None:
    path = write(tmp_path, FILE.replace('"${N}"', '"12"'))
    assert (
        error(path, {"CPUS": "1"})
        == f"{path}:13:18: tasks.copy.concurrency: expected a whole number, found '12'"
    )
