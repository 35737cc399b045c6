"""What the Kubernetes API shows of a job's pod: the names of the labels, annotations and
finalizer pydatatask puts on it, and what a pod's state means for its job
(:func:`cleanup_pending`, :func:`containers_stopped`, :func:`pending_reason`).
"""

from __future__ import annotations

import datetime
from typing import Any

__all__ = (
    "TASK_LABEL",
    "KEY_LABEL",
    "EXECUTOR_LABEL",
    "TASK_ANNOTATION",
    "KEY_ANNOTATION",
    "KEYS_ANNOTATION",
    "CLAIM_ANNOTATION",
    "RUN_ANNOTATION",
    "CLEANUP_FINALIZER",
    "FINISHED_PHASES",
    "iso_time",
    "cleanup_pending",
    "containers_stopped",
    "pending_reason",
)

TASK_LABEL = "pydatatask.io/task"
KEY_LABEL = "pydatatask.io/key"
#: the label naming the :class:`~pydatatask.executor.kubernetes.KubeExecutor` of a pod
EXECUTOR_LABEL = "pydatatask.io/executor"
TASK_ANNOTATION = "pydatatask.io/task"
#: the exact job key (labels and names only hold a sanitised, hashed form)
KEY_ANNOTATION = "pydatatask.io/key"
#: every key of a batch's pod, a JSON list (``pydatatask.io/key`` names its first): what a
#: scheduler restarted after a crash finds the pod of each of them by
KEYS_ANNOTATION = "pydatatask.io/keys"
CLAIM_ANNOTATION = "pydatatask.io/claim"
#: who started the pod (``{"executor", "run", "host", "pid"}`` as JSON)
RUN_ANNOTATION = "pydatatask.io/run"
#: the finalizer on every pod of a job (a deleted pod stays in the API, and keeps its key
#: claimed, until its job's partial outputs have been removed)
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
