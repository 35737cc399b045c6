"""The host executors (LocalHost, SSHHost, Hosts): the executor conformance suite on a
local and a real SSH host, and what hosts do beyond it (exit codes, staged files in and
out, quotas of CPU and memory, spreading over several hosts, recovery by name)."""

from __future__ import annotations

import asyncio
import os
import secrets
import shlex
import shutil
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from pydatatask._procfs import parse_start_time, process_start_time
from pydatatask.errors import BackendUnavailableError, ConfigurationError
from pydatatask.executor import Hosts, LocalHost
from pydatatask.executor.base import Executor, FunctionCall, JobHandle, ProcessWork, Resources, Work
from pydatatask.executor.hosts import Host, HostFile
from pydatatask.executor.quota import LaunchRate
from pydatatask.testing.executor import ExecutorTests
from tests.conftest import service

ONE = Resources(cpu=1, memory=1 << 20)


async def _chunks(data: bytes) -> AsyncIterator[bytes]:
    yield data


class HostContract:
    """Tests every host executor passes; subclasses give ``make`` (a fresh host object on
    the same machine and workdir each call)."""

    make: Callable[..., Host]

    async def start(self, host: Host, work: ProcessWork) -> JobHandle:
        slot = host.acquire(ONE)
        assert slot is not None
        return await host.start(work, slot)

    async def test_outcomes_and_exit_codes(self) -> None:
        host = self.make()
        try:
            handles = [
                await self.start(host, ProcessWork(command=c)) for c in ("true", "exit 3", "kill -9 $$")
            ]
            outcomes = [await h.wait() for h in handles]
            assert [o.exit_code for o in outcomes] == [0, 3, 137]
            assert all(o.place == host.name and o.error is None for o in outcomes)
            assert outcomes[0].ok and not outcomes[1].ok
            for h in handles:
                assert h.info["host"] == host.name and isinstance(h.info["dir"], str)
                await h.close()
                await h.close()  # idempotent
                assert not await _exists(host, h.info["dir"])
        finally:
            await host.aclose()

    async def test_logs_of_the_output_the_host_kept(self) -> None:
        host = self.make()
        try:
            handle = await self.start(
                host, ProcessWork(command='echo "hello $WHO"; echo oops >&2', env={"WHO": "you"})
            )
            assert (await handle.wait()).exit_code == 0
            logs = await handle.logs()
            assert b"hello you" in logs and b"oops" in logs
            await handle.close()
        finally:
            await host.aclose()

    async def test_script_and_staged_files(self, tmp_path: Path) -> None:
        local = tmp_path / "given.txt"
        local.write_text("from a path\n")
        got: dict[str, bytes] = {}

        async def sink(found: HostFile) -> None:
            got[found.name] = b"".join([c async for c in found.chunks()])

        host = self.make()
        try:
            work = ProcessWork(
                command="cat in/a.txt in/b/given.txt > out/r.txt\n",
                script=True,
                files_in={"in/a.txt": lambda: _chunks(b"from bytes\n"), "in/b/given.txt": local},
                files_out={"out/r.txt": sink},
            )
            handle = await self.start(host, work)
            outcome = await handle.wait()
            assert outcome.ok, outcome
            assert got == {"out/r.txt": b"from bytes\nfrom a path\n"}
            await handle.close()
        finally:
            await host.aclose()

    async def test_staged_bytes_and_whatever_the_command_left_are_removed(self, tmp_path: Path) -> None:
        """Inputs given as bytes are written into the job directory; closing the handle
        removes the directory with everything in it, also what the command added."""
        given = tmp_path / "given.txt"
        given.write_text("from a path\n")
        got: dict[str, bytes] = {}

        async def sink(found: HostFile) -> None:
            got[found.name] = b"".join([c async for c in found.chunks()])

        host = self.make()
        try:
            work = ProcessWork(
                command="cat in/x/k.txt in/p.txt > out/r.txt; mkdir -p extra/deeper; echo left > extra/deeper/f",
                files_in={"in/x/k.txt": b"from bytes\n", "in/p.txt": given},
                files_out={"out/r.txt": sink},
            )
            handle = await self.start(host, work)
            outcome = await handle.wait()
            assert outcome.ok, outcome
            assert got == {"out/r.txt": b"from bytes\nfrom a path\n"}
            assert await host._read_text(f"{handle.info['dir']}/extra/deeper/f") == "left\n"
            await handle.close()
            assert not await host._exists(handle.info["dir"])
        finally:
            await host.aclose()

    async def test_an_output_not_written_is_an_error_of_the_outcome(self) -> None:
        async def sink(found: HostFile) -> None:
            async for _ in found.chunks():
                pass

        host = self.make()
        try:
            handle = await self.start(host, ProcessWork(command="true", files_out={"out/x": sink}))
            outcome = await handle.wait()
            assert outcome.exit_code == 0 and isinstance(outcome.error, FileNotFoundError)
            await handle.close()
        finally:
            await host.aclose()

    async def test_cancel_with_grace(self) -> None:
        host = self.make()
        try:
            # TERM is trapped: a marker, then a clean exit
            polite = await self.start(
                host,
                ProcessWork(command="trap 'echo term > marker; exit 0' TERM; while :; do sleep 0.05; done"),
            )
            stubborn = await self.start(host, ProcessWork(command="trap '' TERM; sleep 300"))
            await _running(host, polite)
            await _running(host, stubborn)
            await asyncio.gather(polite.cancel(5), stubborn.cancel(0.3))
            assert (await host._read_text(f"{polite.info['dir']}/marker")) == "term\n"
            for h in (polite, stubborn):
                assert not await host._is_alive(dict(h.info))
                await h.close()
        finally:
            await host.aclose()

    async def test_capacity(self) -> None:
        host = self.make(cpus=2, memory="1Gi")
        assert host.fits_at_all(Resources(cpu=2)) and not host.fits_at_all(Resources(cpu=3))
        assert not host.fits_at_all(Resources(memory=2 << 30))
        a, b = host.acquire(ONE), host.acquire(ONE)
        assert a is not None and b is not None and host.acquire(ONE) is None
        host.release(a)
        host.release(a)  # once only
        c = host.acquire(ONE)
        assert c is not None and host.acquire(ONE) is None
        for s in (b, c):
            host.release(s)
        assert host.running == 0 and host.used_cpus == 0

    async def test_recover_from_info_in_another_executor_object(self) -> None:
        first = self.make()
        handle = await self.start(first, ProcessWork(command="sleep 300"))
        await _running(first, handle)
        info = dict(handle.info)
        await first.aclose()  # the scheduler that started it is gone
        second = self.make()
        try:
            found = await second.recover(info)
            assert found is not None and not found.adoptable
            await found.cancel(0.5)
            await found.close()
            assert await second.recover(info) is None  # nothing left of it
            assert not await _exists(second, info["dir"])
        finally:
            await second.aclose()

    async def test_refuses_other_work(self) -> None:
        host = self.make()
        slot = host.acquire(ONE)
        assert slot is not None
        with pytest.raises(ConfigurationError, match="process work"):
            await host.start(FunctionCall(func=print), slot)
        with pytest.raises(ConfigurationError, match="relative"):
            await host.start(ProcessWork(command="true", files_in={"../x": lambda: _chunks(b"")}), slot)
        host.release(slot)


