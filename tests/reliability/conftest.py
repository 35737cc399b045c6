"""Options, marker and figures of the reliability tests.

``--reliability-full`` (or ``PDT_RELIABILITY_ROUNDS=N``) runs the long randomized mode;
the default quick mode runs 2-3 rounds per backend. Each test adds its figures (rounds,
faults, jobs, duplicates, lost outputs) to ``reliability-summary.json`` in pytest's base
temporary directory, and the terminal summary prints them whether or not ``-s`` is given.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

_FIGURES: dict[str, dict[str, Any]] = {}
_SUMMARY_PATH: list[Path] = []


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--reliability-full",
        action="store_true",
        default=False,
        help="reliability tests: 20 randomized rounds per backend (or PDT_RELIABILITY_ROUNDS)",
    )


def pytest_configure(config: pytest.Config) -> None:
    # hypothesis' report of a *failing* example touches mypy_extensions.TypedDict, whose
    # DeprecationWarning (an error here) would turn the failure into an INTERNALERROR
    config.addinivalue_line(
        "filterwarnings", "ignore:mypy_extensions.TypedDict is deprecated:DeprecationWarning"
    )
    config.addinivalue_line(
        "markers", "reliability: crash/outage/race/hostile-input tests (tests/reliability)"
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.reliability)


@pytest.fixture
def figures(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Any]]:
    """A dict the test fills with its figures; recorded under the test's id."""
    data: dict[str, Any] = {}
    _FIGURES[request.node.nodeid] = data
    if not _SUMMARY_PATH:
        _SUMMARY_PATH.append(tmp_path_factory.getbasetemp() / "reliability-summary.json")
    yield data
    _SUMMARY_PATH[0].write_text(json.dumps(_FIGURES, indent=2, sort_keys=True))


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not _FIGURES:
        return
    tr = terminalreporter
    tr.write_sep("=", "reliability figures")
    for nodeid, data in _FIGURES.items():
        tr.write_line(f"{nodeid}: " + ", ".join(f"{k}={v}" for k, v in data.items()))
    if _SUMMARY_PATH:
        tr.write_line(f"(written to {_SUMMARY_PATH[0]})")
