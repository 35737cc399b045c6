"""The executor conformance suite on the executors of function calls: the event loop (async
functions, and plain functions in its threads), thread and process pools, and Dask."""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from typing import Any

import pytest

from pydatatask.errors import ConfigurationError
from pydatatask.executor import (
    Executor,
    FunctionCall,
    InLoopExecutor,
    PoolExecutor,
    ProcessWork,
    Resources,
    Work,
)
from pydatatask.testing.executor import ExecutorTests


def answer() -> int:
    return 42


def boom() -> None:
    raise ValueError("boom")


async def async_answer() -> int:
    return 42


async def async_boom() -> None:
    raise ValueError("boom")


class _Calls(ExecutorTests):
    """Plain function calls."""

    def check_ok(self, outcome: Any) -> None:
        assert outcome.ok and outcome.result == 42, outcome

    def work_ok(self) -> Work:
        return FunctionCall(answer)

    def work_fails(self) -> Work:
        return FunctionCall(boom)

    def work_sleeps(self, seconds: float) -> Work:
        return FunctionCall(functools.partial(time.sleep, seconds))


class TestInLoopAsync(_Calls):
    @pytest.fixture
    async def executor(self) -> AsyncIterator[Executor]:
        ex = InLoopExecutor()
        yield ex
        await ex.aclose()

    def limited(self, max_jobs: int) -> Executor:
        return InLoopExecutor(max_jobs=max_jobs)

    def work_ok(self) -> Work:
        return FunctionCall(async_answer, is_async=True)

    def work_fails(self) -> Work:
        return FunctionCall(async_boom, is_async=True)

    def work_sleeps(self, seconds: float) -> Work:
        return FunctionCall(asyncio.sleep, {"delay": seconds}, is_async=True)

    def subprocess_setup(self) -> str:
        return """
            from pydatatask.executor import FunctionCall, InLoopExecutor
            executor = InLoopExecutor()
            work = FunctionCall(asyncio.sleep, {"delay": 60}, is_async=True)
        """


class TestInLoopThreads(_Calls):
    @pytest.fixture
    async def executor(self) -> AsyncIterator[Executor]:
        ex = InLoopExecutor(threads=2)
        yield ex
        await ex.aclose()

    def limited(self, max_jobs: int) -> Executor:
        return InLoopExecutor(max_jobs=max_jobs)

    def subprocess_setup(self) -> str:
        return """
            import functools, time
            from pydatatask.executor import FunctionCall, InLoopExecutor
            executor = InLoopExecutor()
            work = FunctionCall(functools.partial(time.sleep, 60))
        """


class _PoolCalls(_Calls):
    """Plain calls on a :class:`PoolExecutor`; a scheduler process makes its pool with
    ``pool_source`` (after ``pool_import``)."""

    pool_import = "from concurrent.futures import ThreadPoolExecutor"
    pool_source = "ThreadPoolExecutor(1)"

    def limited(self, max_jobs: int) -> Executor:
        return PoolExecutor(ThreadPoolExecutor(1), max_jobs=max_jobs)

    def subprocess_setup(self) -> str:
        return f"""
            import functools, time
            {self.pool_import}
            from pydatatask.executor import FunctionCall, PoolExecutor
            executor = PoolExecutor({self.pool_source})
            work = FunctionCall(functools.partial(time.sleep, 60))
        """


class TestThreadPool(_PoolCalls):
    @pytest.fixture
    async def executor(self) -> AsyncIterator[Executor]:
        with ThreadPoolExecutor(2) as pool:
            ex = PoolExecutor(pool)
            yield ex
            await ex.aclose()


@pytest.fixture(scope="module")
def process_pool() -> Iterator[ProcessPoolExecutor]:
    with ProcessPoolExecutor(2) as pool:
        pool.submit(time.sleep, 0).result()  # the workers are up
        yield pool


class TestProcessPool(_PoolCalls):
    pool_import = "from concurrent.futures import ProcessPoolExecutor"
    pool_source = "ProcessPoolExecutor(1)"

    @pytest.fixture
    async def executor(self, process_pool: ProcessPoolExecutor) -> AsyncIterator[Executor]:
        ex = PoolExecutor(process_pool)
        yield ex
        await ex.aclose()


@pytest.fixture(scope="module")
def dask_client() -> Iterator[Any]:
    import distributed

    with distributed.Client(
        processes=False, n_workers=1, threads_per_worker=2, dashboard_address=None
    ) as client:
        yield client


class TestDask(_PoolCalls):
    pool_import = "import distributed"
    pool_source = (
        "distributed.Client(processes=False, n_workers=1, threads_per_worker=1, dashboard_address=None)"
    )

    @pytest.fixture
    async def executor(self, dask_client: Any) -> AsyncIterator[Executor]:
        ex = PoolExecutor(dask_client)
        yield ex
        await ex.aclose()


# --- what the suite does not cover ----------------------------------------------------


async def test_a_process_pool_executor_has_a_slot_per_worker(process_pool: ProcessPoolExecutor) -> None:
    ex = PoolExecutor(process_pool)
    slots = [ex.acquire(Resources()) for _ in range(3)]
    assert slots[0] is not None and slots[1] is not None and slots[2] is None


async def test_quotas_of_cpu_and_memory() -> None:
    ex = InLoopExecutor(cpu=2, memory=1000)
    assert not ex.fits_at_all(Resources(cpu=3)) and not ex.fits_at_all(Resources(memory=1001))
    a = ex.acquire(Resources(cpu=1.5, memory=600))
    assert a is not None
    assert ex.acquire(Resources(cpu=1)) is None and ex.acquire(Resources(memory=500)) is None
    b = ex.acquire(Resources(cpu=0.5, memory=400))
    assert b is not None
    ex.release(a)
    assert ex.acquire(Resources(cpu=1.5, memory=600)) is not None


async def test_work_of_another_kind_is_refused() -> None:
    ex = InLoopExecutor()
    slot = ex.acquire(Resources())
    assert slot is not None
    with pytest.raises(ConfigurationError, match="runs function calls, not process work"):
        await ex.start(ProcessWork("true"), slot)
    pool = PoolExecutor(ThreadPoolExecutor(1))
    with pytest.raises(ConfigurationError, match="async functions run on an InLoopExecutor"):
        await pool.start(FunctionCall(async_answer, is_async=True), slot)


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ConfigurationError, match="max_jobs must be at least 1"):
        InLoopExecutor(max_jobs=0)
    with pytest.raises(ConfigurationError, match="needs a concurrent.futures.Executor"):
        PoolExecutor(object())