async def _exists(host: Host, path: str) -> bool:
    return await host._read_text(f"{path}/.pdt-pid") is not None


async def _running(host: Host, handle: JobHandle) -> None:
    """Wait until the job's wrapper has written its pid (a trap is set right after)."""
    for _ in range(200):
        if await host._read_text(f"{handle.info['dir']}/.pdt-pid"):
            await asyncio.sleep(0.1)
            return
        await asyncio.sleep(0.02)
    raise AssertionError("the job never started")


class _ProcessSuite(ExecutorTests):
    """The conformance suite's work items as shell commands."""

    survives_scheduler = True

    def work_ok(self) -> Work:
        return ProcessWork(command="exit 0")

    def work_counted(self, marker: Path, seconds: float) -> Work:
        return ProcessWork(command=f"echo run >> {shlex.quote(str(marker))}; sleep {seconds:g}")

    def work_fails(self) -> Work:
        return ProcessWork(command="echo boom >&2; exit 3")

    def work_sleeps(self, seconds: float) -> Work:
        return ProcessWork(command=f"sleep {seconds:g}")

    def work_prints(self, text: str) -> Work | None:
        return ProcessWork(command='printf "%s\\n" "$TEXT"', env={"TEXT": text})

    def work_traps_term(self, marker: Path) -> Work | None:
        m = str(marker)
        return ProcessWork(
            command=f"trap 'echo term >> {m}; exit 0' TERM; echo ready > {m}; while :; do sleep 0.05; done"
        )


