"""Kubernetes as an executor: each job is one pod (:class:`KubeExecutor`, :class:`PodHandle`).

:class:`KubeExecutor` carries :class:`~pydatatask.executor.base.PodWork` (a rendered
manifest) and :class:`~pydatatask.executor.base.FunctionCall` (the function runs in a pod of
the pipeline's image: the pod runs the pipeline script with the hidden command
:data:`FUNCTION_COMMAND`, which reads the job's inputs, calls the function and writes its
outputs; the scheduler's lifecycle keeps the claim and writes the record).

What the executor guarantees about a job's pod:

* **one pod per (task, key)**: the pod is named by
  :func:`~pydatatask.executor.pods.pod_name`, so a second pod of the same job cannot exist.
  The claim is the lifecycle's; a 409 on creation means the job's pod exists already: a
  pod that runs or has finished is adopted (the claim holder waits for it and records its
  end, the work is not started twice), one held for another scheduler's cleanup is
  :class:`PodNameTakenError`. The exact task and key are kept in annotations, sanitised
  forms in labels; the pod of a batch (named by its first key) lists every key of the
  batch in the annotation ``pydatatask.io/keys``.
* **held until closed**: every pod carries the finalizer ``pydatatask.io/cleanup``, so a
  pod deleted by a timeout, a cancellation or by hand stays in the API (its name taken)
  until :meth:`PodHandle.close`, which the lifecycle calls after the job's partial outputs
  are gone; a crashed scheduler's pod thus keeps its key until someone recovers it.
* **one watch per executor**: one :class:`~pydatatask.executor.kube_watch.PodWatch` lists
  the executor's pods (label ``pydatatask.io/executor``) once, then watches them from that
  list's resourceVersion: each change wakes the handle waiting for that pod as it
  arrives; a dropped connection resumes from the last resourceVersion seen, an expired
  one (410 Gone) lists again.
* **recovery**: :meth:`KubeExecutor.recover` turns a handle's :attr:`~pydatatask.executor.base.JobHandle.info` into a
  handle on the same pod (same uid), adoptable while the pod was not deleted (it runs or
  has finished: its outcome is recorded, not redone); :meth:`KubeExecutor.jobs` lists the
  pods of a task for orphans that no claim names, a batch's pod under each of its keys.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import socket
import time
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from ..durations import parse_duration
from ..errors import ConfigurationError, JobError
from ..quantities import parse_cpu, parse_memory
from .base import Capacity, Executor, FunctionCall, JobHandle, Outcome, PodWork, Resources, Slot, Work
from .kube_watch import PodWatch
from .pod_state import (
    CLEANUP_FINALIZER,
    EXECUTOR_LABEL,
    FINISHED_PHASES,
    KEY_ANNOTATION,
    KEY_LABEL,
    KEYS_ANNOTATION,
    RUN_ANNOTATION,
    TASK_ANNOTATION,
    TASK_LABEL,
    containers_stopped,
    iso_time,
    pending_reason,
)
from .pods import KubeApiError, KubeCluster, label_value, pod_name
from .quota import LaunchRate

__all__ = ("KubeExecutor", "PodHandle", "PodNameTakenError", "FUNCTION_COMMAND", "pod_outcome")

log = logging.getLogger("pydatatask.executor.kubernetes")

#: seconds after which a handle whose pod the watch does not show asks the API (a GET)
_UNSEEN_CHECK = 10.0

#: the hidden command of a pipeline script that runs one function call in a pod:
#: ``python SCRIPT _call-function TASK KEY``
FUNCTION_COMMAND = "_call-function"


def _phase(pod: Mapping[str, Any]) -> str:
    """The phase of a pod as the API's JSON object."""
    return str((pod.get("status") or {}).get("phase") or "Pending")


def _deleted(pod: Mapping[str, Any]) -> bool:
    """Whether a pod (the API's JSON object) was deleted."""
    return (pod.get("metadata") or {}).get("deletionTimestamp") is not None


class PodNameTakenError(JobError):
    """The pod name of a job is held by a pod this executor did not start for this job:
    another scheduler runs the key."""

    def __init__(self, message: str, pod: str) -> None:
        super().__init__(message)
        self.pod = pod


