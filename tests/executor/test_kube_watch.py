"""The watch of a KubeExecutor's pods, against the real kube-apiserver (v1.20) and the
test kubelet: one LIST, then a WATCH that brings each pod's changes; resumed from its
resourceVersion when the connection drops, listed again when that version is too old.

A restart of the API server is simulated by a TCP proxy on 127.0.0.1 between the client
and the shared API server (which the tests never restart; the server's certificate names
127.0.0.1, so TLS passes through the proxy untouched): a cut aborts every connection at
once, as a server that goes away does, and refuses new ones until restored, as a server
that is starting again does. Every request
the executor's client sends is noted (:class:`Requests`), so the LISTs are counted on the
wire, not by the code under test.
"""

from __future__ import annotations

import asyncio
import secrets
import urllib.parse
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from pydatatask import Session
from pydatatask.executor.base import Outcome, PodWork, Resources
from pydatatask.executor.kubernetes import KubeExecutor, PodHandle
from tests.kube_support import executor_pods, let_go, no_executor_pods_left, observed_executor
from tests.reliability.harness import TcpProxy

pytestmark = pytest.mark.kube


def sh(script: str) -> dict[str, Any]:
    return {"spec": {"containers": [{"name": "main", "image": "busybox", "command": ["sh", "-c", script]}]}}


@pytest.fixture
def name() -> str:
    return "w" + secrets.token_hex(3)


@pytest.fixture
async def proxy(kcfg: dict[str, Any]) -> AsyncIterator[TcpProxy]:
    server = urllib.parse.urlsplit(kcfg["server"])
    async with TcpProxy(server.hostname or "127.0.0.1", server.port or 443) as p:
        yield p


def via(proxy: TcpProxy) -> str:
    return f"https://127.0.0.1:{proxy.port}"


def drop_connections(proxy: TcpProxy) -> None:
    """Abort every connection through ``proxy``; new ones go through at once."""
    proxy.cut()
    proxy.restore()


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
        assert pod is not None and pod["status"]["phase"] == "Running", (h, gone)


async def finish(handles: list[PodHandle]) -> list[Outcome]:
    outcomes = list(await asyncio.gather(*(h.wait() for h in handles)))
    for h in handles:
        await h.close()
    return outcomes


async def all_finished(kcfg: dict[str, Any], name: str) -> None:
    """Wait until every pod of the executor ``name`` has ended, as the API server shows
    it to a client of its own (not through the proxy)."""
    for _ in range(600):
        phases = [p.status.phase for p in await executor_pods(kcfg, name)]
        if phases and all(ph in ("Succeeded", "Failed") for ph in phases):
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"the pods did not finish: {phases}")


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
        # at least each pod's end came through the watch (the outcomes are right and nothing
        # was read otherwise); how many states before it is up to the API server, which
        # under load sends some changes of a pod as one event (17 for 6 pods once)
        assert ex.watch.lists == 1 and ex.watch.events >= 6, ex.watch.events
    finally:
        await let_go(kcfg, label=f"pydatatask.io/executor={name}")
    await no_executor_pods_left(kcfg, name)


async def test_the_watch_resumes_from_its_resource_version_after_the_server_went_away(
    kcfg: dict[str, Any], name: str, proxy: TcpProxy, tmp_path: Path
) -> None:
    """The API server goes away (every connection cut, none accepted) while the pods
    finish (they wait for a file the test makes then): once it is back, the watch resumes
    from the last resourceVersion it saw (no second LIST), the server replays what
    happened meanwhile, and every job ends with its own outcome."""
    go = tmp_path / "go"
    session = Session()
    ex, requests = observed_executor(session, kcfg, name, server=via(proxy))
    try:
        async with session:
            async with ex.watch.interest():
                # the pods are made after the LIST: what the test sees of them came through
                # the watch, whose connection is thus open when it is cut
                script = f"while [ ! -e {go} ]; do sleep 0.1; done; exit "
                handles = [await start(ex, script + ("3" if i == 1 else "0"), f"k{i}") for i in range(4)]
                waits = [asyncio.ensure_future(h.wait()) for h in handles]
                await until_running(ex, handles)
                proxy.cut()
                go.touch()
                await all_finished(kcfg, name)
                for _ in range(600):  # the watch tried to come back while the server was away
                    if proxy.refused:
                        break
                    await asyncio.sleep(0.05)
                assert not any(w.done() for w in waits)  # nothing reached the jobs meanwhile
                proxy.restore()
                outcomes = list(await asyncio.gather(*waits))
                for h in handles:
                    await h.close()
                check(outcomes, failing=1)
            await ex.aclose()
        assert proxy.refused >= 1
        assert len(requests.pod_lists()) == 1, requests.pod_lists()
        watches = requests.pod_watches()
        assert len(watches) >= 2 and ex.watch.resumes >= 1, (watches, ex.watch.resumes)
        versions = [q.get("resourceVersion") for q in watches]
        assert all(versions) and versions[-1] != versions[0], versions  # from a later version
        assert ex.watch.expired == 0
    finally:
        await let_go(kcfg, label=f"pydatatask.io/executor={name}")
    await no_executor_pods_left(kcfg, name)


async def test_a_resource_version_too_old_to_resume_from_lists_again(
    kcfg: dict[str, Any], name: str, proxy: TcpProxy
) -> None:
    """The watch is cut while its resourceVersion is one the server no longer has (the
    test API server answers an ERROR event with code 410, 'too old resource version'):
    it lists the pods again and watches on from the new list."""
    session = Session()
    ex, requests = observed_executor(session, kcfg, name, server=via(proxy))
    try:
        async with session:
            async with ex.watch.interest():  # the LIST before the pods (see above)
                handles = [await start(ex, f"sleep 2; exit {3 if i == 0 else 0}", f"k{i}") for i in range(3)]
                waits = [asyncio.ensure_future(h.wait()) for h in handles]
                await until_running(ex, handles)
                # no await between the two: no event can move the version on before the cut
                ex.watch.resource_version = "1"
                drop_connections(proxy)
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
