"""The published schema says what a file may hold where a number is expected: the number,
or a string naming an environment variable (``"${N}"``), as ``pydatatask validate`` accepts;
the reference in the docs follows."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from pydatatask.config import load_pipeline, pipeline_schema
from tests.config import test_numbers_from_env as numbers_from_env

ROOT = Path(__file__).resolve().parents[2]

#: every number of it written "${VAR}"
ENV_FILE = numbers_from_env.FILE
#: the same with numbers written as numbers, concurrency left to each test
LITERAL_FILE = (
    ENV_FILE.replace('"${WORKERS:-2}"', "2")
    .replace('"${CPUS}"', "1")
    .replace('"${TRIES:-3}"', "3")
    .replace('"${JITTER:-0.25}"', "0.25")
)


def document(text: str) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(text)
    return doc


def schema_errors(doc: dict[str, Any]) -> list[str]:
    validator = jsonschema.Draft202012Validator(pipeline_schema())
    return [e.message for e in validator.iter_errors(doc)]


def test_the_published_schema_admits_a_number_from_the_environment_where_validate_does(
    tmp_path: Path,
) -> None:
    assert schema_errors(document(ENV_FILE)) == []
    path = tmp_path / "pipeline.yaml"
    path.write_text(ENV_FILE)
    pipeline = load_pipeline(path, environ={"N": "7", "CPUS": "1.5"})
    assert pipeline.tasks["copy"].concurrency == 7
    pipeline.tasks["copy"].executor.pool.shutdown()  # type: ignore[attr-defined]


def test_the_published_schema_still_refuses_a_string_naming_no_variable_and_keeps_the_bounds() -> None:
    def concurrency(value: str) -> dict[str, Any]:
        return document(LITERAL_FILE.replace('"${N}"', value))

    assert "${" not in LITERAL_FILE.replace('"${N}"', "4")
    assert schema_errors(concurrency("4")) == []
    assert schema_errors(concurrency('"four"')), "a word is no number"
    assert schema_errors(concurrency("0")), "concurrency is at least 1"
    assert schema_errors(concurrency("2.5")), "concurrency is a whole number"


def test_every_place_of_a_number_says_so_in_the_schema_and_in_the_reference() -> None:
    schema = pipeline_schema()
    places: list[dict[str, Any]] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            kinds = node.get("type")
            if isinstance(kinds, list) and {"integer", "number"} & set(kinds) and "pattern" in node:
                places.append(node)
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(schema)
    assert len(places) >= 40  # every count, bound and rate of the file
    for place in places:
        assert "string" in place["type"]
        assert jsonschema.Draft202012Validator(place).is_valid("${N:-3}")
        assert not jsonschema.Draft202012Validator(place).is_valid("three")

    spec = importlib.util.spec_from_file_location(
        "pipeline_schema", ROOT / "docs" / "_ext" / "pipeline_schema.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    text = "\n".join(module.reference(schema))
    row = text.split("``concurrency``", 1)[1].split("* - ", 1)[0]
    assert 'integer or ``"${VAR}"``' in row, row
