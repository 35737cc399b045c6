"""Tasks whose jobs are Kubernetes pods rendered from a template: :class:`PodTask`.

The task says *what* runs (the manifest, rendered per job by :meth:`PodTask.prepare`) and
turns the pod's end into the job's outcome (:meth:`PodTask.finish`); a
:class:`~pydatatask.executor.kubernetes.KubeExecutor` says *where*, names, labels and holds
the pod; the job lifecycle (:mod:`pydatatask.task.lifecycle`) claims the key in the task's
``live`` repository, notes the pod in the claim, applies the timeout and retries, removes
partial outputs and writes the record. A pod that outlived its scheduler is adopted by the
lifecycle (:mod:`pydatatask.task.recovery`), as any work whose outcome can still be waited for.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import yaml

from ..errors import BackendUnavailableError, ConfigurationError, JobError
from ..executor.base import Executor, Outcome, PodWork, Resources, Work
from ..executor.kubernetes import KubeExecutor
from ..executor.pods import KubeCluster, pod_name
from ..quantities import parse_cpu, parse_memory
from .base import BatchOutcome, JobContext, JobOutcome, Task
from .batch_results import batch_failures, results_in_log
from .templates import batch_context, job_context, render_yaml

__all__ = ("PodTask",)


class PodTask(Task):
    """Each job is a pod rendered from a Jinja2 YAML template, run by ``executor``.

    :param manifest: the Pod manifest template (YAML). Every ``{{ value }}`` is
        JSON-encoded, so keys and paths are YAML-safe; the context is
        :func:`~pydatatask.task.templates.job_context` (``key``, ``task``, ``params``,
        ``links`` and one entry per link) plus ``namespace``, ``pod_name``, ``attempt``.
        ``metadata.name``, labels, annotations and the finalizer are set by the executor.
    :param executor: a :class:`~pydatatask.executor.kubernetes.KubeExecutor` (its quota is
        shared by every task using it).
    :param params: extra template values (``{{ params.x }}``).
    :param env: environment added to every container of the task's pods:
        ``{NAME: "value"}`` or ``{NAME: {"secretKeyRef": {"name": ..., "key": ...}}}`` (a
        ``valueFrom``). Secrets go here, never into command lines. A variable the manifest
        sets itself keeps the manifest's value; the task's ``env`` wins over the executor's.
    :param cpu: the CPU request (= limit) of containers that set no ``resources``
        (``"500m"``, ``2``); what the executor's quota counts per pod.
    :param memory: the memory request (= limit) of containers that set no ``resources``
        (``"1Gi"``, bytes); what the executor's quota counts per pod.

    Other parameters as for :class:`~pydatatask.task.base.Task`.
    """

    runner = "kube"

    def __init__(
        self,
        name: str,
        manifest: str,
        *,
        executor: KubeExecutor,
        params: Mapping[str, Any] | None = None,
        env: Mapping[str, Any] | None = None,
        cpu: str | float | None = None,
        memory: str | int | None = None,
        **kwargs: Any,
    ) -> None:
        if not isinstance(manifest, str) or not manifest.strip():
            raise ConfigurationError(f"task {name!r}: manifest must be a non-empty YAML template string")
        if not isinstance(executor, Executor) or not executor.can_run(PodWork):
            raise ConfigurationError(
                f"task {name!r}: executor must run pods (a KubeExecutor), not {type(executor).__name__}"
            )
        self.manifest = manifest
        self.params = dict(params or {})
        self.env = dict(env or {})
        for var, value in self.env.items():
            if not isinstance(var, str) or not var:
                raise ConfigurationError(f"task {name!r}: env names must be non-empty strings, not {var!r}")
            if not isinstance(value, (str, dict)):
                raise ConfigurationError(
                    f"task {name!r}: env {var!r} must be a string or a valueFrom dict, not {type(value).__name__}"
                )
        self._resources = Resources(
            cpu=0.0 if cpu is None else parse_cpu(cpu), memory=0 if memory is None else parse_memory(memory)
        )
        if not executor.fits_at_all(self._resources):
            raise ConfigurationError(
                f"task {name!r}: one pod requests cpu={cpu} memory={memory}, more than the quota of "
                f"{executor.describe()}: it could never run"
            )
        self._executor = executor
        super().__init__(name, **kwargs)

    @property
    def executor(self) -> Executor:
        return self._executor

    @property
    def resources(self) -> Resources:
        return self._resources

    def describe(self) -> str:
        return f"pod task {self.name} on {self._executor.describe()}"

    # ---------------------------------------------------------------- the job
    def render(self, key: str, *, attempt: int = 1, keys: list[str] | None = None) -> dict[str, Any]:
        """The manifest rendered for ``key`` (before the executor names and labels it); with
        ``keys`` (a batch, ``key`` its first), rendered once for them all: the context's
        ``keys`` and ``batch`` list them, and every container gets ``PDT_KEYS`` (one key a
        line) unless it sets it itself."""
        namespace = getattr(getattr(self._executor, "cluster", None), "namespace", None)
        if keys is None:
            context = job_context(self, key, self.params)
        else:
            context = batch_context(self, keys, self.params)
            key = keys[0]
        context.update(namespace=namespace, pod_name=pod_name(self.name, key), attempt=attempt)
        text = render_yaml(self.manifest, context)
        try:
            body = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigurationError(
                f"task {self.name}: the manifest rendered for {key!r} is not valid YAML: {exc}"
            ) from exc
        if not isinstance(body, dict) or body.get("kind", "Pod") != "Pod":
            raise ConfigurationError(f"task {self.name}: the manifest must be one Pod (kind: Pod)")
        env: dict[str, Any] = dict(self.env)
        if keys is not None:
            env.setdefault("PDT_KEYS", "\n".join(keys))
        if env:
            self._add_env(body, env)
        return body

    def _add_env(self, body: dict[str, Any], env: Mapping[str, Any]) -> None:
        """``env`` into every container of ``body`` (a name the container sets itself keeps
        its value)."""
        spec = body.get("spec")
        containers = spec.get("containers") if isinstance(spec, dict) else None
        if not isinstance(containers, list):
            return  # the executor names what is missing
        entries = [
            {"name": k, "valueFrom": v} if isinstance(v, dict) else {"name": k, "value": v}
            for k, v in env.items()
        ]
        for container in containers:
            if not isinstance(container, dict):
                continue  # the executor names it
            present = container.get("env") or []
            if not isinstance(present, list):
                raise ConfigurationError(f"task {self.name}: a container's env must be a list")
            names = {e.get("name") for e in present if isinstance(e, dict)}
            container["env"] = list(present) + [e for e in entries if e["name"] not in names]

    async def prepare(self, job: JobContext) -> Work:
        """The pod of this attempt (one pod for every key of a batch, named by the first)."""
        if job.batched:
            keys = list(job.keys)
            body = self.render(job.key, attempt=job.attempt, keys=keys)
            return PodWork(body, job=(self.name, job.key), keys=tuple(keys))
        return PodWork(self.render(job.key, attempt=job.attempt), job=(self.name, job.key))

    async def finish(self, job: JobContext, outcome: Outcome) -> JobOutcome | None:
        """The pod's exit code, node and pod facts (``kube`` in the record); a failed pod
        fails the attempt with the pod's reason.

        A batch (``job.batched``) returns a :class:`~pydatatask.task.base.BatchOutcome`:
        the result lines the pod printed between the markers of
        :mod:`pydatatask.task.batch_results` say which keys failed; without a line, a key
        failed if the pod did."""
        result = JobOutcome(exit_code=outcome.exit_code, host=outcome.place, extra=dict(outcome.extra))
        if job.batched and outcome.exit_code is not None:
            return await self._finish_batch(job, outcome, result)
        if outcome.error is not None:
            error = JobError(f"task {self.name}: {outcome.error}")
            error.outcome = result  # type: ignore[attr-defined]
            raise error from outcome.error
        return result

    async def _whole_log(self, pod: str, kube: dict[str, Any], result: JobOutcome) -> str:
        """Every container's whole log (a batch's results must not pass for missing when
        the log cannot be read: that fails every key of the attempt)."""
        cluster = getattr(self._executor, "cluster", None)
        if not isinstance(cluster, KubeCluster):
            raise ConfigurationError(f"task {self.name}: the results of a batch come from the log of its pod")
        try:
            return "".join(
                [await cluster.read_log(pod, name) + "\n" for name in kube.get("containers") or {}]
            )
        except BackendUnavailableError as exc:
            error = JobError(f"task {self.name}: the results of the batch in pod {pod} cannot be read: {exc}")
            error.outcome = result  # type: ignore[attr-defined]
            raise error from exc

    async def _finish_batch(self, job: JobContext, outcome: Outcome, result: JobOutcome) -> BatchOutcome:
        keys = list(job.keys)
        kube = outcome.extra.get("kube") or {}
        pod = str(kube.get("pod", pod_name(self.name, job.key)))
        where = f"the log of pod {pod}"
        # the log the lifecycle has just kept of the pod (one read per container); read
        # again, whole, only when it holds no complete results block (cut at the executor's
        # log_limit, or the pod printed none)
        results = results_in_log(job.log_text, keys, where)
        if not results.complete:
            results = results_in_log(await self._whole_log(pod, kube, result), keys, where)
        why = str(outcome.error) if outcome.error is not None else ""
        reasons = batch_failures(keys, results, outcome.error is None, why)
        failed: dict[str, BaseException] = {}
        for key in keys:
            if key in reasons:
                error = JobError(
                    f"task {self.name}: job {key!r} (a batch of {len(keys)} in pod {pod}): {reasons[key]}"
                )
                error.outcome = result  # type: ignore[attr-defined]
                failed[key] = error
        job.log(f"pod {pod} ran a batch of {len(keys)} key(s): {len(keys) - len(failed)} ok")
        for line in results.notes():
            job.log(line)
        return BatchOutcome(exit_code=result.exit_code, host=result.host, extra=result.extra, failed=failed)
