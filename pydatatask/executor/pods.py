"""Kubernetes access for pod tasks: :class:`KubeCluster` (API client, namespace, quota),
and pod naming (the executor's pods are watched by
:class:`~pydatatask.executor.kube_watch.PodWatch`).

The API client is a ``kubernetes_asyncio`` ``ApiClient``, given directly or as the
accessor ``@session.resource`` returns (see :func:`api_client` to make one from a
kubeconfig or the in-cluster service account). ``kubernetes_asyncio`` is imported only
when the API is used (``pip install 'pydatatask[kube]'``).

API errors are translated once, in :meth:`KubeCluster.call`: 429 and 5xx (and connection
errors) are retried under the cluster's ``retry`` (a :class:`~pydatatask.backoff.Backoff`); 403 and 422 become
:class:`~pydatatask.errors.ConfigurationError` carrying the API server's message; 404 and
409 are passed to the caller as :class:`KubeApiError` with ``status`` set.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Collection
from contextlib import asynccontextmanager
from typing import Any, TypeVar

from .._deps import require
from ..backoff import Backoff
from ..errors import BackendUnavailableError, ConfigurationError
from ..quantities import parse_cpu, parse_memory
from ..session import resolve

__all__ = (
    "KubeCluster",
    "KubeApiError",
    "api_client",
    "pod_name",
    "label_value",
    "parse_cpu",
    "parse_memory",
)

log = logging.getLogger("pydatatask.executor.pods")

T = TypeVar("T")

_RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
_DNS_MAX = 63
_HASH_LEN = 10


# ---------------------------------------------------------------------------- names
def _digest(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:_HASH_LEN]


def pod_name(task: str, key: str) -> str:
    """A DNS-1123 label (``[a-z0-9-]``, at most 63, alphanumeric at both ends) for the pod
    of ``key`` in ``task``, unique per (task, key).

    It is ``<task>-<key>`` when that is already a valid label and the task name holds no
    ``-`` (so the split is unambiguous); otherwise the sanitised, lowercased, truncated
    form followed by ``-`` and a 10-hex-digit hash of the exact (task, key).
    """
    exact = f"{task}-{key}"
    clean = re.sub(r"[^a-z0-9-]", "-", exact.lower())
    clean = re.sub(r"-{2,}", "-", clean).strip("-")
    if clean == exact and len(clean) <= _DNS_MAX and "-" not in task and clean:
        return clean
    room = _DNS_MAX - _HASH_LEN - 1
    head = clean[:room].rstrip("-")
    suffix = _digest(task, key)
    return f"{head}-{suffix}" if head else f"pdt-{suffix}"


def label_value(value: str) -> str:
    """A valid label value (``[A-Za-z0-9._-]``, at most 63, alphanumeric at both ends) for
    ``value``: the value itself when valid, else a sanitised prefix plus a short hash."""
    if (
        len(value) <= _DNS_MAX
        and re.fullmatch(r"[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?", value) is not None
    ):
        return value
    clean = re.sub(r"[^A-Za-z0-9._-]", "-", value)[: _DNS_MAX - _HASH_LEN - 1]
    clean = re.sub(r"^[^A-Za-z0-9]+|[^A-Za-z0-9]+$", "", clean)
    suffix = _digest(value)
    return f"{clean}-{suffix}" if clean else suffix


# ---------------------------------------------------------------------------- quantities


# ---------------------------------------------------------------------------- client
@asynccontextmanager
async def api_client(
    kubeconfig: str | None = None, *, context: str | None = None, in_cluster: bool = False
) -> AsyncIterator[Any]:
    """An ``ApiClient`` from a kubeconfig file (default ``~/.kube/config``) or, with
    ``in_cluster``, from the pod's service account; closed on exit. Use it in a session
    resource::

        @session.resource
        async def kube():
            async with api_client("~/.kube/config") as api:
                yield api
    """
    k8s = require("kubernetes_asyncio", "kube")
    configuration = k8s.client.Configuration()
    if in_cluster:
        k8s.config.load_incluster_config(client_configuration=configuration)
    else:
        await k8s.config.load_kube_config(
            config_file=kubeconfig, context=context, client_configuration=configuration
        )
    client = k8s.client.ApiClient(configuration)
    try:
        yield client
    finally:
        await client.close()


class KubeApiError(BackendUnavailableError):
    """An API call failed; ``status`` is the HTTP status (0 for connection errors)."""

    def __init__(self, message: str, status: int, reason: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason


def _api_message(exc: Any) -> str:
    body = getattr(exc, "body", None)
    try:
        data = json.loads(body) if body else {}
    except (ValueError, TypeError):
        data = {}
    if isinstance(data, dict) and data.get("message"):
        return str(data["message"])
    return f"{getattr(exc, 'status', '?')} {getattr(exc, 'reason', '')}".strip()


class KubeCluster:
    """Where pods run: an API client and a namespace (the quota of pods, CPU and memory
    is the :class:`~pydatatask.executor.kubernetes.KubeExecutor`'s).

    :param api: an ``ApiClient``, or a session accessor returning one.
    :param namespace: namespace of the pods.
    :param retry: how 429/5xx answers and connection errors are retried (a
        :class:`~pydatatask.backoff.Backoff`; default ``Backoff()``).
    """

    def __init__(
        self,
        api: Any,
        *,
        namespace: str = "default",
        retry: Backoff | None = None,
    ) -> None:
        if api is None:
            raise ConfigurationError(
                "KubeCluster needs an API client: pass a session resource yielding "
                "kubernetes_asyncio.client.ApiClient (see pydatatask.executor.pods.api_client)"
            )
        self._api = api
        self.namespace = namespace
        if retry is not None and not isinstance(retry, Backoff):
            raise ConfigurationError(f"retry must be a pydatatask.Backoff, not {type(retry).__name__}")
        #: the retry policy of API requests
        self.retry = retry or Backoff()
        #: number of API requests made (for tests and status)
        self.calls: dict[str, int] = {}

    def __repr__(self) -> str:
        return f"<KubeCluster namespace={self.namespace}>"

    # ------------------------------------------------------------------ API
    @property
    def core(self) -> Any:
        """A ``CoreV1Api`` on the live client."""
        k8s = require("kubernetes_asyncio", "kube")
        return k8s.client.CoreV1Api(resolve(self._api))

    async def call(
        self,
        what: str,
        fn: Callable[..., Awaitable[T]],
        *args: Any,
        passthrough: Collection[int] = (),
        **kwargs: Any,
    ) -> T:
        """Call ``fn`` with retries for transient errors; translate the rest (see module doc).

        Statuses in ``passthrough`` are raised as :class:`KubeApiError` instead of being
        translated (for callers that expect them, e.g. a 422 on a uid guard).
        """
        k8s = require("kubernetes_asyncio", "kube")
        aiohttp = require("aiohttp", "kube")
        api_error = k8s.client.exceptions.ApiException
        name = getattr(fn, "__name__", what)

        async def once() -> T:
            self.calls[name] = self.calls.get(name, 0) + 1
            return await fn(*args, **kwargs)

        def transient(exc: Exception) -> bool:
            if isinstance(exc, api_error):
                return int(exc.status or 0) in _RETRY_STATUSES
            return isinstance(exc, aiohttp.ClientError | OSError | TimeoutError)

        def describe(exc: Exception) -> str:
            if isinstance(exc, api_error):
                return _api_message(exc)
            return f"{type(exc).__name__}: {exc}"

        def fail(exc: Exception, attempts: int) -> BaseException:
            if not isinstance(exc, api_error):
                if isinstance(exc, aiohttp.ClientError | OSError | TimeoutError):
                    return KubeApiError(
                        f"Kubernetes {what}: API server unreachable: {type(exc).__name__}: {exc}", 0
                    )
                return exc
            status = int(exc.status or 0)
            message = _api_message(exc)
            if status in passthrough:
                return KubeApiError(f"Kubernetes {what}: {message}", status, str(exc.reason))
            if status == 422:
                return ConfigurationError(f"Kubernetes refused {what}: invalid: {message}")
            if status == 403:
                return ConfigurationError(
                    f"Kubernetes refused {what}: forbidden: {message} (check the RBAC permissions "
                    f"of the credentials for namespace {self.namespace!r})"
                )
            if status == 401:
                return BackendUnavailableError(
                    f"Kubernetes refused {what}: unauthorized (check the kubeconfig/token)"
                )
            return KubeApiError(f"Kubernetes {what}: {message}", status, str(exc.reason))

        return await self.retry.run(
            f"kubernetes {what}", once, transient=transient, fail=fail, describe=describe, logger=log
        )

    async def call_json(
        self,
        what: str,
        fn: Callable[..., Awaitable[Any]],
        *args: Any,
        passthrough: Collection[int] = (),
        **kwargs: Any,
    ) -> Any:
        """As :meth:`call`, returning the API's answer as plain JSON data instead of a
        ``kubernetes_asyncio`` model.

        Making a model of a pod costs a few milliseconds of CPU (its timestamps are parsed
        one by one by ``dateutil``): on the path of every pod (create, delete, patch) that
        was most of the scheduler's CPU per pod, for answers of which only the name, the
        uid or the status is read."""
        k8s = require("kubernetes_asyncio", "kube")

        async def raw(*a: Any, **kw: Any) -> Any:
            response = await fn(*a, _preload_content=False, **kw)
            try:
                data = await response.read()
            finally:
                response.release()
            if not 200 <= response.status <= 299:
                exc = k8s.client.exceptions.ApiException(
                    http_resp=k8s.client.rest.RESTResponse(response, data)
                )
                exc.body = data.decode("utf-8", "replace")
                raise exc
            return json.loads(data) if data else None

        raw.__name__ = getattr(fn, "__name__", what)  # counted under the API method's name
        return await self.call(what, raw, *args, passthrough=passthrough, **kwargs)

    async def create_pod(self, body: dict[str, Any], *, as_json: bool = False) -> Any:
        """Create a pod: the new pod as a ``V1Pod``, or with ``as_json`` as the API's JSON
        object (no model made, see :meth:`call_json`); :class:`KubeApiError` with status
        409 if the name is taken."""
        name = body.get("metadata", {}).get("name", "?")
        call = self.call_json if as_json else self.call
        return await call(f"creating pod {name!r}", self.core.create_namespaced_pod, self.namespace, body)

    async def list_pods(self, selector: str) -> list[Any]:
        """Pods matching the label selector (one LIST request)."""
        result = await self.call(
            f"listing pods ({selector})",
            self.core.list_namespaced_pod,
            self.namespace,
            label_selector=selector,
        )
        return list(result.items or [])

    async def read_pod(self, name: str) -> Any | None:
        """The pod, or None if absent."""
        try:
            return await self.call(
                f"reading pod {name!r}", self.core.read_namespaced_pod, name, self.namespace
            )
        except KubeApiError as exc:
            if exc.status == 404:
                return None
            raise

    async def delete_pod(self, name: str, *, grace: int | None = None, uid: str | None = None) -> bool:
        """Delete the pod (only if its uid is ``uid``, when given); False if it was absent."""
        kwargs: dict[str, Any] = {}
        if grace is not None:
            kwargs["grace_period_seconds"] = grace
        if uid is not None:
            kwargs["body"] = {"preconditions": {"uid": uid}}
        try:
            await self.call_json(
                f"deleting pod {name!r}", self.core.delete_namespaced_pod, name, self.namespace, **kwargs
            )
        except KubeApiError as exc:
            if exc.status in (404, 409):  # gone, or replaced by another pod of that name
                return False
            raise
        return True

    async def patch_pod(
        self, name: str, body: dict[str, Any], *, uid: str | None = None, as_json: bool = False
    ) -> Any:
        """Strategic-merge-patch the pod (a ``metadata.resourceVersion`` in ``body`` is a
        precondition: 409 if the pod changed since): the patched pod as a ``V1Pod``, or with
        ``as_json`` as the API's JSON object (see :meth:`call_json`).

        With ``uid``, only the pod of that uid is patched: None if the name is free or held
        by another pod (the API server refuses a patch that would change the uid).
        """
        what = f"patching pod {name!r}"
        call = self.call_json if as_json else self.call
        if uid is None:
            return await call(what, self.core.patch_namespaced_pod, name, self.namespace, body)
        body = dict(body, metadata=dict(body.get("metadata") or {}, uid=uid))
        try:
            return await call(
                what, self.core.patch_namespaced_pod, name, self.namespace, body, passthrough=(404, 422)
            )
        except KubeApiError as exc:
            if exc.status == 404 or (exc.status == 422 and "metadata.uid" in str(exc)):
                return None
            if exc.status == 422:
                message = str(exc).removeprefix(f"Kubernetes {what}: ")
                raise ConfigurationError(f"Kubernetes refused {what}: invalid: {message}") from exc
            raise

    async def remove_finalizer(self, name: str, uid: str, finalizer: str) -> bool:
        """Remove ``finalizer`` from the pod of that uid (a pod being deleted then leaves the
        API); False if that pod is gone."""
        patch = {"metadata": {"$deleteFromPrimitiveList/finalizers": [finalizer]}}
        return await self.patch_pod(name, patch, uid=uid, as_json=True) is not None

    async def pod_log(self, name: str, container: str, limit_bytes: int | None = None) -> str:
        """The log of one container ('' with a note if it cannot be read)."""
        try:
            return await self.read_log(name, container, limit_bytes)
        except (KubeApiError, BackendUnavailableError) as exc:
            return f"(log not available: {exc})\n"

    async def read_log(self, name: str, container: str, limit_bytes: int | None = None) -> str:
        """The log of one container (its first ``limit_bytes``, or all of it); raises
        :class:`KubeApiError` when it cannot be read (where a batch's results come from,
        a log that is missing must not pass for one that reports nothing)."""
        kwargs: dict[str, Any] = {"container": container}
        if limit_bytes:
            kwargs["limit_bytes"] = limit_bytes
        text = await self.call(
            f"reading the log of pod {name!r}",
            self.core.read_namespaced_pod_log,
            name,
            self.namespace,
            **kwargs,
        )
        return str(text)
