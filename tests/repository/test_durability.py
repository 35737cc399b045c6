"""File repositories make each change durable before it returns (``fsync=True``, the default).

The system calls are observed, not replaced: ``os.fsync``, ``os.replace``, ``os.rename``,
``os.link`` and ``os.unlink`` are wrapped to record what they were called on and then do
their real work, so the tests check the order that makes a name durable after a power
loss: the file's data before its name, the name (an fsync of its directory) before the
call returns.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from pydatatask.pipeline import Pipeline
from pydatatask.repository import DirectoryRepository, FileRepository, YamlMetadataFileRepository
from pydatatask.repository._localfs import on_memory_fs
from pydatatask.repository.memory import MemoryMetadataRepository
from pydatatask.task import FunctionTask

ROOT = Path(__file__).resolve().parents[2]

Event = tuple[str, ...]


class Syscalls:
    """What the wrapped calls were made on, in order (from any thread)."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self._lock = threading.Lock()

    def add(self, *event: str) -> None:
        with self._lock:
            self.events.append(event)

    def fsynced(self) -> list[str]:
        return [e[1] for e in self.events if e[0] == "fsync"]

    def index(self, event: Event, after: int = -1) -> int:
        """Where ``event`` first happened after position ``after``."""
        return self.events.index(event, after + 1)

    def clear(self) -> None:
        with self._lock:
            self.events.clear()


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> Syscalls:
    seen = Syscalls()
    real_fsync, real_replace, real_rename = os.fsync, os.replace, os.rename
    real_link, real_unlink = os.link, os.unlink

    def fsync(fd: int) -> None:
        seen.add("fsync", os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    def two(name: str, real: Callable[..., None]) -> Callable[..., None]:
        def call(src: Any, dst: Any, *args: Any, **kwargs: Any) -> None:
            real(src, dst, *args, **kwargs)
            seen.add(name, os.fspath(src), os.fspath(dst))

        return call

    def unlink(path: Any, *args: Any, **kwargs: Any) -> None:
        real_unlink(path, *args, **kwargs)
        seen.add("unlink", os.fspath(path))

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", two("replace", real_replace))
    monkeypatch.setattr(os, "rename", two("rename", real_rename))
    monkeypatch.setattr(os, "link", two("link", real_link))
    monkeypatch.setattr(os, "unlink", unlink)
    return seen


@pytest.fixture
def disk() -> Iterator[Path]:
    """A fresh directory on a real disk (not a tmpfs, where fsync is skipped by design)."""
    base = Path(tempfile.gettempdir())
    if on_memory_fs(base):
        base = ROOT
    assert not on_memory_fs(base), f"no disk-backed directory found ({base} is in memory)"
    path = Path(tempfile.mkdtemp(prefix=".pdt-durability-", dir=base)).resolve()
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _durable_write(calls: Syscalls, final: Path) -> None:
    """``final`` was written as: fsync(temporary), rename(temporary, final), fsync(dir)."""
    final_s = str(final)
    renames = [e for e in calls.events if e[0] == "replace" and e[2] == final_s]
    assert len(renames) == 1, calls.events
    rename = renames[0]
    tmp = rename[1]
    assert calls.index(("fsync", tmp)) < calls.index(rename), "data not synced before the rename"
    assert calls.index(("fsync", str(final.parent)), after=calls.index(rename)), "directory not synced"


async def test_writes_creates_replaces_and_deletes_are_durable_by_default(
    disk: Path, calls: Syscalls
) -> None:
    repo = FileRepository(disk / "r", ".txt")
    assert repo.fsync is True
    await repo.write_bytes("a", b"1")
    _durable_write(calls, disk / "r" / "a.txt")

    calls.clear()
    async with repo.open("b", "wb") as f:
        await f.write(b"streamed")
    _durable_write(calls, disk / "r" / "b.txt")

    calls.clear()
    assert await repo.create_bytes("c", b"claim")
    link = next(e for e in calls.events if e[0] == "link")
    assert link[2] == str(disk / "r" / "c.txt")
    assert calls.index(("fsync", link[1])) < calls.index(link)
    assert calls.index(("fsync", str(disk / "r")), after=calls.index(link))
    calls.clear()
    assert not await repo.create_bytes("c", b"another")  # taken: nothing new to sync
    assert str(disk / "r") not in calls.fsynced()

    calls.clear()
    assert await repo.replace_bytes_if("c", b"claim", b"taken over")
    _durable_write(calls, disk / "r" / "c.txt")

    calls.clear()
    await repo.delete("a")
    unlink = ("unlink", str(disk / "r" / "a.txt"))
    assert calls.index(("fsync", str(disk / "r")), after=calls.index(unlink))
    assert await repo.read_bytes("c") == b"taken over" and not await repo.contains("a")


async def test_new_directories_are_synced_in_their_parents(disk: Path, calls: Syscalls) -> None:
    """The first write creates the root and its missing parents: each new entry is made
    durable in its parent, up to the first directory that already existed."""
    repo = FileRepository(disk / "a" / "b" / "root", ".txt")
    await repo.write_bytes("k", b"deep")
    synced = calls.fsynced()
    for d in (disk, disk / "a", disk / "a" / "b", disk / "a" / "b" / "root"):
        assert str(d) in synced, (d, synced)
    assert str(disk.parent) not in synced
    await repo.validate()
    calls.clear()
    other = YamlMetadataFileRepository(disk / "made-by-validate")
    await other.validate(create=True)
    assert str(disk) in calls.fsynced()


async def test_fsync_false_and_memory_filesystems_do_not_sync(disk: Path, calls: Syscalls) -> None:
    fast = FileRepository(disk / "fast", ".txt", fsync=False)
    await fast.write_bytes("a", b"1")
    assert await fast.create_bytes("b", b"2")
    await fast.delete("a")
    assert calls.fsynced() == []
    if not on_memory_fs(Path("/dev/shm")):
        pytest.fail("this test needs the tmpfs at /dev/shm", pytrace=False)
    shm = Path(tempfile.mkdtemp(prefix="pdt-durability-", dir="/dev/shm"))
    try:
        mem = FileRepository(shm / "new" / "r", ".txt")
        await mem.write_bytes("a", b"1")
        assert await mem.create_bytes("c", b"2")
        await mem.delete("c")
        assert calls.fsynced() == []
        assert await mem.read_bytes("a") == b"1"
    finally:
        shutil.rmtree(shm, ignore_errors=True)


async def test_directory_values_are_synced_before_they_get_their_name(disk: Path, calls: Syscalls) -> None:
    repo = DirectoryRepository(disk / "dirs")
    async with repo.open_dir("k") as tmp:
        (tmp / "sub").mkdir()
        (tmp / "sub" / "x.bin").write_bytes(b"x")
        (tmp / "y.bin").write_bytes(b"y")
        tmp_s = str(tmp)
    rename = next(e for e in calls.events if e[0] == "rename" and e[1] == tmp_s)
    for inner in ("sub/x.bin", "y.bin", "sub", ""):
        path = os.path.join(tmp_s, inner) if inner else tmp_s
        assert calls.index(("fsync", path)) < calls.index(rename), inner
    assert calls.index(("fsync", str(disk / "dirs")), after=calls.index(rename))
    calls.clear()
    await repo.delete("k")
    assert str(disk / "dirs") in calls.fsynced()
    assert await repo.keys() == set()


async def test_state_dir_claims_and_records_are_durable_in_the_order_that_matters(
    disk: Path, calls: Syscalls
) -> None:
    """The claim is on the disk before the job writes anything (a power loss then leaves
    a claim that gets the partial output cleaned up), the output before the success
    record, and the record before the claim is dropped."""
    out = FileRepository(disk / "out", ".txt")
    order: list[tuple[str, int]] = []

    async def work(key: str, dst: FileRepository) -> None:
        order.append(("job starts", len(calls.events)))
        await dst.write_bytes(key, b"done")

    task = FunctionTask("t", work, inputs={"src": MemoryMetadataRepository({"k": 1})}, outputs={"dst": out})
    summary = await Pipeline([task], state_dir=disk / "state").run()
    assert summary.succeeded == 1
    live, done = disk / "state" / "t" / "live", disk / "state" / "t" / "done"
    link = next(e for e in calls.events if e[0] == "link" and e[2] == str(live / "k.yaml"))
    assert calls.index(("fsync", link[1])) < calls.index(link)
    claim_synced = calls.index(("fsync", str(live)), after=calls.index(link))
    assert claim_synced < order[0][1], "the job started before its claim was durable"
    _durable_write(calls, disk / "out" / "k.txt")
    _durable_write(calls, done / "k.yaml")
    record = next(e for e in calls.events if e[0] == "replace" and e[2] == str(done / "k.yaml"))
    output = next(e for e in calls.events if e[0] == "replace" and e[2] == str(disk / "out" / "k.txt"))
    output_synced = calls.index(("fsync", str(disk / "out")), after=calls.index(output))
    record_synced = calls.index(("fsync", str(done)), after=calls.index(record))
    dropped = calls.index(("unlink", str(live / "k.yaml")))
    assert output_synced < calls.index(record) < record_synced < dropped


async def test_temporaries_from_before_the_last_boot_are_swept(disk: Path) -> None:
    """After a power loss the pid in a temporary's name may belong to a new process: a
    temporary older than the boot is debris whatever its pid."""
    from pydatatask.repository._localfs import boot_time

    booted = boot_time()
    assert booted > 0
    repo = FileRepository(disk, ".txt")
    old = disk / f".k.txt.tmp-{os.getpid()}-abcdef123456"  # a pid that is alive (ours)
    old.write_bytes(b"written before the power went out")
    os.utime(old, (booted - 60, booted - 60))
    current = disk / f".j.txt.tmp-{os.getpid()}-abcdef654321"
    current.write_bytes(b"being written now")
    await repo.validate()
    assert sorted(os.listdir(disk)) == [current.name]


async def test_durable_small_writes_run_off_the_loop_on_disk(
    disk: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """fsync blocks for as long as the disk takes: durable writes go to a thread."""
    main = threading.get_ident()
    threads: list[int] = []
    real = os.fsync

    def fsync(fd: int) -> None:
        threads.append(threading.get_ident())
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    repo = FileRepository(disk / "r")
    await repo.write_bytes("a", b"1")
    assert await repo.create_bytes("b", b"2")
    await repo.delete("a")
    assert len(threads) >= 5 and main not in threads


async def test_bulk_writes_creates_and_deletes_sync_each_directory_once(disk: Path, calls: Syscalls) -> None:
    """A batch's records, claims and releases: every file is synced before its name, and
    each directory once, after all of the call's names in it, before the call returns."""
    repo = YamlMetadataFileRepository(disk / "r")
    keys = [f"k{i}" for i in range(12)] + [f"sub/k{i}" for i in range(5)]
    dirs = {str(disk / "r"), str(disk / "r" / "sub")}
    await repo.put("sub/first", {"v": 0})  # the subdirectory exists: only its entries change
    calls.clear()
    await repo.put_many({k: {"v": k} for k in keys})
    renames = [e for e in calls.events if e[0] == "replace"]
    assert sorted(e[2] for e in renames) == sorted(str(disk / "r" / f"{k}.yaml") for k in keys)
    for rename in renames:
        assert calls.index(("fsync", rename[1])) < calls.index(rename), "data not synced before the rename"
    synced_dirs = [p for p in calls.fsynced() if p in dirs]
    assert sorted(synced_dirs) == sorted(dirs), "one sync per directory, not one per key"
    for d in dirs:
        last = max(calls.events.index(e) for e in renames if os.path.dirname(e[2]) == d)
        assert calls.index(("fsync", d)) > last, "a directory synced before its last rename"
    assert (await repo.get_many(keys))["sub/k3"] == {"v": "sub/k3"}

    calls.clear()
    made = await repo.create_many({"k0": {"v": "again"}, "new": {"v": 1}, "sub/new": {"v": 2}})
    assert made == {"new", "sub/new"}
    links = [e for e in calls.events if e[0] == "link"]
    for link in links:
        assert calls.index(("fsync", link[1])) < calls.index(link)
    assert sorted(p for p in calls.fsynced() if p in dirs) == sorted(dirs)
    assert calls.index(("fsync", str(disk / "r")), after=calls.events.index(links[-1]))
    assert await repo.get("k0") == {"v": "k0"}

    calls.clear()
    await repo.delete_many([*keys, "absent"])
    unlinks = [e for e in calls.events if e[0] == "unlink"]
    assert len(unlinks) == len(keys)
    assert sorted(p for p in calls.fsynced() if p in dirs) == sorted(dirs)
    assert calls.index(("fsync", str(disk / "r")), after=calls.events.index(unlinks[-1]))
    assert await repo.keys() == {"new", "sub/new", "sub/first"}


def test_concurrent_directory_syncs_share_fsyncs(disk: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Threads that sync one directory at once share fsyncs, and each returns only after
    an fsync that started after it asked (so it covers the change it made before)."""
    from pydatatask.repository._localfs import fsync_dir

    events: list[tuple[str, int]] = []
    lock = threading.Lock()
    gate = threading.Event()
    real = os.fsync
    runs = 0

    def slow_fsync(fd: int) -> None:
        nonlocal runs
        with lock:
            runs += 1
            n = runs
            events.append(("start", n))
        gate.wait(5)  # the first fsync holds until every caller has asked
        real(fd)
        with lock:
            events.append(("end", n))

    monkeypatch.setattr(os, "fsync", slow_fsync)

    def caller(i: int) -> None:
        with lock:
            events.append(("ask", i))
        fsync_dir(disk)
        with lock:
            events.append(("back", i))

    threads = [threading.Thread(target=caller, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    while sum(1 for e in events if e[0] == "ask") < 8:
        threading.Event().wait(0.01)
    gate.set()
    for t in threads:
        t.join(10)
    assert runs < 8, f"{runs} fsyncs for 8 concurrent callers: none shared"
    for i in range(8):
        asked, back = events.index(("ask", i)), events.index(("back", i))
        covered = [
            n
            for kind, n in events
            if kind == "start" and asked < events.index(("start", n)) and events.index(("end", n)) < back
        ]
        assert covered, f"caller {i} returned without an fsync that started after it asked"


async def test_a_batch_syncs_the_directories_of_its_claims_and_records_once(
    disk: Path, calls: Syscalls
) -> None:
    """``state_dir`` claims, records and releases of a batch go through the bulk calls of
    the file repositories: a few directory syncs per batch, not some per key."""
    keys = [f"k{i}" for i in range(20)]

    def work(keys: list[str], src: dict[str, int]) -> dict[str, dict[str, int]]:
        return {k: {"dst": src[k] + 1} for k in keys}

    task = FunctionTask(
        "t",
        work,
        inputs={"src": MemoryMetadataRepository(dict.fromkeys(keys, 1))},
        outputs={"dst": MemoryMetadataRepository()},
        batch=20,
    )
    summary = await Pipeline([task], state_dir=disk / "state").run()
    assert summary.succeeded == 20
    live, done = disk / "state" / "t" / "live", disk / "state" / "t" / "done"
    synced = calls.fsynced()
    assert synced.count(str(done)) <= 2, synced.count(str(done))
    assert synced.count(str(live)) <= 3, synced.count(str(live))  # claims, release, its creation
    # the claims are one file (the batch's bundle), synced once, not one file per key
    claim_files = [p for p in synced if p.startswith(f"{live}/") and ".tmp-" in p]
    assert len(claim_files) == 1, claim_files
    assert synced.count(str(live / ".pdt-bundles")) <= 3, synced.count(str(live / ".pdt-bundles"))
    assert len(os.listdir(done)) == 20 and os.listdir(live) == [".pdt-lock"]  # (the directory's lock)
