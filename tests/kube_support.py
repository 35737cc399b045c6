"""What the Kubernetes tests share: executors on the test cluster (each with an API client
of its own, as separate schedulers have), and the pods a test made, to check that none is
left behind."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
import urllib.parse
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from pydatatask import FileRepository, MemoryMetadataRepository, Session
from pydatatask.executor.kubernetes import KubeExecutor
from pydatatask.executor.pods import api_client, pod_name
from pydatatask.repository.base import Repository
from pydatatask.task.pod import PodTask

__all__ = (
    "SH_POD",
    "make_executor",
    "pod_task",
    "WatchedPodTask",
    "pods",
    "no_pods_left",
    "let_go",
    "executor_pods",
    "no_executor_pods_left",
    "Requests",
    "observed_executor",
)

#: a pod template running ``params.script`` with ``sh -c`` (the job's key in ``$KEY``);
#: tests add to its one container's env by appending lines
SH_POD = """
spec:
  containers:
  - name: main
    image: busybox
    command: ["sh", "-c", {{ params.script }}]
    env:
    - {name: KEY, value: {{ key }}}
"""


class WatchedPodTask(PodTask):
    """Notes, at each removal of partial outputs, whether the key's pod is in the API
    (``held``): a failed attempt's pod keeps the key until the next attempt starts."""

    held: list[bool]

    async def cleanup_outputs(self, key: str, *args: Any, **kwargs: Any) -> bool:
        ex = self.executor
        assert isinstance(ex, KubeExecutor)
        self.held.append(await ex.cluster.read_pod(pod_name(self.name, key)) is not None)
        return await super().cleanup_outputs(key, *args, **kwargs)


def make_executor(session: Session, kcfg: dict[str, Any], name: str, **kw: Any) -> KubeExecutor:
    """A :class:`KubeExecutor` called ``name`` on the test cluster, its client a resource of
    ``session`` of its own (so two executors behave as two schedulers)."""

    async def kube() -> AsyncIterator[Any]:
        async with api_client(kcfg["kubeconfig"]) as api:
            yield api

    kube.__name__ = f"kube_{secrets.token_hex(4)}"  # one resource per executor of a session
    return KubeExecutor(session.resource(kube), name=name, namespace=kcfg["namespace"], **kw)


def pod_task(
    session: Session,
    kcfg: dict[str, Any],
    name: str,
    manifest: str,
    keys: list[str],
    tmp_path: Path,
    *,
    cls: type[PodTask] = PodTask,
    out: Repository | None = None,
    extension: str = "",
    **kw: Any,
) -> tuple[Any, Any]:
    """A pod task ``name`` (of class ``cls``) on its own executor, for ``keys`` (its input
    ``src`` in memory), its output link ``o`` in ``tmp_path/out`` (files with
    ``extension``, or ``out``): the task and the output repository."""
    (tmp_path / "out").mkdir(exist_ok=True)
    out = out if out is not None else FileRepository(tmp_path / "out", extension)
    src = MemoryMetadataRepository({k: {} for k in keys})
    task = cls(
        name,
        manifest,
        executor=make_executor(session, kcfg, name),
        inputs={"src": src},
        outputs={"o": out},
        **kw,
    )
    return task, out


async def pods(
    kcfg: dict[str, Any], *, label: str | None = None, task_prefix: str | None = None
) -> list[Any]:
    """The pods of the test namespace matching ``label`` (a label selector such as
    ``pydatatask.io/executor=NAME``) and whose task annotation starts with ``task_prefix``."""
    from kubernetes_asyncio import client

    async with api_client(kcfg["kubeconfig"]) as api:
        result = await client.CoreV1Api(api).list_namespaced_pod(
            kcfg["namespace"], **({"label_selector": label} if label else {})
        )
    return [
        p
        for p in result.items
        if task_prefix is None
        or (p.metadata.annotations or {}).get("pydatatask.io/task", "").startswith(task_prefix)
    ]


