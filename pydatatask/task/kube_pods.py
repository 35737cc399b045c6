"""The pods of a :class:`~pydatatask.task.kube.KubeTask` as the task's ``live`` repository
(:class:`KubePodRepository`) and the claim each pod carries. What a pod's state means is
in :mod:`pydatatask.executor.pod_state`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from ..errors import KeyNotFoundError, UnsupportedOperationError
from ..executor.pod_state import (
    CLAIM_ANNOTATION,
    KEY_ANNOTATION,
    TASK_ANNOTATION,
    TASK_LABEL,
    cleanup_pending,
    iso_time,
)
from ..executor.pods import KubeCluster, PodPoller, label_value, pod_name
from ..repository.base import MetadataRepository

__all__ = ("KubePodRepository", "pod_summary", "same_claim")


def same_claim(annotation: str | None, judged: Mapping[str, Any]) -> bool:
    """Whether the claim annotation is still the claim ``judged`` (a :func:`~pydatatask.task.kube_pods.pod_summary`)."""
    try:
        current = json.loads(annotation or "{}")
    except ValueError:
        current = None
    if not isinstance(current, dict):
        return not any(judged.get(k) is not None for k in ("owner", "pid", "started"))
    return all(judged.get(k) == v for k, v in current.items())


def pod_summary(pod: Any) -> dict[str, Any]:
    """The ``live`` value of a pod: its claim (owner, host, pid, ...) plus pod facts."""
    meta = pod.metadata
    annotations = meta.annotations or {}
    try:
        claim = json.loads(annotations.get(CLAIM_ANNOTATION, "{}"))
    except ValueError:
        claim = {}
    summary: dict[str, Any] = claim if isinstance(claim, dict) else {}
    summary.update(
        pod=meta.name,
        uid=meta.uid,
        namespace=meta.namespace,
        task=annotations.get(TASK_ANNOTATION),
        key=annotations.get(KEY_ANNOTATION),
        phase=(pod.status.phase if pod.status else None) or "Pending",
        node=pod.spec.node_name if pod.spec else None,
        created=iso_time(meta.creation_timestamp),
        deleting=meta.deletion_timestamp is not None,
        cleanup_pending=cleanup_pending(pod),
    )
    return summary


class KubePodRepository(MetadataRepository):
    """The pods of one task (label ``pydatatask.io/task``), as a metadata repository:
    keys are the exact job keys (from the ``pydatatask.io/key`` annotation), values are
    :func:`~pydatatask.task.kube_pods.pod_summary` dicts, ``delete`` deletes the pod. Used as a KubeTask's ``live``.

    Listings come from the task's shared :class:`~pydatatask.executor.pods.PodPoller` snapshot (at most one LIST per
    poll interval). A deleted pod still held by the finalizer ``pydatatask.io/cleanup`` is
    listed too (its value says ``cleanup_pending``): its key stays claimed until the task
    lets it go. Writes are not supported: pods are created by the task's claim.
    """

    def __init__(self, cluster: KubeCluster, task: str, poll_interval: float) -> None:
        self.cluster = cluster
        self.task_name = task
        self.selector = f"{TASK_LABEL}={label_value(task)}"
        self.poller = PodPoller(cluster, self.selector, poll_interval)
        #: keys of orphaned pods offered for adoption (``{key: pod uid}``), hidden from listings
        self.adoptable: dict[str, str] = {}

    def describe(self) -> str:
        return f"pods of task {self.task_name} in namespace {self.cluster.namespace}"

    async def validate(self, create: bool = False) -> None:
        await self.poller.refresh(0)  # fail early, with a clear error, if the API is unreachable

    def _mine(self, pods: Mapping[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for pod in pods.values():
            annotations = pod.metadata.annotations or {}
            key = annotations.get(KEY_ANNOTATION)
            if key and annotations.get(TASK_ANNOTATION) == self.task_name:
                out[key] = pod
        return out

    async def pods(self) -> dict[str, Any]:
        """``{key: pod}`` from the current snapshot (listed again if older than the interval)."""
        return self._mine(await self.poller.refresh())

    async def _list(self) -> Iterable[str]:
        return [k for k in await self.pods() if k not in self.adoptable]

    async def _get(self, key: str) -> Any:
        pod = (await self.pods()).get(key)
        if pod is None:
            raise KeyNotFoundError(key, self.describe())
        return pod_summary(pod)

    async def _get_many(self, keys: list[str]) -> dict[str, Any]:
        pods = await self.pods()
        return {k: pod_summary(pods[k]) for k in keys if k in pods}

    async def _put(self, key: str, value: Any) -> None:
        raise UnsupportedOperationError(f"{self.describe()}: pods are created by the task, not written")

    async def _delete(self, key: str) -> None:
        await self.cluster.delete_pod(pod_name(self.task_name, key))
