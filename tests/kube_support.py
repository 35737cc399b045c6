"""What the Kubernetes tests share: executors on the test cluster (each with an API client
of its own, as separate schedulers have), and the pods a test made, to check that none is
left behind."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
import urllib.parse
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

from pydatatask import FileRepository, MemoryMetadataRepository, Session
from pydatatask.executor.kubernetes import KubeExecutor
from pydatatask.executor.pods import api_client, pod_name
from pydatatask.repository.base import Repository
from pydatatask.session import ResourceAccessor
from pydatatask.task.pod import PodTask

__all__ = (
    "SH_POD",
    "sh_pod",
    "kube_resource",
    "make_executor",
    "pod_task",
    "WatchedPodTask",
    "pods",
    "no_pods_left",
    "let_go",
    "executor_pods",
    "no_executor_pods_left",
    "settled",
    "batch_scheduler",
    "Requests",
    "observed_executor",
)


def sh_pod(env: Mapping[str, str], *, pod_uid: bool = False, grace: int | None = None) -> str:
    """A pod template whose one container runs ``params.script`` with ``sh -c``, with the
    environment ``env`` (name -> template text, e.g. ``{"OUT": "{{ o.root }}"}``), the
    pod's uid in ``$POD_UID`` if ``pod_uid``, and ``grace`` seconds between TERM and KILL
    when the pod is deleted if given. The env list comes last: lines appended to the
    template add to it."""
    lines = ["spec:"]
    if grace is not None:
        lines.append(f"  terminationGracePeriodSeconds: {grace}")
    lines += [
        "  containers:",
        "  - name: main",
        "    image: busybox",
        '    command: ["sh", "-c", {{ params.script }}]',
        "    env:",
    ]
    lines += [f"    - {{name: {name}, value: {value}}}" for name, value in env.items()]
    if pod_uid:
        lines += ["    - name: POD_UID", "      valueFrom: {fieldRef: {fieldPath: metadata.uid}}"]
    return "\n".join(lines) + "\n"


#: a pod template running ``params.script`` with ``sh -c`` (the job's key in ``$KEY``);
#: tests add to its one container's env by appending lines
SH_POD = sh_pod({"KEY": "{{ key }}"})


class WatchedPodTask(PodTask):
    """Notes, at each removal of partial outputs, whether the key's pod is in the API
    (``held``): a failed attempt's pod keeps the key until the next attempt starts."""

    held: list[bool]

    async def cleanup_outputs(self, key: str, *args: Any, **kwargs: Any) -> bool:
        ex = self.executor
        assert isinstance(ex, KubeExecutor)
        self.held.append(await ex.cluster.read_pod(pod_name(self.name, key)) is not None)
        return await super().cleanup_outputs(key, *args, **kwargs)


def kube_resource(
    session: Session, kubeconfig: str, *, server: str | None = None, requests: Requests | None = None
) -> ResourceAccessor[Any]:
    """An API client of the cluster of ``kubeconfig`` as a resource of ``session`` of its
    own (one per executor: two executors behave as two schedulers), sending to ``server``
    instead of the kubeconfig's server if given, noting every request in ``requests`` if
    given. Also what the scheduler scripts that tests run in a subprocess use."""

    async def kube() -> AsyncIterator[Any]:
        async with api_client(kubeconfig) as api:
            if server is not None:
                api.configuration.host = server
            if requests is not None:
                requests.attach(api)
            yield api

    kube.__name__ = f"kube_{secrets.token_hex(4)}"  # one resource per executor of a session
    return session.resource(kube)


def make_executor(session: Session, kcfg: dict[str, Any], name: str, **kw: Any) -> KubeExecutor:
    """A :class:`KubeExecutor` called ``name`` on the test cluster, its client a resource of
    ``session`` of its own (so two executors behave as two schedulers)."""
    return KubeExecutor(
        kube_resource(session, kcfg["kubeconfig"]), name=name, namespace=kcfg["namespace"], **kw
    )


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


async def settled(kcfg: dict[str, Any], name: str) -> None:
    """The end of a test of the executor called ``name``: wait until it has no pod left
    (failing otherwise), and let go whatever is left in any case."""
    try:
        await no_executor_pods_left(kcfg, name)
    finally:
        await let_go(kcfg, label=f"pydatatask.io/executor={name}")


def batch_scheduler(task: PodTask, session: Session, root: str) -> None:
    """What the scheduler script of a batch test does, run in a subprocess: run the
    pipeline of ``task`` (its state under ``root/state``, claims checked every second),
    then print ``OK N`` (or ``FAILED N``), N the jobs that succeeded."""
    from pydatatask.pipeline import Pipeline

    pipeline = Pipeline([task], session, state_dir=root + "/state", claim_check_interval="1s")
    summary = asyncio.run(pipeline.run())
    print("OK" if summary.ok else "FAILED", summary.succeeded, flush=True)


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
    kube = kube_resource(session, kcfg["kubeconfig"], server=server, requests=requests)
    return KubeExecutor(kube, name=name, namespace=kcfg["namespace"], **kw), requests