class TestLocalHostSuite(_ProcessSuite):
    @pytest.fixture(autouse=True)
    def _workdir(self, tmp_path: Path) -> None:
        self.workdir = tmp_path / "jobs"

    @pytest.fixture
    async def executor(self) -> AsyncIterator[Executor]:
        host = LocalHost("here", workdir=self.workdir)
        yield host
        await host.aclose()

    def limited(self, max_jobs: int) -> Executor:
        return LocalHost("here", workdir=self.workdir, max_jobs=max_jobs)

    def subprocess_setup(self) -> str:
        return f"""
        from pydatatask.executor import LocalHost
        from pydatatask.executor.base import ProcessWork
        executor = LocalHost("here", workdir={str(self.workdir)!r})
        work = ProcessWork(command="sleep 60")
        """


_SSH_CONNECT = """
import asyncssh, json, os
conf = json.load(open(os.environ["PDT_TEST_SERVICES"]))["ssh"]
def connect():
    return asyncssh.connect(conf["host"], port=conf["port"], username=conf["user"],
                            client_keys=[conf["client_key"]], known_hosts=conf["known_hosts"])
"""


def _ssh_host(conf: dict[str, Any], **kwargs: Any) -> Host:
    import asyncssh

    from pydatatask.executor.ssh import SSHHost

    def connect() -> Any:
        return asyncssh.connect(
            conf["host"],
            port=conf["port"],
            username=conf["user"],
            client_keys=[conf["client_key"]],
            known_hosts=conf["known_hosts"],
        )

    return SSHHost(connect=connect, name="remote", workdir="/tmp/pdt-jobs", **kwargs)


@pytest.mark.ssh
class TestSSHHostSuite(_ProcessSuite):
    @pytest.fixture(autouse=True)
    def _conf(self, services: dict[str, Any]) -> None:
        self.conf = service(services, "ssh")

    @pytest.fixture
    def tmp_path(self) -> Iterator[Path]:
        # the SSH user (sshd runs on this machine) writes the suite's markers here
        path = Path(tempfile.mkdtemp(prefix="pdt-ssh-suite-"))
        path.chmod(0o777)
        yield path
        shutil.rmtree(path, ignore_errors=True)

    @pytest.fixture
    async def executor(self) -> AsyncIterator[Executor]:
        host = _ssh_host(self.conf, cpus=8)
        yield host
        await host.aclose()

    def limited(self, max_jobs: int) -> Executor:
        return _ssh_host(self.conf, cpus=8, max_jobs=max_jobs)

    def subprocess_setup(self) -> str:
        return (
            _SSH_CONNECT
            + """
from pydatatask.executor.ssh import SSHHost
from pydatatask.executor.base import ProcessWork
executor = SSHHost(connect=connect, name="remote", workdir="/tmp/pdt-jobs")
work = ProcessWork(command="sleep 60")
"""
        )


class TestLocalHost(HostContract):
    @pytest.fixture(autouse=True)
    def _workdir(self, tmp_path: Path) -> None:
        self.workdir = tmp_path / "jobs"

    def make(self, **kwargs: Any) -> Host:
        return LocalHost("here", workdir=self.workdir, **{"cpus": 8, **kwargs})

    async def test_a_start_cancelled_meanwhile_leaves_no_process_and_no_directory(
        self, tmp_path: Path
    ) -> None:
        """The job directory is made, filled and the job started in one step in the
        starting thread; a caller cancelled before it leaves nothing (the step is not
        made), during it neither: the process is killed and the directory removed once the
        step ends."""
        marker = f"pdt-cancelled-start-{secrets.token_hex(4)}"
        host = self.make()
        try:
            for _ in range(5):
                slot = host.acquire(ONE)
                assert slot is not None
                work = ProcessWork(command=f"sleep 300 # {marker}", files_in={"in/a/k": b"x" * 100_000})
                starting = asyncio.create_task(host.start(work, slot))
                await asyncio.sleep(0)  # under way: in the thread
                starting.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await starting
                host.release(slot)
            # a start under way goes on in its thread: once it has ended, what it made is
            # undone (the workdir itself is made by the first start that runs, if any)
            await host.aclose()
            for _ in range(500):
                if not _listing(self.workdir) and not _commands_with(marker):
                    break
                await asyncio.sleep(0.01)
            assert _listing(self.workdir) == []
            assert _commands_with(marker) == []
        finally:
            await host.aclose()


