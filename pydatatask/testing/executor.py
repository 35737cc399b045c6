"""The conformance suite of executors (see :mod:`pydatatask.executor.base`).

Subclass :class:`ExecutorTests` once per executor and fill in the hooks: an ``executor``
fixture, and work items of the kind the executor carries (a function call, a command, a
pod). Every executor runs the same tests: start and outcome, a failure in the outcome,
logs, the time limit counted from :meth:`~pydatatask.executor.base.JobHandle.started`,
cancel with grace, capacity, recovery from a handle's ``info`` in another executor
object, recovery after the scheduler process was killed with SIGKILL, and the same under
the job lifecycle: a scheduler killed while its job runs, then a new one that adopts the
work (executors that declare :attr:`ExecutorTests.adopts`: the work runs once and its
outcome becomes the job record) or stops it and runs the job again::

    import pytest
    from pydatatask.executor import FunctionCall, InLoopExecutor
    from pydatatask.testing.executor import ExecutorTests

    def answer() -> int:
        return 42

    class TestMyExecutor(ExecutorTests):
        @pytest.fixture
        async def executor(self):
            ex = InLoopExecutor()
            yield ex
            await ex.aclose()

        def limited(self, max_jobs):
            return InLoopExecutor(max_jobs=max_jobs)

        def work_ok(self):
            return FunctionCall(answer)
        ...

The suite uses pytest and pytest-asyncio (installed with ``pydatatask[test]``).
"""

from __future__ import annotations

import asyncio
import json
import os
import pickle
import secrets
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from ..executor.base import Executor, FunctionCall, JobHandle, Outcome, Resources, Slot, Work
from ..repository.serialized import YamlMetadataFileRepository

__all__ = ("ExecutorTests", "count_and_sleep")


def count_and_sleep(marker: str, seconds: float) -> None:
    """Append a line to the file ``marker`` (one line per start), then sleep ``seconds``:
    the function call of :meth:`ExecutorTests.work_counted`."""
    with open(marker, "a") as f:
        f.write("run\n")
    time.sleep(seconds)


# A scheduler process for the lifecycle tests: one task running the pickled work item for
# key "k", with its claims and records in files; prints the run's summary.
_SCHEDULER = """
import asyncio, dataclasses, json, pickle, sys
from pydatatask.errors import JobError
from pydatatask.pipeline import Pipeline
from pydatatask.repository.memory import MemoryMetadataRepository
from pydatatask.repository.serialized import YamlMetadataFileRepository
from pydatatask.task.base import JobOutcome, Task


class WorkTask(Task):
    def __init__(self, name, executor, work, **kwargs):
        self._executor, self._work = executor, work
        super().__init__(name, **kwargs)

    @property
    def executor(self):
        return self._executor

    async def prepare(self, job):
        return dataclasses.replace(self._work, job=(self.name, job.key))

    async def finish(self, job, outcome):
        if not outcome.ok:
            raise JobError(f"the work failed: {{outcome.error or outcome.exit_code}}")
        return JobOutcome(exit_code=outcome.exit_code, host=outcome.place, extra=outcome.extra)


async def main():
{setup}
    with open(sys.argv[1], "rb") as f:
        work = pickle.load(f)
    state = sys.argv[2]
    task = WorkTask(
        sys.argv[3],
        executor,
        work,
        inputs={{"src": MemoryMetadataRepository({{"k": 1}})}},
        done=YamlMetadataFileRepository(state + "/done", fsync=False),
        live=YamlMetadataFileRepository(state + "/live", fsync=False),
    )
    summary = await Pipeline([task], poll_interval="0.2s").run()
    print(json.dumps(summary.as_dict()), flush=True)


asyncio.run(main())
"""


