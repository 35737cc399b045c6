"""The type checker sees a view as the kind of repository it wraps (``mypy --strict``)."""

from __future__ import annotations

import re
from pathlib import Path

SNIPPET = """
from pydatatask import (
    AndRepository, BlobRepository, BlockingRepository, FallbackRepository, FileRepository,
    FilterRepository, MapValuesRepository, MemoryMetadataRepository, MetadataRepository,
    OrRepository, ReadOnlyRepository, TranslateKeysRepository, YamlMetadataFileRepository,
)
from pydatatask.repository import DirectoryRepository, Repository

files = FileRepository("f")
meta = YamlMetadataFileRepository("m")

blob_views: list[BlobRepository] = [
    ReadOnlyRepository(files),
    FilterRepository(files, lambda k: True),
    TranslateKeysRepository(files, str, str),
    AndRepository(files, meta),
    BlockingRepository(files, meta),
    OrRepository(files, files),
    FallbackRepository(files, files),
    ReadOnlyRepository(ReadOnlyRepository(files)),
]
metadata_views: list[MetadataRepository] = [
    ReadOnlyRepository(meta),
    FilterRepository(meta, value_predicate=lambda v: True),
    TranslateKeysRepository(meta, str, str),
    AndRepository(meta, files),
    BlockingRepository(meta, files),
    OrRepository(meta, MemoryMetadataRepository()),
    FallbackRepository(meta, meta),
    MapValuesRepository(meta, str),
]
reveal_type(ReadOnlyRepository(files))
reveal_type(ReadOnlyRepository(meta))
reveal_type(ReadOnlyRepository(DirectoryRepository("d")))
keys_only: Repository = OrRepository(files, meta)
wrong_kind: MetadataRepository = ReadOnlyRepository(files)  # an error
also_wrong: BlobRepository = OrRepository(files, meta)  # an error
"""


def test_mypy_sees_views_as_their_kind(tmp_path: Path) -> None:
    from mypy import api

    snippet = tmp_path / "snippet.py"
    snippet.write_text(SNIPPET)
    out, err, status = api.run(
        ["--strict", "--no-error-summary", "--cache-dir", str(tmp_path / "cache"), str(snippet)]
    )
    lines = [line.split(":", 1)[1] for line in out.splitlines() if line.startswith(str(snippet))]
    revealed = [re.sub(r".*Revealed type is ", "", line) for line in lines if "Revealed type" in line]
    assert revealed == [
        '"pydatatask.repository.combinators.ReadOnlyBlobView"',
        '"pydatatask.repository.combinators.ReadOnlyMetadataView"',
        '"pydatatask.repository.combinators.ReadOnlyRepository"',
    ], out + err
    errors = [line.split(":", 1)[0] for line in lines if ": error:" in line]
    expected = [str(n) for n, line in enumerate(SNIPPET.splitlines(), 1) if line.endswith("# an error")]
    assert errors == expected and len(expected) == 2, out + err
    assert status == 1
