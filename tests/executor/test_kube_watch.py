"""The watch of a KubeExecutor's pods, against the real kube-apiserver (v1.20) and the
test kubelet: one LIST, then a WATCH that brings each pod's changes; resumed from its
resourceVersion when the connection drops, listed again when that version is too old.

A restart of the API server is simulated by a TCP proxy on 127.0.0.1 between the client
and the shared API server (which the tests never restart): :meth:`ApiProxy.cut` aborts
every connection at once, as a server that goes away does, and :meth:`ApiProxy.down`
refuses connections for a while, as a server that is starting again does. Every request
the executor's client sends is noted (:class:`Requests`), so the LISTs are counted on the
wire, not by the code under test.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from typing import Any

import pytest

from pydatatask import Session
from pydatatask.executor.base import Outcome, PodWork, Resources
from pydatatask.executor.kubernetes import KubeExecutor, PodHandle
from tests.kube_support import ApiProxy, let_go, no_executor_pods_left, observed_executor

pytestmark = pytest.mark.kube


def sh(script: str) -> dict[str, Any]:
    return {"spec": {"containers": [{"name": "main", "image": "busybox", "command": ["sh", "-c", script]}]}}


@pytest.fixture
def name() -> str:
    return "w" + secrets.token_hex(3)


@pytest.fixture
async def proxy(kcfg: dict[str, Any]) -> AsyncIterator[ApiProxy]:
    async with ApiProxy(kcfg["server"]) as p:
        yield p


async def start(ex: KubeExecutor, script: str, key: str) -> PodHandle:
    slot = ex.acquire(Resources())
    assert slot is not None
    try:
        return await ex.start(PodWork(sh(script), job=("t", key)), slot)
    finally:
        ex.release(slot)


async def until_running(ex: KubeExecutor, handles: list[PodHandle]) -> None:
    """Wait until the watch shows every pod Running (the pods sleep for a while)."""
    await asyncio.gather(*(h.started() for h in handles))
    for h in handles:
        pod, gone = ex.watch.lookup(h.name, h.uid, h._since)
        assert pod is not None and pod.status.phase == "Running", (h, gone)


async def finish(handles: list[PodHandle]) -> list[Outcome]:
    outcomes = list(await asyncio.gather(*(h.wait() for h in handles)))
    for h in handles:
        await h.close()
    return outcomes


def check(outcomes: list[Outcome], failing: int | None) -> None:
    for i, outcome in enumerate(outcomes):
        if i == failing:
            assert not outcome.ok and outcome.exit_code == 3, outcome
        else:
            assert outcome.ok and outcome.exit_code == 0, outcome


async def test_pod_states_come_through_one_watch_after_one_list(kcfg: dict[str, Any], name: str) -> None:
    """Six pods of 1.5 s: one LIST of the executor's pods, then their states through the
    watch (no LIST per interval, no GET per pod)."""
    session = Session()
    ex, requests = observed_executor(session, kcfg, name)
    try:
        async with session:
            handles = [await start(ex, f"sleep 1.5; exit {3 if i == 2 else 0}", f"k{i}") for i in range(6)]
            check(await finish(handles), failing=2)
            await ex.aclose()
        lists, watches = requests.pod_lists(), requests.pod_watches()
        assert len(lists) == 1, requests.sent
        assert watches and all(q.get("allowWatchBookmarks") == "True" for q in watches), watches
        assert watches[0].get("resourceVersion"), watches  # from the list, not from "now"
        assert requests.pod_reads() == 0, requests.sent
        assert ex.watch.lists == 1 and ex.watch.events >= 6 * 3, ex.watch.events
    finally:
        await let_go(kcfg, label=f"pydatatask.io/executor={name}")
    await no_executor_pods_left(kcfg, name)


async def test_the_watch_resumes_from_its_resource_version_after_the_server_went_away(
    kcfg: dict[str, Any], name: str, proxy: ApiProxy
) -> None:
    """Every connection is cut twice while the pods run, and the second time no connection
    is accepted until after they have finished: the watch resumes from the last
    resourceVersion it saw (no second LIST), the server replays what happened meanwhile,
    and every job ends with its own outcome."""
    session = Session()
    ex, requests = observed_executor(session, kcfg, name, through=proxy)
    try:
        async with session:
            handles = [await start(ex, f"sleep 3; exit {3 if i == 1 else 0}", f"k{i}") for i in range(4)]
            waits = [asyncio.ensure_future(h.wait()) for h in handles]
            await until_running(ex, handles)
            watched = len(requests.pod_watches())
            proxy.cut()  # a dropped connection: the watch reconnects at once
            while len(requests.pod_watches()) == watched:
                requests.more.clear()
                await requests.more.wait()
            proxy.down()  # the server goes away while the pods finish
            await asyncio.sleep(4)
            assert not any(w.done() for w in waits)  # nothing reached the jobs meanwhile
            proxy.up()
            outcomes = list(await asyncio.gather(*waits))
            for h in handles:
                await h.close()
            check(outcomes, failing=1)
            await ex.aclose()
        assert proxy.refused >= 1
        assert len(requests.pod_lists()) == 1, requests.pod_lists()
        watches = requests.pod_watches()
        assert len(watches) >= 3 and ex.watch.resumes >= 2, (watches, ex.watch.resumes)
        versions = [q.get("resourceVersion") for q in watches]
        assert all(versions) and len(set(versions)) >= 2, versions  # resumed from later versions
        assert ex.watch.expired == 0
    finally:
        await let_go(kcfg, label=f"pydatatask.io/executor={name}")
    await no_executor_pods_left(kcfg, name)


async def test_a_resource_version_too_old_to_resume_from_lists_again(
    kcfg: dict[str, Any], name: str, proxy: ApiProxy
) -> None:
    """The watch is cut while its resourceVersion is one the server no longer has (the
    test API server answers an ERROR event with code 410, 'too old resource version'):
    it lists the pods again and watches on from the new list."""
    session = Session()
    ex, requests = observed_executor(session, kcfg, name, through=proxy)
    try:
        async with session:
            handles = [await start(ex, f"sleep 2; exit {3 if i == 0 else 0}", f"k{i}") for i in range(3)]
            waits = [asyncio.ensure_future(h.wait()) for h in handles]
            await until_running(ex, handles)
            # no await between the two: no event can move the version on before the cut
            ex.watch.resource_version = "1"
            proxy.cut()
            outcomes = list(await asyncio.gather(*waits))
            for h in handles:
                await h.close()
            check(outcomes, failing=0)
            await ex.aclose()
        assert ex.watch.expired == 1
        assert len(requests.pod_lists()) == 2, requests.pod_lists()
        versions = [q.get("resourceVersion") for q in requests.pod_watches()]
        assert "1" in versions and versions[-1] != "1", versions
    finally:
        await let_go(kcfg, label=f"pydatatask.io/executor={name}")
    await no_executor_pods_left(kcfg, name)


async def test_jobs_started_while_the_watch_lingers_cost_no_list(kcfg: dict[str, Any], name: str) -> None:
    """Two waves of pods, the second started after the first has ended: the watch stayed
    open in between (``watch_linger``), so the executor listed its pods once."""
    session = Session()
    ex, requests = observed_executor(session, kcfg, name)
    try:
        async with session:
            for wave in range(2):
                handles = [await start(ex, "sleep 0.5", f"k{wave}-{i}") for i in range(2)]
                check(await finish(handles), failing=None)
            await ex.aclose()
        assert len(requests.pod_lists()) == 1, requests.pod_lists()
    finally:
        await let_go(kcfg, label=f"pydatatask.io/executor={name}")
    await no_executor_pods_left(kcfg, name)
