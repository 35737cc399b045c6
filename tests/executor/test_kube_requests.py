"""What one pod job costs in API requests, against the real kube-apiserver and the test
kubelet: counted on the wire (every request the executor's client sends is noted), not by
the code under test.

A pod job of a task without ``logs`` sends three requests: the create, and at its close the
DELETE and the PATCH that drops the finalizer, those two at once. A task with ``logs``
reads each pod's log once more. The answers of these requests are read as JSON (no model
is made), and their errors are translated as those of any other request.
"""

from __future__ import annotations

import asyncio
import secrets
import urllib.parse
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from pydatatask import FileRepository, MemoryMetadataRepository, Session
from pydatatask.errors import ConfigurationError
from pydatatask.executor.base import Resources
from pydatatask.executor.kubernetes import KubeExecutor
from pydatatask.executor.pod_state import CLEANUP_FINALIZER
from pydatatask.executor.pods import KubeApiError
from pydatatask.pipeline import Pipeline
from pydatatask.task.pod import PodTask
from tests.kube_support import SH_POD, Requests, kube_resource, let_go, no_executor_pods_left

pytestmark = pytest.mark.kube


class Wire(Requests):
    """The requests of an ``ApiClient`` (as :class:`~tests.kube_support.Requests`), and for
    each the requests under way when it was sent."""

    def __init__(self) -> None:
        super().__init__()
        self.under_way: dict[int, tuple[str, str]] = {}
        #: ``(kind, path, {(kind, path) under way when it was sent})`` of each request,
        #: kind ``POST pods``, ``DELETE pod``, ``GET log``, ``WATCH pods``, ...
        self.alongside: list[tuple[str, str, set[tuple[str, str]]]] = []

    def attach(self, api: Any) -> None:
        super().attach(api)
        rest = api.rest_client
        send = rest.request

        async def request(method: str, url: str, *args: Any, **kwargs: Any) -> Any:
            path = urllib.parse.urlsplit(url).path
            query = {str(k): str(v) for k, v in kwargs.get("query_params") or []}
            if query.get("watch") == "True":
                what = "WATCH pods"
            elif path.endswith("/log"):
                what = f"{method} log"
            elif path.endswith("/pods"):
                what = f"{method} pods"
            else:
                what = f"{method} pod"
            self.alongside.append((what, path, set(self.under_way.values())))
            token = len(self.alongside)
            self.under_way[token] = (what, path)
            try:
                return await send(method, url, *args, **kwargs)
            finally:
                del self.under_way[token]

        rest.request = request

    def counts(self) -> Counter[str]:
        """How many requests of each kind were sent."""
        return Counter(what for what, _, _ in self.alongside)

    def together(self, one: str, other: str) -> set[str]:
        """The paths whose request ``one`` was sent while their ``other`` was under way, or
        the other way round."""
        return {
            path
            for a, b in ((one, other), (other, one))
            for what, path, alongside in self.alongside
            if what == a and (b, path) in alongside
        }


def observed(session: Session, kcfg: dict[str, Any], name: str) -> tuple[KubeExecutor, Wire]:
    wire = Wire()
    kube = kube_resource(session, kcfg["kubeconfig"], requests=wire)
    return KubeExecutor(kube, name=name, namespace=kcfg["namespace"]), wire


@pytest.fixture
def name() -> str:
    return "r" + secrets.token_hex(3)


