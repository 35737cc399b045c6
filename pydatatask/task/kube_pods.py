"""The pods of a :class:`~pydatatask.task.kube.KubeTask` as the API shows them: the names
of their labels, annotations and finalizer, what a pod's state means for its job
(:func:`cleanup_pending`, :func:`containers_stopped`, :func:`pending_reason`), and
:class:`KubePodRepository`, the task's ``live`` repository.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Iterable, Mapping
from typing import Any

from ..errors import KeyNotFoundError, UnsupportedOperationError
from ..executor.kube import KubeCluster, PodPoller, label_value, pod_name
from ..repository.base import MetadataRepository

__all__ = (
    "KubePodRepository",
    "CLEANUP_FINALIZER",
    "pod_summary",
    "cleanup_pending",
    "containers_stopped",
    "pending_reason",
    "same_claim",
    "iso_time",
)

TASK_LABEL = "pydatatask.io/task"
KEY_LABEL = "pydatatask.io/key"
TASK_ANNOTATION = "pydatatask.io/task"
KEY_ANNOTATION = "pydatatask.io/key"
CLAIM_ANNOTATION = "pydatatask.io/claim"
#: the finalizer on every pod of a task: a deleted pod stays in the API (and keeps its key
#: claimed) until its job's partial outputs have been removed
CLEANUP_FINALIZER = "pydatatask.io/cleanup"

#: the phases of a pod whose containers have all ended
FINISHED_PHASES = ("Succeeded", "Failed")


def iso_time(value: Any) -> str | None:
    """A timestamp of the API (a ``datetime``, or already text) as ISO-8601 text, or None."""
    if value is None:
        return None
    if isinstance(value, datetime.datetime):
        return value.isoformat()
    return str(value)


def cleanup_pending(pod: Any) -> bool:
    """Whether ``pod`` was deleted but is held by the finalizer ``pydatatask.io/cleanup``:
    its job's partial outputs may still have to be removed before its key can run again."""
    meta = pod.metadata
    return meta.deletion_timestamp is not None and CLEANUP_FINALIZER in (meta.finalizers or [])


def containers_stopped(pod: Any) -> bool:
    """Whether no container of ``pod`` can run any more: its phase is final, or it was
    deleted and its grace period is over (the kubelet confirms the stop by deleting it
    with grace 0; the API server does so itself for unscheduled or finished pods)."""
    if pod.status is not None and pod.status.phase in FINISHED_PHASES:
        return True
    meta = pod.metadata
    return meta.deletion_timestamp is not None and meta.deletion_grace_period_seconds == 0


def same_claim(annotation: str | None, judged: Mapping[str, Any]) -> bool:
    """Whether the claim annotation is still the claim ``judged`` (a :func:`pod_summary`)."""
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
    :func:`pod_summary` dicts, ``delete`` deletes the pod. Used as a KubeTask's ``live``.

    Listings come from the task's shared :class:`PodPoller` snapshot (at most one LIST per
    poll interval). A deleted pod still held by the finalizer ``pydatatask.io/cleanup`` is
    listed too (its value says ``cleanup_pending``): its key stays claimed until the task
    lets it go. Writes are not supported: pods are created by the task's claim.
    """

    def __init__(self, cluster: KubeCluster, task: str, poll_interval: float) -> None:
        self.cluster = cluster
        self.task_name = task
        self.selector = f"{TASK_LABEL}={label_value(task)}"
        self.poller = PodPoller(cluster, self.selector, poll_interval)
        #: keys of orphaned pods offered for adoption: {key: pod uid}; hidden from listings
        self.adoptable: dict[str, str] = {}
        #: True inside a KubeFunctionTask's own pod: no API access
        self.offline = False

    def describe(self) -> str:
        return f"pods of task {self.task_name} in namespace {self.cluster.namespace}"

    async def validate(self, create: bool = False) -> None:
        if not self.offline:
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
        if self.offline:
            return {}
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
        if not self.offline:
            await self.cluster.delete_pod(pod_name(self.task_name, key))


def pending_reason(pod: Any) -> str:
    """Why a pod is Pending: an Unschedulable condition, a container's waiting reason, ..."""
    reasons: list[str] = []
    status = pod.status
    for cond in (status.conditions if status else None) or []:
        if cond.status != "True" and (cond.reason or cond.message):
            reasons.append(f"{cond.type} {cond.reason or ''}: {cond.message or ''}".strip(": "))
    for cs in (status.container_statuses if status else None) or []:
        waiting = cs.state.waiting if cs.state else None
        if waiting is not None and waiting.reason:
            reasons.append(f"container {cs.name} {waiting.reason}: {waiting.message or ''}".strip(": "))
    if pod.spec is not None and not pod.spec.node_name and not reasons:
        reasons.append("not scheduled to any node yet")
    return "; ".join(reasons) or "no reason reported"
