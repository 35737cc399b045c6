from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

import pytest

from pydatatask import (
    CorruptValueError,
    DirectoryRepository,
    FileRepository,
    InvalidKeyError,
    JsonMetadataFileRepository,
    KeyNotFoundError,
    YamlMetadataFileRepository,
)
from pydatatask.errors import ConfigurationError


async def test_invalid_stored_names_skipped_with_one_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    repo = FileRepository(tmp_path, ".txt")
    (tmp_path / "good.txt").write_text("x")
    (tmp_path / "has\ttab.txt").write_text("x")
    (tmp_path / "cafe\u0301.txt").write_text("x")  # not NFC
    (tmp_path / "new\nline.txt").write_text("x")
    (tmp_path / "unrelated.bin").write_text("x")
    with caplog.at_level(logging.WARNING, logger="pydatatask.repository"):
        assert await repo.keys() == {"good"}
        assert await repo.keys() == {"good"}
        assert set(await repo.versions()) == {"good"}
    warnings = [r for r in caplog.records if "not valid keys" in r.getMessage()]
    assert len(warnings) == 1
    assert "has\\ttab" in warnings[0].getMessage()


async def test_a_large_listing_skips_the_same_names_as_a_small_one(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # a listing of many names is checked all at once in its common case; the odd names
    # among them (and nested keys longer than a file name) are still told apart one by one
    repo = FileRepository(tmp_path, ".txt")
    plain = {f"k{i:03d}" for i in range(30)}
    for k in plain:
        (tmp_path / f"{k}.txt").write_text("x")
    (tmp_path / "has\ttab.txt").write_text("x")
    (tmp_path / "new\nline.txt").write_text("x")
    (tmp_path / "cafe\u0301.txt").write_text("x")  # not NFC
    deep = "/".join(["d" * 100] * 3) + "/leaf"  # 307 characters: no file name is this long
    (tmp_path / deep).parent.mkdir(parents=True)
    (tmp_path / f"{deep}.txt").write_text("x")
    with caplog.at_level(logging.WARNING, logger="pydatatask.repository"):
        assert await repo.keys() == plain | {deep}
        assert set(await repo.versions()) == plain | {deep}
        records = YamlMetadataFileRepository(tmp_path, ".txt")
        assert await records.keys() == plain | {deep}
    warnings = [r for r in caplog.records if "not valid keys" in r.getMessage()]
    assert len(warnings) == 2  # one per repository
    assert "new\\nline" in warnings[0].getMessage()


async def test_no_key_escapes_the_root(tmp_path: Path) -> None:
    root = tmp_path / "root"
    repo = FileRepository(root)
    for key in ("../escape", "..", "a/../../b", "/etc/passwd", "a//b", "a/"):
        with pytest.raises(InvalidKeyError):
            await repo.write_bytes(key, b"x")
        with pytest.raises(InvalidKeyError):
            repo.path(key)
    assert not (tmp_path / "escape").exists()
    assert sorted(os.listdir(tmp_path)) == []


async def test_broken_yaml_is_a_clear_error(tmp_path: Path) -> None:
    repo = YamlMetadataFileRepository(tmp_path)
    (tmp_path / "bad.yaml").write_text("key: [unclosed\n  - : :\n")
    with pytest.raises(CorruptValueError, match="'bad'"):
        await repo.get("bad")
    jrepo = JsonMetadataFileRepository(tmp_path)
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(CorruptValueError, match="JSON"):
        await jrepo.get("bad")
    with pytest.raises(KeyNotFoundError):
        await jrepo.get("absent")


async def test_yaml_file_is_human_readable(tmp_path: Path) -> None:
    repo = YamlMetadataFileRepository(tmp_path)
    await repo.put("rec", {"success": True, "n": 3})
    assert (tmp_path / "rec.yaml").read_text() == "success: true\nn: 3\n"


async def test_directory_repository(tmp_path: Path) -> None:
    repo = DirectoryRepository(tmp_path)
    assert await repo.keys() == set()
    async with repo.open_dir("job1") as d:
        (d / "a.txt").write_text("a")
        assert not await repo.contains("job1")
    assert await repo.keys() == {"job1"}
    assert (repo.path("job1") / "a.txt").read_text() == "a"
    with pytest.raises(RuntimeError):
        async with repo.open_dir("job2") as d:
            (d / "partial").write_text("p")
            raise RuntimeError("boom")
    assert await repo.keys() == {"job1"}
    assert sorted(os.listdir(tmp_path)) == ["job1"]
    async with repo.open_dir("job1") as d:
        (d / "b.txt").write_text("b")
    assert sorted(os.listdir(repo.path("job1"))) == ["b.txt"]
    await repo.delete("job1")
    await repo.delete("job1")
    assert await repo.keys() == set()
    assert os.listdir(tmp_path) == []
    await repo.mkdir("empty")
    assert await repo.contains("empty")
    with pytest.raises(InvalidKeyError):
        async with repo.open_dir("../x"):
            pass


async def test_validate_creates_root(tmp_path: Path) -> None:
    repo = FileRepository(tmp_path / "a" / "b")
    await repo.validate()
    assert not (tmp_path / "a").exists()
    await repo.validate(create=True)
    assert (tmp_path / "a" / "b").is_dir()
    (tmp_path / "file").write_text("")
    from pydatatask import RepositoryError

    with pytest.raises(RepositoryError, match="not a directory"):
        await FileRepository(tmp_path / "file").validate()


async def test_validate_while_another_scheduler_creates_the_root(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Two schedulers validating one state directory at once: the other one creates the
    # root right after this one first looks at it. That is not "exists and is not a
    # directory" (a full run saw it fail so).
    root = tmp_path / "state" / "logs"
    real_is_dir = Path.is_dir

    def is_dir_then_created_by_another(self: Path) -> bool:
        seen = real_is_dir(self)
        if self == root and not seen:
            root.mkdir(parents=True, exist_ok=True)
        return seen

    monkeypatch.setattr(Path, "is_dir", is_dir_then_created_by_another)
    repo = FileRepository(root, ".log")
    await repo.validate(create=True)
    assert real_is_dir(root)
    await repo.validate(create=True)


def test_bad_extension() -> None:
    with pytest.raises(ConfigurationError):
        FileRepository("x", "/etc")


async def test_file_writers_race_on_one_key(tmp_path: Path) -> None:
    repo = FileRepository(tmp_path)
    payloads = [bytes([i]) * 50_000 for i in range(20)]
    await asyncio.gather(*(repo.write_bytes("same", p) for p in payloads))
    assert await repo.read_bytes("same") in payloads
    assert os.listdir(tmp_path) == ["same"]


async def test_validate_sweeps_temporaries_of_killed_writers(tmp_path: Path) -> None:
    dead = await asyncio.create_subprocess_exec("true")
    await dead.wait()  # a pid that no longer runs
    repo = FileRepository(tmp_path, ".txt")
    (tmp_path / f".k.txt.tmp-{dead.pid}-abcdef123456").write_bytes(b"half written by a killed writer")
    live = tmp_path / f".j.txt.tmp-{os.getpid()}-abcdef123456"
    live.write_bytes(b"being written right now")
    (tmp_path / "k.txt").write_bytes(b"done")
    await repo.validate()
    assert sorted(os.listdir(tmp_path)) == [live.name, "k.txt"]


async def test_small_whole_files_stay_on_the_loop_large_ones_go_to_a_thread(tmp_path: Path) -> None:
    """Whole-value reads/writes/creates of small files cost no thread hop when they are not
    fsynced; large values (and fsync writes on a disk) use the loop's executor. Both
    round-trip exactly."""
    from concurrent.futures import ThreadPoolExecutor

    from pydatatask.repository.filesystem import SMALL_FILE

    submitted: list[str] = []

    class Counting(ThreadPoolExecutor):
        def submit(self, fn, /, *args, **kwargs):  # type: ignore[no-untyped-def]
            submitted.append(getattr(fn, "__name__", repr(fn)))
            return super().submit(fn, *args, **kwargs)

    loop = asyncio.get_running_loop()
    executor = Counting(max_workers=2)
    loop.set_default_executor(executor)
    repo = FileRepository(tmp_path / "r", ".bin", fsync=False)
    small, large = b"s" * 100, os.urandom(SMALL_FILE + 1)
    await repo.write_bytes("small", small)
    assert await repo.create_bytes("small2", small)
    assert await repo.read_bytes("small") == small
    assert submitted == []
    await repo.write_bytes("large", large)
    assert len(submitted) == 1
    assert await repo.read_bytes("large") == large
    assert len(submitted) == 2
    synced = FileRepository(tmp_path / "r", ".bin", fsync=True)
    await synced.write_bytes("synced", small)
    assert len(submitted) == 3 and await repo.read_bytes("synced") == small
    assert sorted(await repo.keys()) == ["large", "small", "small2", "synced"]
    assert [p.name for p in (tmp_path / "r").iterdir() if p.name.startswith(".")] == []


async def test_small_directories_in_memory_are_listed_on_the_loop_others_in_a_thread(tmp_path: Path) -> None:
    """A flat root on a tmpfs whose entries fit in SMALL_DIR bytes is swept and listed with
    no thread hop; a larger one, a nested one and one on the disk go to the executor. The
    listings are the same either way."""
    import shutil
    import tempfile
    from concurrent.futures import ThreadPoolExecutor

    from pydatatask.repository._localfs import on_memory_fs
    from pydatatask.repository.filesystem import SMALL_DIR

    if not on_memory_fs(Path("/dev/shm")):
        pytest.fail("this test needs the tmpfs at /dev/shm", pytrace=False)
    submitted: list[str] = []

    class Counting(ThreadPoolExecutor):
        def submit(self, fn, /, *args, **kwargs):  # type: ignore[no-untyped-def]
            submitted.append(getattr(fn, "__name__", repr(fn)))
            return super().submit(fn, *args, **kwargs)

    asyncio.get_running_loop().set_default_executor(Counting(max_workers=2))
    shm = Path(tempfile.mkdtemp(prefix="pdt-listing-", dir="/dev/shm"))
    try:
        for where in (shm, tmp_path):
            for i in range(50):
                (where / f"k{i:02d}.txt").write_text("x")
            (where / f".k00.txt.tmp-{2**22 + 7}-abc").write_text("x")  # a killed writer's
        keys = {f"k{i:02d}" for i in range(50)}
        small = FileRepository(shm, ".txt")
        records = YamlMetadataFileRepository(shm, ".txt")
        await small.validate()
        assert not (shm / f".k00.txt.tmp-{2**22 + 7}-abc").exists()
        assert await small.keys() == keys and set(await small.versions()) == keys
        assert await records.keys() == keys
        assert submitted == []
        on_disk = FileRepository(tmp_path, ".txt")
        await on_disk.validate()
        assert not (tmp_path / f".k00.txt.tmp-{2**22 + 7}-abc").exists()
        assert await on_disk.keys() == keys
        assert len(submitted) == 2  # the sweep and the walk
        (shm / "sub").mkdir()
        (shm / "sub" / "k.txt").write_text("x")
        assert await small.keys() == keys | {"sub/k"}  # a subdirectory: a thread
        assert len(submitted) == 3
        shutil.rmtree(shm / "sub")
        name = "n" * 200
        i = 0
        while os.stat(shm).st_size <= SMALL_DIR:
            (shm / f"{name}{i:05d}.txt").write_text("x")
            i += 1
        assert len(await small.keys()) == 50 + i  # too many entries: a thread
        assert len(submitted) == 4
    finally:
        shutil.rmtree(shm, ignore_errors=True)