def pod_outcome(pod: Any) -> Outcome:
    """The :class:`~pydatatask.executor.base.Outcome` of a finished pod: the first non-zero
    exit status of its containers (else the first one's), the node, and under
    ``extra["kube"]`` phase, reason, times and each container's exit status; ``error`` is a
    :class:`~pydatatask.errors.JobError` naming the failed containers unless it succeeded."""
    status = pod.status
    containers: dict[str, dict[str, Any]] = {}
    finished: list[str] = []
    for cs in (status.init_container_statuses or []) + (status.container_statuses or []):
        term = cs.state.terminated if cs.state else None
        if term is None:
            containers[cs.name] = {"exit_code": None, "reason": "not terminated"}
            continue
        containers[cs.name] = {
            "exit_code": term.exit_code,
            "reason": term.reason,
            "started_at": iso_time(term.started_at),
            "finished_at": iso_time(term.finished_at),
        }
        if term.finished_at is not None:
            finished.append(iso_time(term.finished_at) or "")
    codes = [containers.get(c.name, {}).get("exit_code") for c in pod.spec.containers]
    exit_code = next((c for c in codes if c not in (0, None)), codes[0] if codes else None)
    info = {
        "pod": pod.metadata.name,
        "uid": pod.metadata.uid,
        "namespace": pod.metadata.namespace,
        "phase": status.phase,
        "reason": status.reason,
        "message": status.message,
        "node": pod.spec.node_name,
        "start_time": iso_time(status.start_time),
        "finish_time": max(finished) if finished else None,
        "containers": containers,
    }
    outcome = Outcome(exit_code=exit_code, place=pod.spec.node_name, extra={"kube": info})
    if status.phase != "Succeeded":
        bad = [(c, d) for c, d in containers.items() if d.get("exit_code") != 0]
        what = ", ".join(
            f"container {c} exited with {d.get('exit_code')} ({d.get('reason')})" for c, d in bad
        )
        why = status.reason or ""
        if status.message:
            why = f"{why}: {status.message}" if why else status.message
        outcome.error = JobError(f"pod {pod.metadata.name} failed: {what or why or 'phase Failed'}")
    return outcome