@pytest.mark.parametrize("keeps_logs", [False, True], ids=["no-logs", "logs"])
async def test_a_pod_job_costs_a_create_a_delete_and_a_patch_sent_together(
    kcfg: dict[str, Any], name: str, tmp_path: Path, keeps_logs: bool
) -> None:
    """Four keys, one pod each: per pod one POST, one DELETE and one PATCH (the finalizer),
    the DELETE and the PATCH under way together; the log is read (once per pod) only for a
    task that keeps logs, and is then in its ``logs``. No pod is read by GET."""
    keys = [f"k{i}" for i in range(4)]
    session = Session()
    ex, wire = observed(session, kcfg, name)
    logs = FileRepository(tmp_path / "logs") if keeps_logs else None
    task = PodTask(
        name,
        SH_POD,
        executor=ex,
        params={"script": 'echo "printed $KEY"'},
        inputs={"src": MemoryMetadataRepository({k: {} for k in keys})},
        done=(done := MemoryMetadataRepository()),
        logs=logs,
        concurrency=4,
    )
    try:
        summary = await Pipeline([task], session).run(timeout="60s")
        await ex.aclose()
        assert summary.ok and summary.succeeded == 4, summary.as_dict()
        for key in keys:
            record = await done.get(key)
            assert record["success"] and record["exit_code"] == 0, record
        per_pod = {k: v for k, v in wire.counts().items() if k not in ("GET pods", "WATCH pods")}
        expected = {"POST pods": 4, "DELETE pod": 4, "PATCH pod": 4}
        if keeps_logs:
            expected["GET log"] = 4
        assert per_pod == expected, wire.counts()
        # each close sends the DELETE and the PATCH of its pod together: one round trip
        pods = {path for what, path, _ in wire.alongside if what == "DELETE pod"}
        assert len(pods) == 4 and wire.together("DELETE pod", "PATCH pod") == pods, wire.alongside
        if logs is not None:
            for key in keys:
                assert f"printed {key}" in await logs.read_text(key)
    finally:
        await let_go(kcfg, label=f"pydatatask.io/executor={name}")
    await no_executor_pods_left(kcfg, name)


async def test_answers_read_as_json_keep_the_errors_of_the_api(kcfg: dict[str, Any], name: str) -> None:
    """A pod created with ``as_json`` is the API's JSON object; its name taken is a 409, a
    refused body a one-line error naming the API's reason, a patch of another pod's uid
    None, and a delete or finalizer patch of a pod that is gone says so (False)."""
    session = Session()
    ex, _ = observed(session, kcfg, name)
    manifest = {"spec": {"containers": [{"name": "main", "image": "busybox", "command": ["true"]}]}}
    body = ex.pod_body(manifest, "t", "k", Resources())
    bad = ex.pod_body(
        {"spec": {"containers": [{"name": "Not_A_Name", "image": "busybox"}]}}, "t", "b", Resources()
    )
    try:
        async with session:
            cluster = ex.cluster
            pod = await cluster.create_pod(body, as_json=True)
            assert isinstance(pod, dict) and pod["metadata"]["name"] == body["metadata"]["name"]
            uid = pod["metadata"]["uid"]
            assert pod["metadata"]["finalizers"] == [CLEANUP_FINALIZER]
            with pytest.raises(KubeApiError) as taken:
                await cluster.create_pod(body, as_json=True)
            assert taken.value.status == 409 and "already exists" in str(taken.value), taken.value
            with pytest.raises(
                ConfigurationError, match=r"^Kubernetes refused creating pod .*: invalid: .*Not_A_Name"
            ):
                await cluster.create_pod(bad, as_json=True)
            name_ = body["metadata"]["name"]
            assert await cluster.patch_pod(name_, {"metadata": {"labels": {"x": "y"}}}, uid="0" * 8) is None
            patched = await cluster.patch_pod(
                name_, {"metadata": {"labels": {"x": "y"}}}, uid=uid, as_json=True
            )
            assert patched["metadata"]["labels"]["x"] == "y"
            assert await cluster.delete_pod(name_, uid=uid)
            assert await cluster.remove_finalizer(name_, uid, CLEANUP_FINALIZER)
            for _ in range(100):  # the finished or deleted pod leaves once its finalizer is gone
                if await cluster.read_pod(name_) is None:
                    break
                await asyncio.sleep(0.1)
            assert await cluster.read_pod(name_) is None
            assert not await cluster.delete_pod(name_, uid=uid)
            assert not await cluster.remove_finalizer(name_, uid, CLEANUP_FINALIZER)
            await ex.aclose()
    finally:
        await let_go(kcfg, label=f"pydatatask.io/executor={name}")
    await no_executor_pods_left(kcfg, name)
