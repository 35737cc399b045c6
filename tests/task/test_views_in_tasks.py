"""Views used wherever a repository is: function and process tasks, templates, the CLI."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from pydatatask import (
    AndRepository,
    DirectoryRepository,
    FallbackRepository,
    FileRepository,
    FilterRepository,
    LocalHost,
    MemoryMetadataRepository,
    OrRepository,
    ProcessTask,
    ReadOnlyRepository,
    TranslateKeysRepository,
    YamlMetadataFileRepository,
)
from pydatatask.cli import run_cli
from pydatatask.pipeline import Pipeline
from pydatatask.task import FunctionTask
from pydatatask.task.templates import link_info


def _prefixed(child: FileRepository, prefix: str) -> TranslateKeysRepository:
    return TranslateKeysRepository(
        child, lambda k: prefix + k, lambda k: k[len(prefix) :] if k.startswith(prefix) else None
    )


async def test_sync_function_reads_through_a_read_only_view(tmp_path: Path) -> None:
    files = FileRepository(tmp_path / "in", ".txt")
    await files.write_text("k1", "three little words")
    out = YamlMetadataFileRepository(tmp_path / "out")

    def count(key: str, doc: bytes) -> dict[str, object]:
        return {"stats": {"words": len(doc.split())}}

    task = FunctionTask("count", count, inputs={"doc": ReadOnlyRepository(files)}, outputs={"stats": out})
    summary = await Pipeline([task]).run()
    assert summary.ok, await task.done.get("k1")
    assert await out.get("k1") == {"words": 3}


async def test_sync_function_writes_through_a_translated_view(tmp_path: Path) -> None:
    src = MemoryMetadataRepository({"a": {"text": "x"}, "b": {"text": "yy"}})
    files = FileRepository(tmp_path / "out", ".txt")

    def render(key: str, src: dict[str, str]) -> dict[str, str]:
        return {"page": src["text"] * 2}

    task = FunctionTask("render", render, inputs={"src": src}, outputs={"page": _prefixed(files, "page-")})
    summary = await Pipeline([task]).run()
    assert summary.ok, await task.done.get("a")
    assert await files.keys() == {"page-a", "page-b"}
    assert await files.read_text("page-b") == "yyyy"
    again = await Pipeline([task]).run()
    assert again.ok and again.succeeded == 0  # the outputs are seen through the view: nothing to redo


async def test_sync_function_gets_the_path_of_a_directory_through_a_view(tmp_path: Path) -> None:
    dirs = DirectoryRepository(tmp_path / "dirs")
    await dirs.validate(create=True)
    (await dirs.mkdir("d1")).joinpath("f.txt").write_text("inside")
    out = MemoryMetadataRepository()

    def look(key: str, folder: str) -> dict[str, object]:
        return {"found": sorted(p.name for p in Path(folder).iterdir())}

    task = FunctionTask("look", look, inputs={"folder": ReadOnlyRepository(dirs)}, outputs={"found": out})
    summary = await Pipeline([task]).run()
    assert summary.ok, await task.done.get("d1")
    assert await out.get("d1") == ["f.txt"]


async def test_process_task_reads_and_writes_through_views(tmp_path: Path) -> None:
    docs = FileRepository(tmp_path / "docs", ".txt")
    upper = FileRepository(tmp_path / "upper", ".txt")
    for k in ("k1", "k2"):
        await docs.write_text(k, f"hello {k}\n")
    task = ProcessTask(
        "upper",
        "tr a-z A-Z < {{ doc.path }} > {{ up.path }}",
        hosts=[LocalHost(workdir=tmp_path / "jobs")],
        inputs={"doc": ReadOnlyRepository(docs)},
        outputs={"up": _prefixed(upper, "up-")},
    )
    summary = await Pipeline([task]).run()
    assert summary.ok, await task.done.get("k1")
    assert await upper.read_text("up-k2") == "HELLO K2\n"


def test_link_info_is_that_of_the_read_source(tmp_path: Path) -> None:
    files = FileRepository(tmp_path / "f", ".txt")
    records = YamlMetadataFileRepository(tmp_path / "r")
    translated = _prefixed(files, "raw-")
    info = link_info(translated, "k")
    assert info["kind"] == "file"
    assert info["path"] == str((tmp_path / "f" / "raw-k.txt").absolute())
    assert info["repository"] == translated.describe()
    nested = FilterRepository(ReadOnlyRepository(translated), lambda k: True)
    assert link_info(nested, "k")["path"] == info["path"]
    assert link_info(AndRepository(files, records), "k")["path"] == str(files.path("k").absolute())
    meta = link_info(ReadOnlyRepository(records), "k")
    assert (meta["path"], meta["format"]) == (str(records.blobs.path("k").absolute()), "YAML")  # type: ignore[attr-defined]
    # reads come from whichever child holds the key: no single path to give
    assert "path" not in link_info(OrRepository(files, FileRepository(tmp_path / "g")), "k")
    assert "path" not in link_info(FallbackRepository(files, FileRepository(tmp_path / "g")), "k")


def test_link_info_of_an_object_store_through_a_view() -> None:
    from pydatatask import S3BucketRepository

    objects = S3BucketRepository(object(), "bucket", "data/", ".bin")  # no request is made
    info = link_info(ReadOnlyRepository(TranslateKeysRepository(objects, "raw-{}".format, str)), "k")
    assert (info["kind"], info["bucket"], info["object"]) == ("s3", "bucket", "data/raw-k.bin")
    assert info["url"] == "s3://bucket/data/raw-k.bin"


def test_cat_and_inject_through_views(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    files = FileRepository(tmp_path / "files", ".txt")
    records = YamlMetadataFileRepository(tmp_path / "records")
    task = FunctionTask(
        "t",
        lambda key, doc, meta: {},
        inputs={"doc": ReadOnlyRepository(files), "meta": FilterRepository(records, lambda k: True)},
        outputs={
            "page": _prefixed(files, "page-"),
            "rec": TranslateKeysRepository(records, str.upper, str.lower),
        },
    )
    pipeline = Pipeline([task])

    def cli(*argv: str, stdin: bytes = b"") -> tuple[int, str, str]:
        monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(stdin)))
        capsys.readouterr()
        code = run_cli(pipeline, list(argv))
        out, err = capsys.readouterr()
        return code, out, err

    assert cli("inject", "t.page", "k1", stdin=b"page one\n")[0] == 0
    assert (tmp_path / "files" / "page-k1.txt").read_text() == "page one\n"
    assert cli("inject", "t.rec", "k1", stdin=b"n: 1\n")[0] == 0
    assert (tmp_path / "records" / "K1.yaml").exists()
    (tmp_path / "files" / "k2.txt").write_text("plain\n")
    assert cli("cat", "t.doc", "k2") == (0, "plain\n", "")
    assert cli("cat", "t.page", "k1") == (0, "page one\n", "")
    code, out, err = cli("cat", "t.meta", "K1", "--json")
    assert (code, json.loads(out)) == (0, {"n": 1}), err
    code, _, err = cli("inject", "t.doc", "k3", stdin=b"refused")
    assert code == 1 and "read-only" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "files" / "k3.txt").exists()