class PodHandle(JobHandle):
    """The pod of one job. When :meth:`wait` returns, no container of the pod runs any more;
    the pod keeps its name (and so its key) until :meth:`close`."""

    def __init__(
        self, executor: KubeExecutor, name: str, uid: str, task: str, key: str, *, adoptable: bool = False
    ) -> None:
        self.executor = executor
        self.name = name
        self.uid = uid
        self.task = task
        self.key = key
        self.adoptable = adoptable
        self.info = {
            "executor": "kube",
            "namespace": executor.cluster.namespace,
            "pod": name,
            "uid": uid,
            "task": task,
            "key": key,
        }
        self._since = time.monotonic()
        self._asked_at = self._since
        self._pod: Any = None
        self._outcome: Outcome | None = None
        self._closed = False

    def __repr__(self) -> str:
        return f"<PodHandle {self.executor.cluster.namespace}/{self.name} uid={self.uid}>"

    def describe(self) -> str:
        return f"pod {self.executor.cluster.namespace}/{self.name}"

    def _left(self, since: float) -> float | None:
        """Seconds until ``pending_timeout`` is over, counted from ``since`` (None: no limit)."""
        timeout = self.executor.pending_timeout
        return None if timeout is None else max(0.0, timeout - (time.monotonic() - since))

    async def _unseen_gone(self) -> bool:
        """Whether the pod, which the watch does not show, is gone: asked of the API (a
        GET) at most every few seconds, so that a handle never waits for an event that
        went by before it was made."""
        now = time.monotonic()
        if now - max(self._since, self._asked_at) < _UNSEEN_CHECK:
            return False
        self._asked_at = now
        pod = await self.executor.cluster.read_pod(self.name)
        return pod is None or pod.metadata.uid != self.uid

    async def started(self) -> None:
        """Return once the pod left ``Pending`` (its containers were started), has ended or
        is gone, or its ``pending_timeout`` passed (then :meth:`wait` reports why)."""
        watch = self.executor.watch
        async with watch.interest():
            while True:
                pod, gone = watch.lookup(self.name, self.uid, self._since)
                if gone:
                    return
                if pod is None:
                    if await self._unseen_gone():
                        return
                    await watch.changed(self.name, _UNSEEN_CHECK)
                    continue
                left = self._left(self._since)
                if _phase(pod) != "Pending" or _deleted(pod) or left == 0:
                    return
                await watch.changed(self.name, left)

    async def wait(self) -> Outcome:
        """Wait until the pod has ended; a pod deleted or still Pending after
        ``pending_timeout`` is stopped first and reported as an error."""
        if self._outcome is not None:
            return self._outcome
        watch = self.executor.watch
        where = self.executor.cluster.namespace
        async with watch.interest():
            while True:
                pod, gone = watch.lookup(self.name, self.uid, self._since)
                if gone:
                    return self._end(
                        Outcome(error=JobError(f"pod {self.name} disappeared before it finished (deleted?)"))
                    )
                if pod is None:
                    if await self._unseen_gone():
                        return self._end(
                            Outcome(
                                error=JobError(f"pod {self.name} disappeared before it finished (deleted?)")
                            )
                        )
                    await watch.changed(self.name, _UNSEEN_CHECK)
                    continue
                phase = _phase(pod)
                if phase in FINISHED_PHASES:
                    self._pod = watch.model(pod)
                    return self._end(pod_outcome(self._pod))
                if _deleted(pod):
                    await self._await_stopped()
                    return self._end(
                        Outcome(
                            error=JobError(f"pod {self.name} was deleted before it finished"), place=where
                        )
                    )
                left = self._left(self._since) if phase == "Pending" else None
                if left == 0:
                    timeout = self.executor.pending_timeout
                    assert timeout is not None
                    reason = pending_reason(watch.model(pod))
                    await self.cancel(0)
                    return self._end(
                        Outcome(
                            error=JobError(f"pod {self.name} still Pending after {timeout:g}s: {reason}"),
                            place=where,
                        )
                    )
                await watch.changed(self.name, left)

    def _end(self, outcome: Outcome) -> Outcome:
        outcome.extra.setdefault(
            "kube", {"pod": self.name, "uid": self.uid, "namespace": self.info["namespace"]}
        )
        self._outcome = outcome
        return outcome

    async def cancel(self, grace: float) -> None:
        """Delete the pod (its containers get ``grace`` seconds after TERM) and return once
        they have stopped (at most the executor's ``delete_wait``). The pod keeps its name
        until :meth:`close`."""
        seconds = max(0, math.ceil(grace))
        if await self.executor.cluster.delete_pod(self.name, grace=seconds, uid=self.uid):
            await self._await_stopped()

    async def _await_stopped(self) -> bool:
        """Wait until the deleted pod's containers have stopped or it left the API; False
        after ``delete_wait``."""
        watch = self.executor.watch
        deadline = time.monotonic() + self.executor.delete_wait
        async with watch.interest():
            while True:
                pod, gone = watch.lookup(self.name, self.uid, self._since)
                if gone or (
                    pod is not None
                    and (_phase(pod) in FINISHED_PHASES or _deleted(pod))
                    and containers_stopped(watch.model(pod))
                ):
                    return True
                left = deadline - time.monotonic()
                if left <= 0:
                    log.warning("pod %s is still terminating after %gs", self.name, self.executor.delete_wait)
                    return False
                if pod is None and await self._unseen_gone():
                    return True
                await watch.changed(self.name, min(left, _UNSEEN_CHECK))

    async def logs(self) -> bytes:
        """Each container's log (init containers first), at most ``log_limit`` bytes each,
        under a line naming pod and container."""
        cluster = self.executor.cluster
        pod = self._pod or await cluster.read_pod(self.name)
        if pod is None or pod.metadata.uid != self.uid:
            return f"--- pod {self.name}: gone, no log ---\n".encode()
        names = [c.name for c in (pod.spec.init_containers or [])] + [c.name for c in pod.spec.containers]
        parts = []
        for cname in names:
            text = await cluster.pod_log(self.name, cname, self.executor.log_limit)
            parts.append(f"--- pod {self.name} container {cname} output ---\n{text.rstrip()}\n")
        return "".join(parts).encode()

    async def close(self) -> None:
        """Delete the pod (if it still exists) and drop its finalizer: it leaves the API and
        its key is free. Idempotent.

        The two requests are sent at once (one round trip on the job's path instead of
        two): either order ends with the pod gone, since the job is settled by now. The
        PATCH is sent first: dropping the finalizer first leaves a pod that the DELETE then
        removes at once (a finished pod needs no grace period); deleting first leaves the
        pod held, with a deletion the kubelet answers with a DELETE of its own, until the
        PATCH lands. A scheduler killed between the two leaves what it leaves when killed
        just before :meth:`close` (a finished pod of a settled job, for recovery to find),
        or a pod already on its way out."""
        if self._closed:
            return
        cluster = self.executor.cluster
        results = await asyncio.gather(
            cluster.remove_finalizer(self.name, self.uid, CLEANUP_FINALIZER),
            cluster.delete_pod(self.name, uid=self.uid),
            return_exceptions=True,
        )
        for result in results:
            if isinstance(result, BaseException):
                raise result
        self._closed = True


