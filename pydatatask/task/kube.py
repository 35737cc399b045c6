"""Tasks whose jobs are Kubernetes pods that claim their keys themselves: :class:`KubeTask`
(see :class:`~pydatatask.task.pod.PodTask` for pods under the shared job lifecycle).

Life of a job (see ``docs/kube.rst``):

* **claim** = pod creation. The pod name is derived from (task, key) (:func:`~pydatatask.executor.pods.pod_name`),
  so creating it is the atomic claim: a 409 AlreadyExists means another scheduler runs
  the key. The task's ``live`` repository is :class:`~.kube_pods.KubePodRepository`: the
  pods with the task's label, keyed by the exact key kept in an annotation.
* **hold**: every pod carries the finalizer ``pydatatask.io/cleanup``, so a
  deleted pod stays in the API (``Terminating``) after its containers stopped, until this
  task lets it go. The claim thus outlives the containers: a pod that was deleted (timeout,
  cancellation, by hand) keeps the key claimed until the job's partial outputs are gone
  (or its record is written), also across a scheduler that is killed meanwhile.
* **wait**: one :class:`~pydatatask.executor.pods.PodPoller` per task lists the task's
  pods (one LIST by label selector) at most once per ``poll_interval`` and wakes the jobs
  waiting for their pod. The ``live`` listing reads the same snapshot.
* **reap**: on Succeeded/Failed the outcome (phase, exit code per container, reason,
  node, times) goes to the job record, every container's log to the job log. The
  finished pod still holds the name until the record is written (then ``release``
  deletes it and lets it go) or the next attempt replaces it, so no other scheduler can
  start the key in between. On timeout, cancellation or any error the pod is deleted at
  once (shielded) and waited for until its containers have stopped; the partial outputs
  are removed while the pod still holds the name.
* **recover** after a crash: a pod whose owner process is gone (the claim annotation names
  host, pid and pid start time) is stale. :meth:`KubeTask.recover_stale` takes its claim
  over (a patch with a resourceVersion precondition: of several schedulers, one wins) and
  retires it - deleted, its partial outputs removed unless a success record vouches for
  them, then let go - when its key needs no work (record present, input gone) or when it
  was already deleted; otherwise it offers the pod for adoption: the key is hidden from
  ``live`` so the scheduler launches it, and the claim takes the existing pod over
  instead of creating one.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import Mapping
from collections.abc import Set as AbstractSet
from typing import Any

import yaml

from ..durations import parse_duration
from ..errors import ConfigurationError, JobError, KeyNotFoundError
from ..executor.pod_state import (
    CLAIM_ANNOTATION,
    CLEANUP_FINALIZER,
    FINISHED_PHASES,
    KEY_ANNOTATION,
    KEY_LABEL,
    TASK_ANNOTATION,
    TASK_LABEL,
    cleanup_pending,
    containers_stopped,
    iso_time,
    pending_reason,
)
from ..executor.pods import (
    KubeApiError,
    KubeCluster,
    KubeSlot,
    label_value,
    parse_cpu,
    parse_memory,
    pod_name,
)
from ..repository.base import BlobRepository, MetadataRepository, Repository
from .base import JobContext, JobOutcome, Task
from .kube_pods import KubePodRepository, same_claim
from .records import make_claim
from .retry import RetryPolicy
from .templates import job_context, render_yaml

__all__ = ("KubeTask", "KubePodRepository", "CLEANUP_FINALIZER")

log = logging.getLogger("pydatatask.task.kube")


class KubeTask(Task):
    """Each job is a pod rendered from a Jinja2 YAML template.

    :param manifest: the Pod manifest template (YAML). Every ``{{ value }}`` is
        JSON-encoded, so keys and paths are YAML-safe; the context is
        :func:`~pydatatask.task.templates.job_context` (``key``, ``task``, ``params``,
        ``links`` and one entry per link) plus ``namespace``, ``pod_name``, ``attempt``.
        ``metadata.name``, labels and annotations are set by the task.
    :param cluster: a :class:`~pydatatask.executor.pods.KubeCluster`, or an ``ApiClient``
        / session accessor returning one (wrapped with ``namespace``).
    :param params: extra template values (``{{ params.x }}``).
    :param env: environment added to every container: ``{NAME: "value"}`` or
        ``{NAME: {"secretKeyRef": {"name": ..., "key": ...}}}`` (a ``valueFrom``). Secrets go
        here, never into command lines.
    :param cpu, memory: requests = limits of containers that set no ``resources``; also what
        the cluster quota counts per pod.
    :param pending_timeout: fail a pod still Pending after this long, naming the reason.
    :param poll_interval: how often the task's pods are listed (``"2s"``).
    :param log_limit: at most this many bytes of each container's log are kept.
    :param delete_wait: after a timeout or cancellation, how long to wait for the deleted
        pod to leave the API (its containers stopped, after its grace period) before the
        job's partial outputs are removed (``"90s"``).
    """

    runner = "kube"

    def __init__(
        self,
        name: str,
        manifest: str,
        *,
        cluster: Any,
        namespace: str = "default",
        inputs: Mapping[str, Repository] | None = None,
        outputs: Mapping[str, Repository] | None = None,
        params: Mapping[str, Any] | None = None,
        env: Mapping[str, Any] | None = None,
        cpu: str | float | None = None,
        memory: str | int | None = None,
        done: MetadataRepository | None = None,
        logs: BlobRepository | None = None,
        concurrency: int = 8,
        retry: RetryPolicy | None = None,
        timeout: float | str | None = None,
        priority: int = 0,
        pending_timeout: float | str | None = None,
        poll_interval: float | str = "2s",
        log_limit: int = 1 << 20,
        delete_wait: float | str = "90s",
    ) -> None:
        if not isinstance(manifest, str) or not manifest.strip():
            raise ConfigurationError(f"task {name!r}: manifest must be a non-empty YAML template string")
        self.cluster = (
            cluster if isinstance(cluster, KubeCluster) else KubeCluster(cluster, namespace=namespace)
        )
        self.manifest = manifest
        self.params = dict(params or {})
        self.env = dict(env or {})
        for var, value in self.env.items():
            if not isinstance(value, (str, dict)):
                raise ConfigurationError(
                    f"task {name!r}: env {var!r} must be a string or a valueFrom dict, not {type(value).__name__}"
                )
        self.cpu = None if cpu is None else str(cpu)
        self.memory = None if memory is None else str(memory)
        self._cpu = 0.0 if cpu is None else parse_cpu(cpu)
        self._memory = 0 if memory is None else parse_memory(memory)
        quota = self.cluster
        if (quota.max_cpu is not None and self._cpu > quota.max_cpu) or (
            quota.max_memory is not None and self._memory > quota.max_memory
        ):
            raise ConfigurationError(
                f"task {name!r}: one pod requests cpu={cpu} memory={memory}, more than the cluster quota "
                f"(max_cpu={quota.max_cpu}, max_memory={quota.max_memory}): it could never run"
            )
        self.pending_timeout = None if pending_timeout is None else parse_duration(pending_timeout)
        self.delete_wait = parse_duration(delete_wait)
        self.poll_interval = parse_duration(poll_interval)
        self.log_limit = log_limit
        self.pods = KubePodRepository(self.cluster, name, self.poll_interval)
        #: pods this process created or adopted and has not reaped: {key: (name, uid)}
        self._pods: dict[str, tuple[str, str]] = {}
        #: keys whose pod in ``_pods`` failed and is kept until the next attempt or release
        self._spent: set[str] = set()
        #: pods deleted before they finished (timeout, cancellation, error), still holding
        #: their key (finalizer) until the outputs are removed: {key: (name, uid)}
        self._stopped: dict[str, tuple[str, str]] = {}
        #: keys whose last removal of partial outputs failed
        self._dirty: set[str] = set()
        #: the claims judged stale of pods offered for adoption (only that claim is taken over)
        self._stale: dict[str, dict[str, Any]] = {}
        #: keys another scheduler claimed between two attempts of this one
        self._lost: set[str] = set()
        #: the claim each held key was created with (reused by later attempts)
        self._claims: dict[str, dict[str, Any]] = {}
        #: pod creations made by this task object (for tests and status)
        self.created = 0
        super().__init__(
            name,
            inputs=inputs,
            outputs=outputs,
            done=done,
            live=self.pods,
            logs=logs,
            concurrency=concurrency,
            retry=retry,
            timeout=timeout,
            priority=priority,
        )

    def describe(self) -> str:
        return f"kube task {self.name} (namespace {self.cluster.namespace})"

    # ---------------------------------------------------------------- manifest
    def pod_name(self, key: str) -> str:
        """The pod name of ``key`` (see :func:`~pydatatask.executor.pods.pod_name`)."""
        return pod_name(self.name, key)

    def render(self, key: str, *, attempt: int = 1, claim: dict[str, Any] | None = None) -> dict[str, Any]:
        """The pod body for ``key``: the rendered template plus name, labels, annotations,
        resources, environment and ``restartPolicy: Never`` unless set."""
        name = self.pod_name(key)
        context = job_context(self, key, self.params)
        context.update(namespace=self.cluster.namespace, pod_name=name, attempt=attempt)
        text = render_yaml(self.manifest, context)
        try:
            body = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigurationError(
                f"task {self.name}: the manifest rendered for {key!r} is not valid YAML: {exc}"
            ) from exc
        if not isinstance(body, dict) or body.get("kind", "Pod") != "Pod":
            raise ConfigurationError(f"task {self.name}: the manifest must be one Pod (kind: Pod)")
        body.setdefault("apiVersion", "v1")
        body["kind"] = "Pod"
        meta = body.get("metadata") or {}
        body["metadata"] = meta
        meta["name"] = name
        meta["namespace"] = self.cluster.namespace
        labels = meta.get("labels") or {}
        labels[TASK_LABEL] = label_value(self.name)
        labels[KEY_LABEL] = label_value(key)
        meta["labels"] = labels
        annotations = meta.get("annotations") or {}
        annotations[TASK_ANNOTATION] = self.name
        annotations[KEY_ANNOTATION] = key
        claim = dict(claim or make_claim("", self.name, key, time.time()))
        # no lease: a pod's claim is never renewed; its owner is judged by host and pid
        claim.pop("lease", None)
        annotations[CLAIM_ANNOTATION] = json.dumps(claim)
        meta["annotations"] = annotations
        finalizers = [f for f in meta.get("finalizers") or [] if f != CLEANUP_FINALIZER]
        meta["finalizers"] = [*finalizers, CLEANUP_FINALIZER]
        spec = body.get("spec")
        if (
            not isinstance(spec, dict)
            or not isinstance(spec.get("containers"), list)
            or not spec["containers"]
        ):
            raise ConfigurationError(
                f"task {self.name}: the manifest needs spec.containers (a non-empty list)"
            )
        spec.setdefault("restartPolicy", "Never")
        env = [self._env_entry(k, v) for k, v in self.env.items()]
        for container in spec["containers"]:
            if not isinstance(container, dict):
                raise ConfigurationError(f"task {self.name}: every container must be a mapping")
            if not container.get("resources") and (self.cpu or self.memory):
                amounts = {k: v for k, v in (("cpu", self.cpu), ("memory", self.memory)) if v}
                container["resources"] = {"requests": dict(amounts), "limits": dict(amounts)}
            if env:
                names = {e.get("name") for e in container.get("env") or []}
                container["env"] = list(container.get("env") or []) + [
                    e for e in env if e["name"] not in names
                ]
        return body

    @staticmethod
    def _env_entry(name: str, value: Any) -> dict[str, Any]:
        if isinstance(value, dict):
            return {"name": name, "valueFrom": value}
        return {"name": name, "value": value}

    # ---------------------------------------------------------------- quota
    def acquire_slot(self) -> Any:
        return self.cluster.acquire(self._cpu, self._memory)

    def release_slot(self, slot: Any) -> None:
        if isinstance(slot, KubeSlot):
            self.cluster.release(slot)

    # ---------------------------------------------------------------- claim / adopt
    async def claim(self, key: str, owner: str) -> bool:
        """Create the pod (the atomic claim). On 409, take over an orphan offered for
        adoption; otherwise another scheduler runs ``key``: False."""
        if await self.done.contains(key):
            return False  # finished meanwhile: creating the pod would start the work again
        claim = make_claim(owner, self.name, key, time.time())
        self._lost.discard(key)
        try:
            await self._create(key, 1, claim)
        except KubeApiError as exc:
            if exc.status != 409:
                raise
            uid = self.pods.adoptable.pop(key, None)
            stale = self._stale.pop(key, None)
            adoption = {k: v for k, v in claim.items() if k != "lease"}  # judged by host and pid
            if uid is None or stale is None or not await self._take_over(key, uid, stale, adoption):
                return False
            log.info("task %s: adopted pod %s of %r", self.name, self.pod_name(key), key)
            self._pods[key] = (self.pod_name(key), uid)
        self._claims[key] = claim
        return True

    async def _take_over(
        self, key: str, uid: str, stale: Mapping[str, Any], claim: dict[str, Any], *, deleting: bool = False
    ) -> bool:
        """Replace the claim annotation ``stale`` (judged stale) of pod ``uid`` by ``claim``,
        guarded by the pod's resourceVersion; retried while only the pod's status moved (the
        kubelet's updates). False if the pod is gone, replaced, being deleted (unless
        ``deleting``) or already taken over by another scheduler."""
        name = self.pod_name(key)
        for _ in range(10):
            pod = await self.cluster.read_pod(name)
            if pod is None or pod.metadata.uid != uid:
                return False
            if pod.metadata.deletion_timestamp is not None and not deleting:
                return False
            if not same_claim((pod.metadata.annotations or {}).get(CLAIM_ANNOTATION), stale):
                return False  # another scheduler took it over first
            patch = {
                "metadata": {
                    "resourceVersion": pod.metadata.resource_version,
                    "annotations": {CLAIM_ANNOTATION: json.dumps(claim)},
                }
            }
            try:
                await self.cluster.patch_pod(name, patch)
            except KubeApiError as exc:
                if exc.status == 404:
                    return False
                if exc.status == 409:
                    continue  # the pod changed meanwhile: look again
                raise
            return True
        return False

    async def release(self, key: str) -> None:
        """Delete the key's pod and let it go (its record is written, or its job abandoned).

        If the job's partial outputs could not be removed, the pod keeps holding the key
        (finalizer) with a claim marked stale, so that the next check for stale claims (of
        this scheduler or any other) removes them and frees the key.
        """
        current = self._pods.pop(key, None)
        spent = key in self._spent
        self._spent.discard(key)
        claim = self._claims.pop(key, None)
        stopped = self._stopped.pop(key, None)
        self._lost.discard(key)
        dirty = key in self._dirty
        self._dirty.discard(key)
        for pod in (current, stopped):
            if pod is None:
                continue
            name, uid = pod
            if pod is current:
                await self.cluster.delete_pod(name, grace=0 if spent else None, uid=uid)
            if not dirty:
                await self.cluster.remove_finalizer(name, uid, CLEANUP_FINALIZER)
                continue
            log.warning(
                "task %s: the partial outputs of %r could not be removed; pod %s keeps the key "
                "claimed until a later check removes them",
                self.name,
                key,
                name,
            )
            abandoned = dict(
                claim or {}, owner=f"{(claim or {}).get('owner')}-abandoned", heartbeat=0, lease=0
            )
            await self.cluster.patch_pod(
                name, {"metadata": {"annotations": {CLAIM_ANNOTATION: json.dumps(abandoned)}}}, uid=uid
            )
            self.pods.poller.invalidate()  # the next claim check must see the claim abandoned

    async def cleanup_outputs(self, key: str, *args: Any, **kwargs: Any) -> bool:
        """:meth:`Task.cleanup_outputs <pydatatask.task.base.Task.cleanup_outputs>` (the same
        arguments), noting whether it failed (the pod then keeps holding the key, see
        :meth:`release`); nothing is removed for a key another scheduler took meanwhile."""
        if key in self._lost:
            log.warning(
                "task %s: %r is another scheduler's job now; its outputs are left alone", self.name, key
            )
            return True
        cleaned = await super().cleanup_outputs(key, *args, **kwargs)
        if cleaned:
            self._dirty.discard(key)
        else:
            self._dirty.add(key)
        return cleaned

    async def recover_stale(self, key: str, claim: Any) -> None:
        """A pod whose scheduler is gone: retire it if ``key`` needs no work any more (a job
        record exists, or an input is gone) or if it was deleted before its partial outputs
        were removed; otherwise offer it for adoption.

        Retiring takes the pod's claim over (a scheduler killed meanwhile leaves a claim
        that goes stale in its turn), deletes the pod, waits for its containers to stop,
        removes the partial outputs unless a success record vouches for them, and only then
        lets the pod go: until then the pod is the record that a cleanup is pending.

        A pod that already wrote (some of) its outputs is adopted (see
        :meth:`resumable_keys`), not retired: its finished work is recorded, not redone.
        """
        if not isinstance(claim, dict):
            return
        pod = (await self.pods.pods()).get(key)
        if pod is None or not same_claim((pod.metadata.annotations or {}).get(CLAIM_ANNOTATION), claim):
            return
        name, uid = pod.metadata.name, pod.metadata.uid
        pending = cleanup_pending(pod)
        if pod.metadata.deletion_timestamp is not None and not pending:
            return  # deleted and not held by this task: it leaves by itself
        record = None
        try:
            record = await self.done.get(key)
        except KeyNotFoundError:
            pass
        succeeded = isinstance(record, Mapping) and record.get("success") is True
        if pending:
            reason = "it was stopped before the partial outputs of its job were removed"
        elif record is not None:
            reason = "its job record exists"
        else:
            missing = None
            for link in self.required_links:
                if not await link.repository.contains(key):
                    missing = link.name
                    break
            if missing is None:
                log.warning(
                    "task %s: pod %s of %r outlived its scheduler (%s); adopting it",
                    self.name,
                    name,
                    key,
                    claim.get("owner"),
                )
                self.pods.adoptable[key] = uid
                self._stale[key] = claim
                return
            reason = f"input {missing!r} no longer has the key"
        takeover = make_claim(f"{self.name}-recovery", self.name, key, time.time(), self.claim_lease)
        if not await self._take_over(key, uid, claim, takeover, deleting=True):
            return
        log.warning("task %s: retiring orphaned pod %s of %r: %s", self.name, name, key, reason)
        if pod.metadata.deletion_timestamp is None:
            await self.cluster.delete_pod(name, uid=uid)
        await self._await_stopped(name, uid)
        if not succeeded and not await self.cleanup_outputs(key):
            return  # the takeover claim's lease runs out, then the cleanup is tried again
        await self.cluster.remove_finalizer(name, uid, CLEANUP_FINALIZER)
        self.pods.poller.invalidate()  # the key is free: the next listing must show it

    def resumable_keys(self) -> AbstractSet[str]:
        """Pods offered for adoption: their keys are ready even when the pod already wrote
        outputs; the claim adopts the pod, its end is recorded (a failure removes the
        outputs while the pod still holds the name)."""
        return self.pods.adoptable.keys()

    # ---------------------------------------------------------------- the job
    async def _create(self, key: str, attempt: int, claim: dict[str, Any] | None = None) -> tuple[str, str]:
        body = self.render(key, attempt=attempt, claim=claim)
        pod = await self.cluster.create_pod(body)
        self.created += 1
        current = (pod.metadata.name, pod.metadata.uid)
        self._pods[key] = current
        return current

    async def _create_retrying(self, key: str, attempt: int) -> tuple[str, str]:
        """Create the pod of a later attempt, waiting for a terminating predecessor to go."""
        claim = self._claims.get(key) or make_claim(f"{self.name}-{os.getpid()}", self.name, key, time.time())
        deadline = time.monotonic() + 120
        while True:
            try:
                return await self._create(key, attempt, claim)
            except KubeApiError as exc:
                if exc.status != 409:
                    raise
            old = await self.cluster.read_pod(self.pod_name(key))
            if old is not None and not same_claim(
                (old.metadata.annotations or {}).get(CLAIM_ANNOTATION), claim
            ):
                # another scheduler claimed the key in the moment between the previous pod
                # and this one: what the outputs hold now is its job's, not ours to remove
                self._lost.add(key)
                raise JobError(
                    f"task {self.name}: pod {self.pod_name(key)} of {key!r} was created by another "
                    "scheduler meanwhile"
                )
            if time.monotonic() > deadline:
                raise JobError(f"task {self.name}: the previous pod of {key!r} is still terminating")
            await asyncio.sleep(min(self.poll_interval, 1.0))

    async def run_job(self, job: JobContext) -> JobOutcome | None:
        key = job.key
        self._dirty.discard(key)  # this attempt writes the outputs afresh
        stopped = self._stopped.pop(key, None)
        if stopped is not None:
            # the stopped pod of the previous attempt held the name while its outputs were
            # removed (before the retry delay); let it go now
            await self.cluster.remove_finalizer(*stopped, CLEANUP_FINALIZER)
        current = self._pods.get(key)
        if current is not None and key in self._spent:
            # the failed pod of the previous attempt kept the name (the claim) during the
            # retry delay; replace it now
            self._spent.discard(key)
            del self._pods[key]
            await self.cluster.delete_pod(current[0], grace=0, uid=current[1])
            await self.cluster.remove_finalizer(*current, CLEANUP_FINALIZER)
            current = None
        if current is None:
            current = await self._create_retrying(key, job.attempt)
        name, uid = current
        since = time.monotonic()
        job.log(f"pod {name} (uid {uid}) in namespace {self.cluster.namespace}")
        settled = False
        try:
            pod = await self._wait(name, uid, since)
            outcome, failure = self._outcome(pod)
            await self._copy_logs(job, pod)
            # the finished pod keeps holding the name (the claim) until release(), after the
            # record is written, or until the next attempt replaces it
            self._spent.add(key)
            settled = True
        finally:
            if not settled:
                if self._pods.get(key) == current:
                    del self._pods[key]
                # still held by its finalizer: the key stays claimed while the partial
                # outputs are removed, until release() or the next attempt
                self._stopped[key] = current
                await asyncio.shield(self._stop(name, uid))
        if failure is not None:
            error = JobError(failure)
            error.outcome = outcome  # type: ignore[attr-defined]
            raise error
        return outcome

    async def _stop(self, name: str, uid: str) -> None:
        """Delete the pod of an attempt that ended early (timeout, cancellation, error) and
        wait until its containers have stopped: the job's partial outputs are removed next,
        and a pod still running in its grace period could write them again after that."""
        try:
            if await self.cluster.delete_pod(name, uid=uid):
                await self._await_stopped(name, uid)
        except Exception as exc:
            log.error("task %s: could not delete pod %s: %s", self.name, name, exc)

    async def _await_stopped(self, name: str, uid: str) -> bool:
        """Wait (at most ``delete_wait``) until the deleted pod's containers have stopped
        (:func:`containers_stopped`) or the pod has left the API; False on timeout."""
        since = time.monotonic()
        poller = self.pods.poller
        deadline = since + self.delete_wait
        snapshot = await poller.refresh(0)
        while True:
            pod = snapshot.get(name)
            if poller.taken_at > since and (
                pod is None or pod.metadata.uid != uid or containers_stopped(pod)
            ):
                return True
            if time.monotonic() > deadline:
                log.warning(
                    "task %s: pod %s is still terminating after %gs; removing the outputs anyway",
                    self.name,
                    name,
                    self.delete_wait,
                )
                return False
            snapshot = await poller.next_snapshot()

    async def _wait(self, name: str, uid: str, since: float) -> Any:
        poller = self.pods.poller
        snapshot = await poller.refresh()
        while True:
            pod = snapshot.get(name)
            if pod is None or pod.metadata.uid != uid:
                if poller.taken_at > since:
                    raise JobError(f"task {self.name}: pod {name} disappeared before it finished (deleted?)")
            else:
                phase = (pod.status.phase if pod.status else None) or "Pending"
                if phase in FINISHED_PHASES:
                    return pod
                if pod.metadata.deletion_timestamp is not None:
                    raise JobError(f"task {self.name}: pod {name} was deleted before it finished")
                if (
                    phase == "Pending"
                    and self.pending_timeout is not None
                    and time.monotonic() - since > self.pending_timeout
                ):
                    raise JobError(
                        f"task {self.name}: pod {name} still Pending after {self.pending_timeout:g}s: "
                        f"{pending_reason(pod)}"
                    )
            snapshot = await poller.next_snapshot()

    def _outcome(self, pod: Any) -> tuple[JobOutcome, str | None]:
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
        order = [c.name for c in pod.spec.containers]
        codes = [containers.get(c, {}).get("exit_code") for c in order]
        bad = [(c, containers[c]) for c in containers if containers[c].get("exit_code") not in (0,)]
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
        outcome = JobOutcome(exit_code=exit_code, host=pod.spec.node_name, extra={"kube": info})
        if status.phase == "Succeeded":
            return outcome, None
        what = ", ".join(
            f"container {c} exited with {d.get('exit_code')} ({d.get('reason')})" for c, d in bad
        )
        why = status.reason or ""
        if status.message:
            why = f"{why}: {status.message}" if why else status.message
        return outcome, f"task {self.name}: pod {pod.metadata.name} failed: {what or why or 'phase Failed'}"

    async def _copy_logs(self, job: JobContext, pod: Any) -> None:
        names = [c.name for c in (pod.spec.init_containers or [])] + [c.name for c in pod.spec.containers]
        for cname in names:
            text = await self.cluster.pod_log(pod.metadata.name, cname, self.log_limit)
            job.log(f"--- pod {pod.metadata.name} container {cname} output ---\n{text.rstrip()}")
