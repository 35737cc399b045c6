"""Regression tests for races the concurrent batched runs found in the claims of local state.

Four batched schedulers over files (``test_concurrent``, ``files-4-batch7``) once ended with
every key run and recorded once but two claims left in ``live``: a batch released its keys'
claims (unlink) while the scheduler's heartbeat was replacing them (read, compare, rename a
new file into place under the directory's lock); the rename put the released claim back.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest

from pydatatask import FileRepository


@pytest.mark.parametrize("bulk", [False, True], ids=["delete", "delete_many"])
@pytest.mark.parametrize("fsync", [True, False], ids=["fsync", "nofsync"])
async def test_a_delete_during_a_conditional_replace_is_not_undone(
    tmp_path: Path, bulk: bool, fsync: bool
) -> None:
    repo = FileRepository(tmp_path / "live", ".yaml", fsync=fsync)
    await repo.write_bytes("k", b"old")
    # a large new value: the replacement is between its compare and its rename a while
    replace = asyncio.ensure_future(repo.replace_bytes_if("k", b"old", b"x" * (64 << 20)))
    deadline = time.monotonic() + 20
    while not any(name.startswith(".k.yaml.tmp-") for name in os.listdir(tmp_path / "live")):
        assert not replace.done(), "the replacement ended before its temporary file was seen"
        assert time.monotonic() < deadline
        await asyncio.sleep(0)
    # after the compare, before the rename (a batch releases its claims with delete_many)
    await (repo.delete_many(["k"]) if bulk else repo.delete("k"))
    assert await replace is True
    assert not await repo.contains("k"), "the deleted key came back with the replacement"
    assert sorted(os.listdir(tmp_path / "live")) == [".pdt-lock"]


async def test_a_replace_after_a_delete_changes_nothing(tmp_path: Path) -> None:
    repo = FileRepository(tmp_path / "live", ".yaml")
    await repo.write_bytes("k", b"old")
    assert await repo.replace_bytes_if("k", b"old", b"new") is True
    await repo.delete("k")
    assert await repo.replace_bytes_if("k", b"new", b"newer") is False
    assert not await repo.contains("k")