async def no_pods_left(kcfg: dict[str, Any], within: float = 20.0, **match: Any) -> None:
    """Wait until no pod matches (as for :func:`pods`); fail naming those left after
    ``within`` seconds."""
    deadline = time.monotonic() + within
    while left := await pods(kcfg, **match):
        assert time.monotonic() < deadline, f"pods left behind: {[p.metadata.name for p in left]}"
        await asyncio.sleep(0.2)


async def let_go(kcfg: dict[str, Any], **match: Any) -> None:
    """Delete the matching pods at once and drop their finalizers (the end of a test whose
    own checks failed: nothing stays Terminating in the namespace)."""
    from kubernetes_asyncio import client
    from kubernetes_asyncio.client.exceptions import ApiException

    async with api_client(kcfg["kubeconfig"]) as api:
        core = client.CoreV1Api(api)
        for pod in await pods(kcfg, **match):
            with contextlib.suppress(ApiException):  # 404: gone meanwhile
                await core.delete_namespaced_pod(pod.metadata.name, kcfg["namespace"], grace_period_seconds=0)
                await core.patch_namespaced_pod(
                    pod.metadata.name, kcfg["namespace"], {"metadata": {"finalizers": None}}
                )


async def executor_pods(kcfg: dict[str, Any], name: str) -> list[Any]:
    """The pods of the executor called ``name`` (by its label)."""
    return await pods(kcfg, label=f"pydatatask.io/executor={name}")


async def no_executor_pods_left(kcfg: dict[str, Any], name: str, within: float = 20.0) -> None:
    """Wait until the executor called ``name`` has no pod left (see :func:`no_pods_left`)."""
    await no_pods_left(kcfg, within, label=f"pydatatask.io/executor={name}")


# ---------------------------------------------------------------------------- API requests
class Requests:
    """The API requests an ``ApiClient`` sent: ``(method, path, query)`` in order."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, str, dict[str, str]]] = []
        #: set at each request (clear it, then wait for the next one)
        self.more = asyncio.Event()

    def attach(self, api: Any) -> None:
        """Note every request of ``api`` (its REST client's one entry point)."""
        rest = api.rest_client
        send = rest.request

        async def request(method: str, url: str, *args: Any, **kwargs: Any) -> Any:
            query = {str(k): str(v) for k, v in kwargs.get("query_params") or []}
            self.sent.append((method, urllib.parse.urlsplit(url).path, query))
            self.more.set()
            return await send(method, url, *args, **kwargs)

        rest.request = request

    def pod_lists(self) -> list[dict[str, str]]:
        """The query of each LIST of pods (a collection GET that is not a watch)."""
        return [q for m, p, q in self.sent if m == "GET" and p.endswith("/pods") and q.get("watch") != "True"]

    def pod_watches(self) -> list[dict[str, str]]:
        """The query of each WATCH of pods."""
        return [q for m, p, q in self.sent if m == "GET" and p.endswith("/pods") and q.get("watch") == "True"]

    def pod_reads(self) -> int:
        """GETs of single pods."""
        return sum(1 for m, p, _ in self.sent if m == "GET" and "/pods/" in p and not p.endswith("/log"))


def observed_executor(
    session: Session, kcfg: dict[str, Any], name: str, *, server: str | None = None, **kw: Any
) -> tuple[KubeExecutor, Requests]:
    """As :func:`make_executor`, with every API request noted in the :class:`Requests`
    returned, and sent to ``server`` (e.g. a proxy's ``https://127.0.0.1:PORT``) instead of
    the kubeconfig's server if given."""
    requests = Requests()

    async def kube() -> AsyncIterator[Any]:
        async with api_client(kcfg["kubeconfig"]) as api:
            if server is not None:
                api.configuration.host = server
            requests.attach(api)
            yield api

    kube.__name__ = f"kube_{secrets.token_hex(4)}"
    ex = KubeExecutor(session.resource(kube), name=name, namespace=kcfg["namespace"], **kw)
    return ex, requests
