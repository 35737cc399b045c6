"""Nested keys on the local file system: layout, the segment rule, key/prefix conflicts,
the removal of emptied directories, DirectoryRepository's prefix markers, versions."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from pydatatask import (
    DirectoryRepository,
    FileRepository,
    InvalidKeyError,
    RepositoryError,
    YamlMetadataFileRepository,
)
from pydatatask.repository._localfs import tmp_name


def _tree(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*")}


async def test_nested_layout_and_empty_directories_removed(tmp_path: Path) -> None:
    repo = FileRepository(tmp_path / "r", ".txt")
    await repo.write_bytes("images/2024/01/IMG 0001", b"a")
    await repo.write_bytes("images/2024/02/IMG 0002", b"b")
    assert (tmp_path / "r" / "images" / "2024" / "01" / "IMG 0001.txt").read_bytes() == b"a"
    assert await repo.keys() == {"images/2024/01/IMG 0001", "images/2024/02/IMG 0002"}
    await repo.delete("images/2024/01/IMG 0001")
    assert _tree(tmp_path / "r") == {"images", "images/2024", "images/2024/02", "images/2024/02/IMG 0002.txt"}
    await repo.delete("images/2024/02/IMG 0002")
    assert _tree(tmp_path / "r") == set()
    assert (tmp_path / "r").is_dir()  # the root itself stays


async def test_not_durable_delete_removes_empty_directories(tmp_path: Path) -> None:
    repo = FileRepository(tmp_path, fsync=False)
    await repo.write_bytes("a/b/c", b"x")
    await repo.write_bytes("a/d", b"y")
    await repo.delete("a/b/c")
    assert _tree(tmp_path) == {"a", "a/d"}


async def test_segment_rule(tmp_path: Path) -> None:
    repo = FileRepository(tmp_path, ".json")
    longest = "s" * 250  # 250 + len(".json") = 255 bytes: the most a file name holds
    await repo.write_bytes(f"{'d' * 255}/{longest}", b"x")  # its temporary fits too
    assert await repo.read_bytes(f"{'d' * 255}/{longest}") == b"x"
    assert await repo.create_bytes(f"c/{longest}", b"y")
    for key, what in (
        ("s" * 251, "last segment with the extension has 256"),
        (f"{'d' * 256}/x", "segment 1 has 256"),
        ("\u00e9" * 126, "has 257"),  # 252 bytes + 5
    ):
        with pytest.raises(InvalidKeyError, match=what):
            await repo.write_bytes(key, b"x")
        with pytest.raises(InvalidKeyError, match="255 bytes"):
            await repo.contains(key)
    for key in (".hidden", "a/.git/config", "a/.b"):
        with pytest.raises(InvalidKeyError, match="hidden"):
            await repo.write_bytes(key, b"x")
        with pytest.raises(InvalidKeyError, match="hidden"):
            repo.path(key)
    yaml = YamlMetadataFileRepository(tmp_path / "y")
    with pytest.raises(InvalidKeyError, match="255 bytes"):
        await yaml.put("v" * 251, 1)
    with pytest.raises(InvalidKeyError, match="hidden"):
        await yaml.get("a/.b")


def test_temporaries_of_long_names_fit() -> None:
    name = "\u00e9" * 127  # 254 bytes
    tmp = tmp_name(name)
    assert len(tmp.encode()) <= 255 and tmp.startswith(".")


async def test_hidden_directories_and_links_are_not_listed(tmp_path: Path) -> None:
    root = tmp_path / "r"
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("no")
    repo = FileRepository(root, ".txt")
    await repo.write_bytes("a/b", b"x")
    (root / ".git").mkdir()
    (root / ".git" / "HEAD.txt").write_text("ref")
    (root / "a" / ".cache").mkdir()
    (root / "a" / ".cache" / "c.txt").write_text("c")
    (root / "link").symlink_to(outside, target_is_directory=True)
    assert await repo.keys() == {"a/b"}
    assert set(await repo.versions()) == {"a/b"}


async def test_key_and_prefix_conflicts_are_clear(tmp_path: Path) -> None:
    repo = FileRepository(tmp_path / "r")
    await repo.write_bytes("a", b"file")
    for write in (
        lambda: repo.write_bytes("a/b", b"x"),
        lambda: repo.create_bytes("a/b", b"x"),
        lambda: _stream(repo, "a/b"),
    ):
        with pytest.raises(
            RepositoryError, match=r"cannot store key 'a/b': .* is a file \(the key 'a'\)"
        ) as info:
            await write()
        assert "\n" not in str(info.value)
    assert not await repo.contains("a/b")
    with pytest.raises(Exception) as missing:
        await repo.read_bytes("a/b")
    assert type(missing.value).__name__ == "KeyNotFoundError"
    await repo.delete("a/b")  # absent: silent
    await repo.write_bytes("d/e", b"x")
    for write in (
        lambda: repo.write_bytes("d", b"x"),
        lambda: repo.create_bytes("d", b"x"),
        lambda: _stream(repo, "d"),
    ):
        with pytest.raises(RepositoryError, match=r"cannot store key 'd': .* is a directory"):
            await write()
    assert await repo.keys() == {"a", "d/e"}
    assert await repo.read_bytes("a") == b"file" and await repo.read_bytes("d/e") == b"x"
    assert _tree(tmp_path / "r") == {"a", "d", "d/e"}  # no temporaries left behind
    with_extension = FileRepository(tmp_path / "x", ".txt")
    await with_extension.write_bytes("a", b"1")
    await with_extension.write_bytes("a/b", b"2")
    assert await with_extension.keys() == {"a", "a/b"}


async def _stream(repo: FileRepository, key: str) -> None:
    async with repo.open(key, "wb") as f:
        await f.write(b"streamed")


async def test_concurrent_writes_and_deletes_in_one_directory(tmp_path: Path) -> None:
    repo = FileRepository(tmp_path, fsync=False)

    async def churn(i: int) -> None:
        for _ in range(20):
            await repo.write_bytes(f"shared/dir/k{i}", b"x")
            await repo.delete(f"shared/dir/k{i}")

    await asyncio.gather(*(asyncio.to_thread(asyncio.run, churn(i)) for i in range(4)))
    assert await repo.keys() == set()


async def test_versions_of_files(tmp_path: Path) -> None:
    repo = FileRepository(tmp_path, ".bin")
    await repo.write_bytes("a/b", b"same")
    first = (await repo.versions())["a/b"]
    await repo.write_bytes("a/b", b"same")  # same size, within one clock tick maybe: new inode
    second = (await repo.versions())["a/b"]
    assert first != second
    path = tmp_path / "a" / "b.bin"
    st = path.stat()
    path.write_bytes(b"edited in place, longer")  # another program: size and mtime change
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    assert (await repo.versions())["a/b"] not in (first, second)


async def test_directory_repository_nested_keys(tmp_path: Path) -> None:
    repo = DirectoryRepository(tmp_path / "d")
    async with repo.open_dir("runs/2024/r 1") as tmp:
        (tmp / "out.txt").write_text("o")
        (tmp / "sub").mkdir()  # a subdirectory of a key's value is not a key
        (tmp / "sub" / "x").write_text("x")
    await repo.mkdir("runs/2025")
    assert await repo.keys() == {"runs/2024/r 1", "runs/2025"}
    assert (repo.path("runs/2024/r 1") / "sub" / "x").read_text() == "x"
    assert set(await repo.versions()) == {"runs/2024/r 1", "runs/2025"}
    assert await repo.contains("runs/2024/r 1") and not await repo.contains("runs")
    await repo.delete("runs")  # a prefix, not a key: nothing happens
    assert await repo.keys() == {"runs/2024/r 1", "runs/2025"}
    with pytest.raises(
        RepositoryError, match="cannot store key 'runs/2025/x': .* is the directory of the key"
    ):
        await repo.mkdir("runs/2025/x")
    with pytest.raises(RepositoryError, match="cannot store key 'runs/2024': .* holds other keys"):
        async with repo.open_dir("runs/2024") as tmp:
            (tmp / "f").write_text("f")
    assert await repo.keys() == {"runs/2024/r 1", "runs/2025"}
    assert not [p for p in (tmp_path / "d").rglob(".*tmp-*")]  # the failed write left nothing
    await repo.delete("runs/2024/r 1")
    assert await repo.keys() == {"runs/2025"}


async def test_sweep_reaches_nested_temporaries(tmp_path: Path) -> None:
    repo = FileRepository(tmp_path, ".txt")
    await repo.write_bytes("a/b/c", b"x")
    dead = tmp_path / "a" / "b" / ".c.txt.tmp-999999999-abcdef"
    dead.write_bytes(b"half")
    await repo.validate()
    assert not dead.exists()
    assert await repo.read_bytes("a/b/c") == b"x"


async def test_directory_prefixes_made_concurrently(tmp_path: Path) -> None:
    import threading

    repo = DirectoryRepository(tmp_path / "d", fsync=False)
    rounds, writers = 20, 8
    barrier = threading.Barrier(writers)
    errors: list[Exception] = []

    def write(i: int) -> None:
        try:
            for r in range(rounds):
                barrier.wait(timeout=30)  # every writer makes the same new prefixes at once
                repo._make_prefixes(f"p{r}/q/k{i}")
                repo.path(f"p{r}/q/k{i}").mkdir()
        except Exception as exc:
            errors.append(exc)
            barrier.abort()  # the others stop at once instead of waiting for this writer

    def run_all() -> None:  # threads of their own: the loop's default pool may be smaller
        threads = [threading.Thread(target=write, args=(i,)) for i in range(writers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    await asyncio.to_thread(run_all)
    assert not errors, [e for e in errors if not isinstance(e, threading.BrokenBarrierError)][:1]
    assert await repo.keys() == {f"p{r}/q/k{i}" for r in range(rounds) for i in range(writers)}
    assert not [p for p in (tmp_path / "d").rglob(".*tmp-*")]


async def test_durable_deletes_of_siblings_at_once(tmp_path: Path) -> None:
    """Durable deletes of the last keys of one directory at the same time: one of them
    removes the emptied directory before another syncs it; neither fails."""
    repo = YamlMetadataFileRepository(tmp_path / "claims")  # durable: fsync on
    keys = [f"a/b/k{i}" for i in range(16)]
    for _ in range(10):
        assert all(await asyncio.gather(*(repo.create(k, {"n": 1}) for k in keys)))
        await asyncio.gather(*(repo.delete(k) for k in keys))
        assert await repo.keys() == set()
    assert not (tmp_path / "claims" / "a").exists()