def _listing(path: Path) -> list[str]:
    return os.listdir(path) if os.path.isdir(path) else []


def _commands_with(marker: str) -> list[int]:
    """The pids of this machine's processes whose command line holds ``marker``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker.encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


@pytest.mark.ssh
class TestSSHHost(HostContract):
    @pytest.fixture(autouse=True)
    def _conf(self, services: dict[str, Any]) -> None:
        self.conf = service(services, "ssh")

    def make(self, **kwargs: Any) -> Host:
        return _ssh_host(self.conf, **{"cpus": 8, **kwargs})


async def test_hosts_spread_and_dispatch_recovery(tmp_path: Path) -> None:
    a = LocalHost("a", cpus=2, workdir=tmp_path / "a")
    b = LocalHost("b", cpus=2, workdir=tmp_path / "b")
    pool = Hosts([a, b])
    slots = [pool.acquire(ONE) for _ in range(5)]
    assert slots[4] is None
    assert sorted(s.place for s in slots[:4] if s is not None) == ["a", "a", "b", "b"]
    for s in slots[:4]:
        assert s is not None
        pool.release(s)
    assert a.running == b.running == 0
    slot = pool.acquire(ONE)
    assert slot is not None
    handle = await pool.start(ProcessWork(command="sleep 300"), slot)
    await _running(a if handle.info["host"] == "a" else b, handle)
    found = await Hosts(
        [LocalHost("a", workdir=tmp_path / "a"), LocalHost("b", workdir=tmp_path / "b")]
    ).recover(handle.info)
    assert found is not None
    await found.cancel(0.5)
    await found.close()
    assert (await handle.wait()).exit_code == 128 + 15
    await handle.close()
    pool.release(slot)
    with pytest.raises(BackendUnavailableError, match="not listed"):
        await pool.recover({"host": "gone", "dir": "/nowhere"})
    with pytest.raises(ConfigurationError, match="unique"):
        Hosts([a, LocalHost("a")])


async def test_a_slot_on_a_host_that_went_down_moves() -> None:
    a, b = LocalHost("a", cpus=1), LocalHost("b", cpus=1)
    pool = Hosts([a, b])
    slot = pool.acquire(ONE)
    assert slot is not None
    first = slot.place
    (a if first == "a" else b).mark_down("test")
    assert pool.member(slot).name != first and slot.place != first
    assert (a.running, b.running) == ((0, 1) if first == "a" else (1, 0))
    pool.release(slot)
    assert a.running == b.running == 0


def test_launch_rate() -> None:
    rate = LaunchRate(5)
    assert rate.ready(100.0)
    rate.take(100.0)
    assert not rate.ready(100.1) and rate.ready(100.2)
    assert rate.wait_time(100.1) == pytest.approx(0.1)
    assert LaunchRate(None).ready(0.0)
    with pytest.raises(ConfigurationError, match="launch_rate"):
        LaunchRate(0, "host 'x'")


def test_proc_stat_parser() -> None:
    # the name field may hold spaces and parentheses: fields count from the last ")"
    line = b"42 (a) (b c) S 1 42 42 0 -1 4194560 1 0 0 0 0 0 0 0 20 0 1 0 123456 0 0"
    assert parse_start_time(line) == 123456
    assert parse_start_time(line.decode()) == 123456
    assert parse_start_time(b"garbage") is None
    assert isinstance(process_start_time(1), int)
    assert process_start_time(2**22 + 12345) is None
