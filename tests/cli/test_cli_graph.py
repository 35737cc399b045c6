"""``graph``: repositories as well as tasks, cycles drawn, views, ASCII Mermaid, escaped labels."""

from __future__ import annotations

import html
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pydatatask import (
    FilterRepository,
    MemoryBlobRepository,
    MemoryMetadataRepository,
    TranslateKeysRepository,
)
from pydatatask.cli import run_cli
from pydatatask.pipeline import Pipeline
from pydatatask.task import FunctionTask

from .demo_pipeline import build_pipeline
from .test_cli import KEYS, Cli, assert_one_line_error, write_sources


async def _noop(key: str) -> None:
    return None


def task(name: str, **links: Any) -> FunctionTask:
    """A task whose function takes no links (the graph only looks at the links)."""
    return FunctionTask(name, _noop, **links)


def graph(pipeline: Pipeline, capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    capsys.readouterr()
    assert run_cli(pipeline, ["graph", *argv]) == 0
    return capsys.readouterr().out


@pytest.fixture
def cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Iterator[Cli]:
    write_sources(tmp_path, KEYS)
    p = build_pipeline(tmp_path)
    yield Cli(p, capsys)
    p.tasks["upper"].executor.pool.shutdown()  # type: ignore[attr-defined]


def test_text_draws_repositories_between_tasks(cli: Cli, tmp_path: Path) -> None:
    code, out, _ = cli("graph")
    assert code == 0
    assert out == (
        f"[files at {tmp_path}/src (*.txt)]\n"
        "  --src--> upper\n"
        f"    --up--> [files at {tmp_path}/up (*.txt)]\n"
        "      --up--> count\n"
        f"        --counts--> [YAML metadata in files at {tmp_path}/counts (*.yaml)]\n"
    )


def test_dot_and_mermaid_of_the_chain(cli: Cli) -> None:
    _, dot, _ = cli("graph", "--format", "dot")
    assert dot.startswith("digraph pipeline {\n") and dot.endswith("}\n")
    assert 'r0 [label="files at ' in dot and "shape=cylinder" in dot
    assert 't0 [label="upper", shape=box];' in dot
    for edge in ('r0 -> t0 [label="src"]', 't0 -> r1 [label="up"]', 'r1 -> t1 [label="up"]'):
        assert edge in dot
    _, mermaid, _ = cli("graph", "--format", "mermaid")
    assert mermaid.startswith("flowchart LR\n")
    assert mermaid.isascii()
    for line in (
        '  t0["upper"]',
        "  r0 -->|src| t0",
        "  t0 -->|up| r1",
        "  r1 -->|up| t1",
        "  t1 -->|counts| r2",
    ):
        assert line in mermaid.splitlines()


def test_json_nodes_and_edges(cli: Cli) -> None:
    got = cli.json("graph")
    nodes = {n["id"]: n for n in got["nodes"]}
    assert [(n["kind"], n["label"]) for n in got["nodes"] if n["kind"] == "task"] == [
        ("task", "upper"),
        ("task", "count"),
    ]
    assert nodes["r1"]["kind"] == "repository" and nodes["r1"]["links"] == ["upper.up", "count.up"]
    assert nodes["r1"]["description"] == "FileRepository"
    assert {(e["source"], e["kind"], e["link"], e["target"]) for e in got["edges"]} == {
        ("r0", "reads", "src", "t0"),
        ("t0", "writes", "up", "r1"),
        ("r1", "reads", "up", "t1"),
        ("t1", "writes", "counts", "r2"),
    }
    assert got["dependencies"] == [
        {
            "upstream": "upper",
            "out_link": "up",
            "downstream": "count",
            "in_link": "up",
            "repository": nodes["r1"]["label"],
        }
    ]
    code, _, err = cli("graph", "--format", "png")
    assert code == 2
    assert_one_line_error(err, "invalid choice")


@pytest.fixture
def cycle() -> Pipeline:
    a, b = MemoryBlobRepository(name="a"), MemoryBlobRepository(name="b")
    c, d = MemoryBlobRepository(name="c"), MemoryBlobRepository(name="d")
    return Pipeline(
        [
            task("P", inputs={"x": a}, outputs={"y": b}),
            task("Q", inputs={"y": b}, outputs={"x": a}),
            task("R", inputs={"c": c}, outputs={"d": d}),
        ]
    )


def test_a_cycle_is_drawn_in_every_format(cycle: Pipeline, capsys: pytest.CaptureFixture[str]) -> None:
    assert cycle.graph.upstream == {"P": ["Q"], "Q": ["P"], "R": []}  # what the scheduler uses
    assert cycle.graph.descendants("P") == ["Q"]
    text = graph(cycle, capsys)
    assert text == (
        "[memory blobs b (0 keys)]\n"
        "  --y--> Q\n"
        "    --x--> [memory blobs a (0 keys)]\n"
        "      --x--> P\n"
        "        --y--> [memory blobs b (0 keys)]  (cycle)\n"
        "[memory blobs c (0 keys)]\n"
        "  --c--> R\n"
        "    --d--> [memory blobs d (0 keys)]\n"
    )
    dot = graph(cycle, capsys, "--format", "dot")
    mermaid = graph(cycle, capsys, "--format", "mermaid")
    got = json.loads(graph(cycle, capsys, "--json"))
    ids = {n["label"]: n["id"] for n in got["nodes"]}
    assert {"P", "Q", "R"} <= set(ids)
    p, q, a, b = ids["P"], ids["Q"], ids["memory blobs a (0 keys)"], ids["memory blobs b (0 keys)"]
    for src, dst, link in ((a, p, "x"), (p, b, "y"), (b, q, "y"), (q, a, "x")):
        assert f'{src} -> {dst} [label="{link}"];' in dot
        assert f"  {src} -->|{link}| {dst}" in mermaid.splitlines()
    assert len(got["edges"]) == 6


def test_views_are_nodes_over_their_children(capsys: pytest.CaptureFixture[str]) -> None:
    raw = MemoryBlobRepository(name="raw")
    out = MemoryBlobRepository(name="out")
    written = TranslateKeysRepository(
        out, lambda k: f"x-{k}", lambda k: k[2:] if k.startswith("x-") else None
    )
    pipeline = Pipeline(
        [
            task("make", inputs={"src": raw}, outputs={"dst": written}),
            task("use", inputs={"good": FilterRepository(out, lambda k: not k.endswith("bad"))}),
        ]
    )
    got = json.loads(graph(pipeline, capsys, "--json"))
    kinds = {n["label"]: (n["id"], n["kind"]) for n in got["nodes"]}
    translated, out_id, filtered = (
        kinds["translated memory blobs out (0 keys)"],
        kinds["memory blobs out (0 keys)"],
        kinds["filtered memory blobs out (0 keys)"],
    )
    assert (translated[1], out_id[1], filtered[1]) == ("view", "repository", "view")
    edges = {(e["source"], e["kind"], e["target"]) for e in got["edges"]}
    make, use = kinds["make"][0], kinds["use"][0]
    # make writes through the translation into out; use reads out through the filter
    assert {
        (make, "writes", translated[0]),
        (translated[0], "view", out_id[0]),
        (out_id[0], "view", filtered[0]),
        (filtered[0], "reads", use),
    } <= edges
    text = graph(pipeline, capsys)
    assert "..view..> [memory blobs out (0 keys)]" in text
    assert "..view..> [filtered memory blobs out (0 keys)]" in text
    mermaid = graph(pipeline, capsys, "--format", "mermaid")
    assert f"  {translated[0]} -.->|view| {out_id[0]}" in mermaid.splitlines()
    assert (
        f'  {filtered[0]}{{{{"filtered memory blobs out #40;0 keys#41;"}}}}' not in mermaid
    )  # parentheses kept
    assert f'  {filtered[0]}{{{{"filtered memory blobs out (0 keys)"}}}}' in mermaid.splitlines()
    dot = graph(pipeline, capsys, "--format", "dot")
    assert f'{out_id[0]} -> {filtered[0]} [label="view", style=dashed];' in dot


def test_a_record_repository_read_by_another_task_is_drawn(capsys: pytest.CaptureFixture[str]) -> None:
    work = task("work", inputs={"src": MemoryBlobRepository(name="in")})
    alert = task("alert", inputs={"failures": FilterRepository(work.done, lambda k: True)})
    pipeline = Pipeline([work, alert])
    text = graph(pipeline, capsys)
    assert text.startswith("[memory blobs in (0 keys)]\n  --src--> work\n")
    assert "  --done--> [memory metadata" in text
    assert "--failures--> alert" in text
    assert pipeline.graph.upstream["alert"] == []  # no success gating on records


ODD = 'say "hi" [now] | {x} #1 <b> & ç→é\nline2 \\ end'


def _dot_labels(dot: str) -> list[str]:
    return [
        re.sub(r"\\(.)", lambda m: "\n" if m.group(1) == "n" else m.group(1), raw)
        for raw in re.findall(r'label="((?:[^"\\]|\\.)*)"', dot)
    ]


def test_labels_are_escaped(capsys: pytest.CaptureFixture[str]) -> None:
    odd = MemoryMetadataRepository(name=ODD)
    pipeline = Pipeline([task("T", inputs={"src": odd}, outputs={"dst": MemoryBlobRepository(name="é")})])
    label = odd.describe()
    dot = graph(pipeline, capsys, "--format", "dot")
    assert label in _dot_labels(dot)
    for line in dot.splitlines()[1:-1]:  # one statement per line: no label broke out
        assert re.fullmatch(
            r'  \w+( -> \w+)? \[label="(?:[^"\\]|\\.)*"(, [a-z]+=[a-z]+)*\];|  rankdir=LR;', line
        ), line
    mermaid = graph(pipeline, capsys, "--format", "mermaid")
    assert mermaid.isascii()
    shapes = re.findall(r'^  r\d+\[\("([^"]*)"\)\]$', mermaid, re.M)
    assert len(shapes) == 2
    for inner in shapes:
        assert not set(inner) & set('"|[]{}<>\n')
    decoded = [html.unescape(re.sub(r"#(\d+);", r"&#\1;", inner)) for inner in shapes]
    assert label in decoded and "memory blobs é (0 keys)" in decoded
    assert len(mermaid.splitlines()) == 6  # header, 3 nodes, 2 edges: the newline stayed inside
    text = graph(pipeline, capsys)
    assert text.splitlines()[0] == "[" + label.replace("\n", "\\n") + "]"
    assert len(text.splitlines()) == 3


def test_a_link_of_the_other_role_is_drawn_as_a_read(capsys: pytest.CaptureFixture[str]) -> None:
    docs, out = MemoryBlobRepository(name="docs"), MemoryBlobRepository(name="out")
    first = task("first", inputs={"doc": docs}, outputs={"out": out})
    second = task("second", inputs={"out": out}).link("docs", docs)
    text = graph(Pipeline([first, second]), capsys)
    assert text == (
        "[memory blobs docs (0 keys)]\n"
        "  --doc--> first\n"
        "    --out--> [memory blobs out (0 keys)]\n"
        "      --out--> second\n"
        "  --docs--> second  (see above)\n"
    )