class KubeExecutor(Executor):
    """Runs each job as a pod in one namespace of a cluster.

    :param cluster: a :class:`~pydatatask.executor.pods.KubeCluster`, or an ``ApiClient`` /
        session accessor returning one (wrapped with ``namespace``).
    :param name: the executor's name, also its pods' label ``pydatatask.io/executor``: two
        pipelines sharing a namespace use different names, or one's recovery sees the
        other's pods.
    :param namespace: the namespace of the pods, when ``cluster`` is not a
        :class:`~pydatatask.executor.pods.KubeCluster` (which names its own).
    :param max_pods: at most this many pods at once.
    :param max_cpu: at most this much CPU requested by the pods at once (``"4"``,
        ``"500m"``).
    :param max_memory: at most this much memory requested by the pods at once (``"8Gi"``).
    :param launch_rate: at most this many pod creations per second.
    :param watch_linger: how long the watch of the executor's pods stays open once no job
        waits for its pod (``"60s"``): jobs launched meanwhile cost no new LIST. While
        jobs wait, pod states reach them as they change (there is no polling interval).
    :param pending_timeout: a pod still Pending after this long fails, naming the reason.
    :param log_limit: at most this many bytes of each container's log are kept.
    :param delete_wait: how long to wait for a deleted pod's containers to stop.
    :param image: for function calls: the image holding the pipeline script (with
        pydatatask and what the function imports).
    :param script_path: for function calls: where the pipeline script is in ``image``.
    :param python: the interpreter that runs the script in that image.
    :param working_dir: the working directory of function pods.
    :param env: environment added to every container: ``{NAME: "value"}`` or ``{NAME:
        {"secretKeyRef": {...}}}`` (a ``valueFrom``); secrets go here, never into commands.
    """

    carries = frozenset({PodWork, FunctionCall})
    #: a function call's pod reads the job's inputs and writes its outputs itself (the
    #: pipeline script's :data:`FUNCTION_COMMAND`): the task passes neither values nor results
    runs_whole_function = True

    def __init__(
        self,
        cluster: Any,
        *,
        name: str = "kube",
        namespace: str = "default",
        max_pods: int | None = None,
        max_cpu: str | float | None = None,
        max_memory: str | int | None = None,
        launch_rate: float | None = None,
        watch_linger: float | str = "60s",
        pending_timeout: float | str | None = None,
        log_limit: int = 1 << 20,
        delete_wait: float | str = "90s",
        image: str | None = None,
        script_path: str | None = None,
        python: str = "python3",
        working_dir: str | None = None,
        env: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(name)
        self.cluster = (
            cluster if isinstance(cluster, KubeCluster) else KubeCluster(cluster, namespace=namespace)
        )
        self.capacity = Capacity(
            name,
            max_jobs=max_pods,
            cpu=None if max_cpu is None else parse_cpu(max_cpu),
            memory=None if max_memory is None else parse_memory(max_memory),
        )
        self.rate = None if launch_rate is None else LaunchRate(launch_rate, f"executor {name!r}")
        self.watch_linger = parse_duration(watch_linger)
        self.pending_timeout = None if pending_timeout is None else parse_duration(pending_timeout)
        self.delete_wait = parse_duration(delete_wait)
        self.log_limit = log_limit
        self.image = image
        self.script_path = script_path
        self.python = python
        self.working_dir = working_dir
        self.env = dict(env or {})
        for var, value in self.env.items():
            if not isinstance(value, (str, dict)):
                raise ConfigurationError(
                    f"{self}: env {var!r} must be a string or a valueFrom dict, not {type(value).__name__}"
                )
        #: the watch of the executor's pods, shared by all its jobs
        self.watch = PodWatch(self.cluster, f"{EXECUTOR_LABEL}={label_value(name)}", linger=self.watch_linger)
        #: this executor object's run, written on its pods (with host and pid)
        self.run_id = uuid.uuid4().hex
        #: pods created by this executor object (for tests and status)
        self.created = 0

    def describe(self) -> str:
        return f"Kubernetes executor {self.name} (namespace {self.cluster.namespace})"

    # ---------------------------------------------------------------- capacity
    def fits_at_all(self, resources: Resources) -> bool:
        return self.capacity.fits_at_all(resources)

    def acquire(self, resources: Resources) -> Slot | None:
        """A slot for one pod, or None while the quota is full or the launch rate says wait.
        A pod larger than the whole quota is a :class:`~pydatatask.errors.ConfigurationError`."""
        if not self.capacity.fits_at_all(resources):
            raise ConfigurationError(
                f"{self.describe()}: a pod requests cpu={resources.cpu:g} memory={resources.memory} bytes, more "
                f"than the quota (max_cpu={self.capacity.cpu}, max_memory={self.capacity.memory}): it can never run"
            )
        if self.rate is not None and not self.rate.ready():
            return None
        slot = self.capacity.acquire(self, resources, self.cluster.namespace)
        if slot is not None and self.rate is not None:
            self.rate.take()
        return slot

    def release(self, slot: Slot) -> None:
        self.capacity.release(slot)

    # ---------------------------------------------------------------- pods
    def function_manifest(self, work: FunctionCall) -> dict[str, Any]:
        """The pod that runs ``work`` with the pipeline script's :data:`FUNCTION_COMMAND`."""
        if self.image is None or self.script_path is None:
            raise ConfigurationError(
                f"{self.describe()}: running functions in pods needs image= and script_path="
            )
        if work.is_async:
            raise ConfigurationError(
                f"{self.describe()}: {work.job[0]}: async functions run in the event loop only; "
                "a pod runs a plain function of input values"
            )
        task, key = work.job
        container: dict[str, Any] = {
            "name": "main",
            "image": self.image,
            "command": [self.python, self.script_path],
            "args": [FUNCTION_COMMAND, task, key],
        }
        if self.working_dir:
            container["workingDir"] = self.working_dir
        return {"apiVersion": "v1", "kind": "Pod", "spec": {"containers": [container]}}

    def pod_body(
        self,
        manifest: Mapping[str, Any],
        task: str,
        key: str,
        resources: Resources,
        keys: Sequence[str] = (),
    ) -> dict[str, Any]:
        """``manifest`` with the job's name, labels, annotations, finalizer, environment,
        default resources and ``restartPolicy: Never``. ``keys``: every key of a batch
        (``key`` its first), listed in the annotation ``pydatatask.io/keys``."""
        body = json.loads(json.dumps(manifest))  # a deep copy of plain data
        if not isinstance(body, dict) or body.get("kind", "Pod") != "Pod":
            raise ConfigurationError(f"{task}: the manifest must be one Pod (kind: Pod)")
        spec = body.get("spec")
        if (
            not isinstance(spec, dict)
            or not isinstance(spec.get("containers"), list)
            or not spec["containers"]
        ):
            raise ConfigurationError(f"{task}: the manifest needs spec.containers (a non-empty list)")
        body.setdefault("apiVersion", "v1")
        body["kind"] = "Pod"
        meta = body.get("metadata") or {}
        body["metadata"] = meta
        meta["name"] = pod_name(task, key)
        meta["namespace"] = self.cluster.namespace
        meta["labels"] = {
            **(meta.get("labels") or {}),
            EXECUTOR_LABEL: label_value(self.name),
            TASK_LABEL: label_value(task),
            KEY_LABEL: label_value(key),
        }
        run = {"executor": self.name, "run": self.run_id, "host": socket.gethostname(), "pid": os.getpid()}
        meta["annotations"] = {
            **(meta.get("annotations") or {}),
            TASK_ANNOTATION: task,
            KEY_ANNOTATION: key,
            RUN_ANNOTATION: json.dumps(run),
        }
        if len(keys) > 1:
            meta["annotations"][KEYS_ANNOTATION] = json.dumps(list(keys))
        meta["finalizers"] = [f for f in meta.get("finalizers") or [] if f != CLEANUP_FINALIZER] + [
            CLEANUP_FINALIZER
        ]
        spec.setdefault("restartPolicy", "Never")
        amounts = {}
        if resources.cpu:
            amounts["cpu"] = f"{resources.cpu:g}"
        if resources.memory:
            amounts["memory"] = str(resources.memory)
        env = [
            {"name": k, "valueFrom": v} if isinstance(v, dict) else {"name": k, "value": v}
            for k, v in self.env.items()
        ]
        for container in spec["containers"]:
            if not isinstance(container, dict):
                raise ConfigurationError(f"{task}: every container must be a mapping")
            if amounts and not container.get("resources"):
                container["resources"] = {"requests": dict(amounts), "limits": dict(amounts)}
            if env:
                names = {e.get("name") for e in container.get("env") or []}
                container["env"] = list(container.get("env") or []) + [
                    e for e in env if e["name"] not in names
                ]
        return body

    async def start(self, work: Work, slot: Slot) -> PodHandle:
        """Create the job's pod. The caller holds the job's claim, so a pod of the same job
        that exists already (its scheduler died, or lost the claim) is adopted: the handle
        is on that pod (``adoptable``), no second pod starts. A deleted pod of the job that
        leaves by itself is waited for; one held for another scheduler's cleanup (or a pod
        of another job under the name) is :class:`PodNameTakenError`."""
        if isinstance(work, PodWork):
            manifest: Mapping[str, Any] = work.manifest
        elif isinstance(work, FunctionCall):
            manifest = self.function_manifest(work)
        else:
            raise ConfigurationError(f"{self.describe()} does not run {work.kind} work")
        task, key = work.job
        body = self.pod_body(manifest, task, key, slot.resources, work.keys)
        name = body["metadata"]["name"]
        deadline = time.monotonic() + self.delete_wait
        while True:
            try:
                pod = await self.cluster.create_pod(body, as_json=True)
                break
            except KubeApiError as exc:
                if exc.status != 409:
                    raise
            old = await self.cluster.read_pod(name)
            if old is not None and self._same_job(old, task, key) and old.metadata.deletion_timestamp is None:
                # the job's pod runs (or ran) already, started by a scheduler that is gone or
                # lost its claim: the caller holds the claim now and takes the pod over
                # instead of starting the work a second time
                log.warning("%s: adopting pod %s of %s %r", self.describe(), name, task, key)
                return PodHandle(self, name, old.metadata.uid, task, key, adoptable=True)
            if old is not None and not self._leaving(old, task, key):
                raise PodNameTakenError(
                    f"{task} {key!r}: pod {name} is held for another job or another scheduler's cleanup", name
                ) from None
            if time.monotonic() > deadline:
                raise JobError(f"{task} {key!r}: the previous pod {name} is still terminating")
            async with self.watch.interest():  # the old pod's next change, or a second
                await self.watch.changed(name, 1.0)
        self.created += 1
        return PodHandle(self, pod["metadata"]["name"], pod["metadata"]["uid"], task, key)

    @staticmethod
    def _same_job(pod: Any, task: str, key: str) -> bool:
        annotations = pod.metadata.annotations or {}
        return annotations.get(TASK_ANNOTATION) == task and annotations.get(KEY_ANNOTATION) == key

    def _leaving(self, pod: Any, task: str, key: str) -> bool:
        """Whether ``pod``, a deleted pod of this job, will leave by itself: nobody holds it
        any more, or this executor object does (an attempt of its own being closed)."""
        if not self._same_job(pod, task, key) or pod.metadata.deletion_timestamp is None:
            return False
        if CLEANUP_FINALIZER not in (pod.metadata.finalizers or []):
            return True
        try:
            run = json.loads((pod.metadata.annotations or {}).get(RUN_ANNOTATION) or "{}")
        except ValueError:
            return False
        return isinstance(run, dict) and run.get("run") == self.run_id

    async def recover(self, info: Mapping[str, Any]) -> PodHandle | None:
        """A handle on the pod of ``info`` (a :attr:`~pydatatask.executor.base.JobHandle.info`) if that pod (same uid)
        still exists: adoptable unless it was deleted. None if it is gone."""
        name, uid = info.get("pod"), info.get("uid")
        task, key = info.get("task"), info.get("key")
        if not all(isinstance(v, str) for v in (name, uid, task, key)):
            raise ConfigurationError(f"{self.describe()}: not the information of a pod job: {sorted(info)}")
        assert (
            isinstance(name, str) and isinstance(uid, str) and isinstance(task, str) and isinstance(key, str)
        )
        if info.get("namespace", self.cluster.namespace) != self.cluster.namespace:
            raise ConfigurationError(
                f"{self.describe()}: pod {name} was started in namespace {info.get('namespace')!r}, "
                f"not {self.cluster.namespace!r}"
            )
        pod = await self.cluster.read_pod(name)
        if pod is None or pod.metadata.uid != uid:
            return None
        return PodHandle(self, name, uid, task, key, adoptable=pod.metadata.deletion_timestamp is None)

    async def jobs(self, task: str) -> dict[str, dict[str, Any]]:
        """``{key: info}`` of every pod of ``task`` this executor's label shows (one LIST
        of the task's pods, not the watch's view: a pod created an instant ago by a
        scheduler that died is shown too): for :meth:`recover` of orphans that no claim
        names. The pod of a batch is listed under every key of the batch, with the same
        ``info`` (the information of its handle, naming the batch's first key)."""
        selector = f"{EXECUTOR_LABEL}={label_value(self.name)},{TASK_LABEL}={label_value(task)}"
        out: dict[str, dict[str, Any]] = {}
        for pod in await self.cluster.list_pods(selector):
            annotations = pod.metadata.annotations or {}
            key = annotations.get(KEY_ANNOTATION)
            if key and annotations.get(TASK_ANNOTATION) == task:
                info = {
                    "executor": "kube",
                    "namespace": self.cluster.namespace,
                    "pod": pod.metadata.name,
                    "uid": pod.metadata.uid,
                    "task": task,
                    "key": key,
                }
                for each in _batch_keys(pod.metadata.name, annotations.get(KEYS_ANNOTATION)):
                    out.setdefault(each, info)
                out[key] = info
        return out

    async def aclose(self) -> None:
        """Stop the watch of the executor's pods (it starts again when next needed)."""
        await self.watch.aclose()


def _batch_keys(pod: str, text: str | None) -> list[str]:
    """The keys of the annotation ``pydatatask.io/keys`` of ``pod`` (none when it is
    absent; a value that is not a JSON list of keys is ignored with a warning)."""
    if not text:
        return []
    try:
        keys = json.loads(text)
    except ValueError:
        keys = None
    if not isinstance(keys, list) or not all(isinstance(k, str) and k for k in keys):
        log.warning("pod %s: annotation %s is not a JSON list of keys; ignored", pod, KEYS_ANNOTATION)
        return []
    return keys