class ExecutorTests:
    """Tests every executor passes. Subclasses provide the fixture ``executor`` and the
    hooks below; the ``check_*`` hooks say what the outcome of each work item is for this
    kind of work (defaults: process-like exit statuses, function-like results)."""

    #: whether work outlives the executor object that started it (processes on a host,
    #: pods): then ``recover`` of a running work's ``info`` returns a handle
    survives_scheduler: bool = False
    #: whether the handles ``recover`` gives are adoptable, as those of pods are (their
    #: outcome can still be waited for); the job lifecycle then waits for the work instead
    #: of stopping it and running the job again
    adopts: bool = False

    # ---------------------------------------------------------------- hooks
    def limited(self, max_jobs: int) -> Executor:
        """An executor like the fixture's, of at most ``max_jobs`` jobs at once."""
        raise NotImplementedError

    def work_ok(self) -> Work:
        """Work that succeeds (a function returning 42, a command exiting 0)."""
        raise NotImplementedError

    def check_ok(self, outcome: Outcome) -> None:
        """What the outcome of :meth:`work_ok` is."""
        assert outcome.ok, outcome

    def work_fails(self) -> Work:
        """Work that fails (a function raising ``ValueError("boom")``, exit status 3)."""
        raise NotImplementedError

    def check_failed(self, outcome: Outcome) -> None:
        """What the outcome of :meth:`work_fails` is."""
        assert not outcome.ok, outcome
        if outcome.error is not None:
            assert "boom" in str(outcome.error), outcome
        else:
            assert outcome.exit_code == 3, outcome

    def work_sleeps(self, seconds: float) -> Work:
        """Work that runs for ``seconds`` and succeeds."""
        raise NotImplementedError

    def work_prints(self, text: str) -> Work | None:
        """Work that prints ``text`` and succeeds; None if this kind of work prints nothing
        the executor keeps (function calls: then logs must be empty)."""
        return None

    def work_traps_term(self, marker: Path) -> Work | None:
        """Work that writes ``ready`` to ``marker`` and then, on SIGTERM, ``term`` and exits;
        None if this kind of work cannot trap a signal (function calls)."""
        return None

    def subprocess_setup(self) -> str:
        """Python source run in a fresh process defining ``executor`` and ``work`` (a work
        item that runs for a minute), for the SIGKILL test. It runs inside an ``async def``
        (``await`` is allowed)."""
        raise NotImplementedError

    def work_counted(self, marker: Path, seconds: float) -> Work:
        """Work that appends a line to ``marker`` when it starts, runs ``seconds`` and
        succeeds; picklable (it is handed to scheduler processes). The default: a call of
        :func:`count_and_sleep`."""
        return FunctionCall(count_and_sleep, {"marker": str(marker), "seconds": seconds})

    # ---------------------------------------------------------------- helpers
    async def _start(self, executor: Executor, work: Work) -> tuple[JobHandle, Slot]:
        slot = executor.acquire(Resources())
        assert slot is not None, f"{executor.describe()} has no room for a first job"
        return await executor.start(work, slot), slot

    async def _run(self, executor: Executor, work: Work) -> tuple[Outcome, bytes]:
        handle, slot = await self._start(executor, work)
        try:
            await handle.started()
            outcome = await asyncio.wait_for(handle.wait(), 60)
            return outcome, await handle.logs()
        finally:
            await handle.close()
            executor.release(slot)

    # ---------------------------------------------------------------- tests
    async def test_start_gives_the_outcome(self, executor: Executor) -> None:
        assert executor.can_run(type(self.work_ok()))
        outcome, _ = await self._run(executor, self.work_ok())
        self.check_ok(outcome)

    async def test_a_failure_is_in_the_outcome(self, executor: Executor) -> None:
        outcome, _ = await self._run(executor, self.work_fails())
        self.check_failed(outcome)

    async def test_logs(self, executor: Executor) -> None:
        work = self.work_prints("hello from the job")
        if work is None:
            _, logs = await self._run(executor, self.work_ok())
            assert logs == b""
            return
        outcome, logs = await self._run(executor, work)
        assert outcome.ok, outcome
        assert b"hello from the job" in logs

    async def test_close_is_idempotent(self, executor: Executor) -> None:
        handle, slot = await self._start(executor, self.work_ok())
        await handle.wait()
        await handle.close()
        await handle.close()
        executor.release(slot)

    async def test_a_time_limit_counts_from_started(self, executor: Executor) -> None:
        handle, slot = await self._start(executor, self.work_sleeps(1.0))
        try:
            await handle.started()
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.05):
                    await handle.wait()
            await handle.cancel(grace=5.0)
        finally:
            await handle.close()
            executor.release(slot)

    async def test_cancel_with_grace(self, executor: Executor, tmp_path: Path) -> None:
        marker = tmp_path / "marker"
        work = self.work_traps_term(marker)
        if work is None:
            handle, slot = await self._start(executor, self.work_sleeps(1.0))
            await handle.started()
            await handle.cancel(grace=5.0)
            if handle.interruptible:
                # a cancelled call ends with an error (or as cancelled), never as a success
                waiter = asyncio.ensure_future(handle.wait())
                await asyncio.wait({waiter}, timeout=30)
                assert waiter.done() and (waiter.cancelled() or not waiter.result().ok)
            await handle.close()
            executor.release(slot)
            return
        handle, slot = await self._start(executor, work)
        try:
            await handle.started()
            for _ in range(600):
                if marker.exists() and marker.read_text().strip():
                    break
                await asyncio.sleep(0.05)
            assert marker.read_text().strip() == "ready"
            await handle.cancel(grace=10.0)
            assert marker.read_text().split() == ["ready", "term"]
            outcome = await asyncio.wait_for(handle.wait(), 30)
            assert not outcome.ok or outcome.exit_code == 0, outcome
        finally:
            await handle.close()
            executor.release(slot)

    async def test_capacity(self) -> None:
        executor = self.limited(2)
        try:
            a = executor.acquire(Resources())
            b = executor.acquire(Resources())
            assert a is not None and b is not None
            assert a.executor is executor and b.executor is executor
            assert executor.acquire(Resources()) is None
            executor.release(a)
            c = executor.acquire(Resources())
            assert c is not None
            executor.release(b)
            executor.release(c)
            executor.release(c)  # twice: nothing more is given back
            slots = [executor.acquire(Resources()) for _ in range(3)]
            assert slots[0] is not None and slots[1] is not None and slots[2] is None
        finally:
            await executor.aclose()

    async def test_recover_from_another_executor_object(self, executor: Executor) -> None:
        handle, slot = await self._start(executor, self.work_sleeps(1.0))
        info = json.loads(json.dumps(handle.info))  # what a claim stores
        other = self.limited(4)
        try:
            await handle.started()
            found = await other.recover(info)
            if self.survives_scheduler:
                assert found is not None, f"{executor.describe()} did not find its running work"
                await found.cancel(grace=5.0)
                await found.close()
            else:
                assert found is None
        finally:
            await handle.cancel(grace=5.0)
            await handle.close()
            executor.release(slot)
            await other.aclose()
        if self.survives_scheduler:
            assert await executor.recover(info) is None  # stopped and closed: nothing is left

    async def test_recover_after_the_scheduler_was_killed(self, executor: Executor, tmp_path: Path) -> None:
        """A scheduler process starts work, stores its handle's info (as a claim would) and
        is killed with SIGKILL, with its whole process group (pool workers included; work
        meant to outlive its scheduler runs in a session of its own)."""
        script = tmp_path / "scheduler.py"
        info_file = tmp_path / "info.json"
        script.write_text(
            textwrap.dedent(
                """
                import asyncio, json, os, sys
                from pydatatask.executor.base import Resources

                async def main():
                {setup}
                    slot = executor.acquire(Resources())
                    handle = await executor.start(work, slot)
                    await handle.started()
                    with open(sys.argv[1] + ".tmp", "w") as f:
                        json.dump(handle.info, f)
                    os.rename(sys.argv[1] + ".tmp", sys.argv[1])
                    await asyncio.sleep(600)

                asyncio.run(main())
                """
            ).format(setup=textwrap.indent(textwrap.dedent(self.subprocess_setup()), "    "))
        )
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            str(script),
            str(info_file),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            start_new_session=True,
            env=dict(os.environ),
        )
        try:
            for _ in range(1200):
                if info_file.exists() or proc.returncode is not None:
                    break
                await asyncio.sleep(0.05)
            assert info_file.exists(), "the scheduler process never started its work"
            info: dict[str, Any] = json.loads(info_file.read_text())
        finally:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            await proc.wait()
        found = await executor.recover(info)
        if not self.survives_scheduler:
            assert found is None
            return
        assert found is not None, f"{executor.describe()} lost the work of a killed scheduler"
        await found.cancel(grace=5.0)
        await found.close()
        assert await executor.recover(info) is None

    async def test_a_killed_schedulers_job_is_adopted_or_run_again(
        self, executor: Executor, tmp_path: Path
    ) -> None:
        """A scheduler process is killed with SIGKILL while its job runs; the next one finds
        the stale claim. An executor that :attr:`adopts` has its work waited for: it ran
        once and its outcome is the job's record; any other has it stopped (or finds it
        gone) and runs the job again."""
        marker, state = tmp_path / "runs", tmp_path / "state"
        task = "adopt" + secrets.token_hex(3)
        work_file = tmp_path / "work.pickle"
        work_file.write_bytes(pickle.dumps(self.work_counted(marker, 3.0)))  # time to see it run
        script = tmp_path / "scheduler.py"
        script.write_text(
            _SCHEDULER.format(setup=textwrap.indent(textwrap.dedent(self.subprocess_setup()), "    "))
        )
        argv = [sys.executable, str(script), str(work_file), str(state), task]
        live = YamlMetadataFileRepository(state / "live", fsync=False)
        done = YamlMetadataFileRepository(state / "done", fsync=False)
        first = await asyncio.create_subprocess_exec(
            *argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, start_new_session=True
        )
        try:
            # running: its claim exists, and names the work where the work outlives it
            claim: Any = None
            for _ in range(1200):
                if marker.exists() and (state / "live").is_dir() and await live.contains("k"):
                    claim = await live.get("k")
                    if claim.get("run") or not self.survives_scheduler:
                        break
                assert first.returncode is None, "the first scheduler ended before it was killed"
                await asyncio.sleep(0.05)
            assert claim, "the first scheduler never claimed its job"
            info = claim.get("run")
            assert info or not self.survives_scheduler, f"the claim does not name the work: {claim}"
        finally:
            try:
                os.killpg(first.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            await first.wait()
        assert not (state / "done").is_dir() or not await done.contains("k"), "the job ended before the kill"
        second = await asyncio.create_subprocess_exec(
            *argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        out, err = await asyncio.wait_for(second.communicate(), 90)
        assert second.returncode == 0, err.decode()
        summary = json.loads(out.decode().strip().splitlines()[-1])
        assert summary["ok"] and summary["succeeded"] == 1, (summary, err.decode())
        record = await done.get("k")
        assert record["success"] is True and record["exit_code"] in (None, 0), record
        runs = marker.read_text().splitlines()
        if self.adopts:
            assert runs == ["run"], f"adopted work was started again: {runs}; {err.decode()}"
            assert record["attempts"] == 1, record
            assert "adopting" in err.decode(), err.decode()
        else:
            assert runs == ["run", "run"], f"the job was not run again: {runs}; {err.decode()}"
        assert not await live.contains("k")
        if self.survives_scheduler:
            assert await executor.recover(info) is None  # nothing is left of either run
