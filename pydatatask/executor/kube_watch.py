"""The pods of one label selector, kept current by one LIST and then one WATCH
(:class:`PodWatch`): how a :class:`~pydatatask.executor.kubernetes.KubeExecutor` learns
of its pods' states.

The watch follows the API server's protocol for consistent watches:

* it **lists** the pods once (one LIST request) and watches from the ``resourceVersion``
  of that list, so it misses no change made after the list;
* every event (ADDED, MODIFIED, DELETED) updates its view at once and wakes only the
  jobs waiting for that pod; bookmarks (``allowWatchBookmarks``) advance the
  ``resourceVersion`` without an object;
* when the connection ends (the server's watch timeout, a dropped connection, an API
  server that restarts) it **resumes** from the last ``resourceVersion`` it saw, without
  a new LIST; connection errors are retried under the cluster's
  :class:`~pydatatask.backoff.Backoff`, then at its longest delay for as long as jobs
  wait (each still bounded by its own timeout);
* when the server answers that this ``resourceVersion`` is too old (HTTP 410 Gone, sent
  as an ERROR event with code 410), it **lists again** and watches from the new list; a
  pod that the new list no longer shows is known to be gone.

The watch runs while a job waits on it (see :meth:`PodWatch.interest`) and stays open
for ``linger`` seconds after the last one left, so jobs launched one after another cost
no new LIST. An error that retrying cannot mend (no permission to watch, unauthorized)
is raised to every waiting job; the next user starts over with a LIST.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
import types
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from .._deps import require
from ..errors import BackendUnavailableError, ConfigurationError

if TYPE_CHECKING:
    from .pods import KubeCluster

__all__ = ("PodWatch",)

log = logging.getLogger("pydatatask.executor.kube_watch")

_TRANSIENT_STATUSES = frozenset({0, 429, 500, 502, 503, 504})
#: how long the uid of a deleted pod is remembered (a job handle made just before its
#: pod's DELETED event was seen still learns that its pod is gone)
_GONE_FOR = 600.0


class _Expired(Exception):
    """The server no longer has the changes since the watch's resourceVersion (410)."""


class _Broken(Exception):
    """The watch connection ended mid-event (a cut connection)."""


class PodWatch:
    """The pods of one label selector in the cluster's namespace: ``{name: pod}`` in
    :attr:`pods`, kept current by one LIST and then a WATCH resumed from its last
    ``resourceVersion`` (see the module documentation).

    :param cluster: the :class:`~pydatatask.executor.pods.KubeCluster` (client, namespace,
        retry policy).
    :param selector: the label selector of the pods (``pydatatask.io/executor=NAME``).
    :param linger: seconds the watch stays open after the last user left.
    :param watch_timeout: seconds the server keeps one watch request open (it is then
        resumed from its resourceVersion); spread by +-10 % so that many watches do not
        reconnect at once.
    """

    def __init__(
        self, cluster: KubeCluster, selector: str, *, linger: float = 2.0, watch_timeout: float = 300.0
    ) -> None:
        self.cluster = cluster
        self.selector = selector
        self.linger = linger
        self.watch_timeout = watch_timeout
        #: the pods as the watch last saw them, by name, as the API's JSON objects (a
        #: model is made only when a job needs one: :meth:`model`)
        self.pods: dict[str, dict[str, Any]] = {}
        #: the resourceVersion the watch resumes from, or None when its next start lists first
        self.resource_version: str | None = None
        #: ``time.monotonic()`` when the last successful LIST was sent: it shows every pod
        #: created before then
        self.listed_at = -1e18
        #: LIST requests made (one per start, and one per expired resourceVersion)
        self.lists = 0
        #: WATCH requests made
        self.watches = 0
        #: WATCH requests that resumed from the resourceVersion of an earlier watch
        #: request (after the server closed it or the connection dropped), without a LIST
        self.resumes = 0
        #: times the server answered that the resourceVersion was too old (410)
        self.expired = 0
        #: watch events received (bookmarks included)
        self.events = 0
        #: the error every waiter gets, until the next successful start
        self.error: Exception | None = None
        self._gone: dict[str, float] = {}
        self._waiters: dict[str | None, list[asyncio.Future[None]]] = {}
        self._users = 0
        self._synced = False
        self._task: asyncio.Task[None] | None = None
        self._linger: asyncio.TimerHandle | None = None
        self._after_list = False
        self._got_events = False

    def __repr__(self) -> str:
        return f"<PodWatch {self.cluster.namespace} {self.selector} rv={self.resource_version}>"

    # ------------------------------------------------------------------ for job handles
    @contextlib.asynccontextmanager
    async def interest(self) -> AsyncIterator[PodWatch]:
        """Keep the watch running for the block; on entry, wait until it has listed the
        pods (raising the error if that LIST failed)."""
        self._users += 1
        if self._linger is not None:
            self._linger.cancel()
            self._linger = None
        try:
            if self._task is None or self._task.done():
                self.error = None
                self._task = asyncio.get_running_loop().create_task(
                    self._run(), name=f"watch of pods {self.selector}"
                )
            while not self._synced:
                if self.error is not None:
                    raise self.error
                await self._next(None, None)
            yield self
        finally:
            self._users -= 1
            if self._users == 0 and self._task is not None and not self._task.done():
                self._linger = asyncio.get_running_loop().call_later(self.linger, self._stop_idle)

    def lookup(self, name: str, uid: str, since: float) -> tuple[dict[str, Any] | None, bool]:
        """``(pod, gone)`` for the pod ``name`` of ``uid``, made before ``since`` (a
        ``time.monotonic()``): the pod as last seen (the API's JSON object), or None with
        ``gone`` True when it has left the API (or was replaced), or None and False while
        the watch has not shown it yet. Use inside :meth:`interest`."""
        pod = self.pods.get(name)
        if pod is not None and pod["metadata"].get("uid") == uid:
            return pod, False
        return None, uid in self._gone or self.listed_at > since

    def model(self, pod: dict[str, Any]) -> Any:
        """``pod`` (a JSON object of :attr:`pods`) as a ``kubernetes_asyncio`` ``V1Pod``.

        Events are kept as JSON because making a model costs about a millisecond of CPU
        (its timestamps are parsed one by one), and most events of a pod (scheduled,
        running, ...) only need a look at its phase."""
        response = types.SimpleNamespace(data=json.dumps(pod))
        return self.cluster.core.api_client.deserialize(response, "V1Pod")

    async def changed(self, name: str, at_most: float | None = None) -> None:
        """Return at the next event of the pod ``name`` (or a new LIST), or after
        ``at_most`` seconds; raise the watch's error if it failed for good."""
        await self._next(name, at_most)

    async def aclose(self) -> None:
        """Stop the watch (it starts again, with a LIST, when next used); a job still
        waiting on it gets a :class:`~pydatatask.errors.BackendUnavailableError`."""
        if self._linger is not None:
            self._linger.cancel()
            self._linger = None
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            await asyncio.wait((task,))  # its end, without taking a cancellation of ours
        self._reset()
        if self._users:
            self.error = BackendUnavailableError(f"the watch of pods ({self.selector}) was closed")
            self._wake_all()

    # ------------------------------------------------------------------ waiting
    async def _next(self, name: str | None, at_most: float | None) -> None:
        if self.error is not None and name is not None:
            raise self.error
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        waiting = self._waiters.setdefault(name, [])
        waiting.append(fut)
        try:
            await asyncio.wait((fut,), timeout=at_most)
        finally:
            waiting.remove(fut)
            if not waiting and self._waiters.get(name) is waiting:
                del self._waiters[name]
        if self.error is not None and name is not None:
            raise self.error

    def _wake(self, name: str) -> None:
        for fut in self._waiters.get(name, ()):
            if not fut.done():
                fut.set_result(None)

    def _wake_all(self) -> None:
        for waiting in self._waiters.values():
            for fut in waiting:
                if not fut.done():
                    fut.set_result(None)

    def _stop_idle(self) -> None:
        self._linger = None
        if self._users == 0 and self._task is not None:
            self._task.cancel()
            self._task = None
            self._reset()

    def _reset(self) -> None:
        self._synced = False
        self.pods = {}
        self.resource_version = None

    # ------------------------------------------------------------------ the loop
    async def _run(self) -> None:
        failures = 0  # connection troubles in a row
        while True:
            if self.resource_version is None:
                try:
                    await self._list()
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    if not self._synced or not _transient(exc):
                        # nothing to resume: the users get the error (the first LIST
                        # failed after the cluster's retries, or the API refuses)
                        self._fail(exc)
                        return
                    failures += 1
                    await self._pause(failures, exc)
                    continue
            began = time.monotonic()
            try:
                got = await self._stream()
            except asyncio.CancelledError:
                raise
            except _Expired:
                self.expired += 1
                log.info(
                    "watch of pods (%s): resourceVersion %s is too old; listing again",
                    self.selector,
                    self.resource_version,
                )
                self.resource_version = None
                continue
            except Exception as exc:
                if not _transient(exc):
                    self._fail(_translate(exc, self.selector))
                    return
                # a connection that brought events before it broke resumes at once
                failures = 0 if self._got_events else failures + 1
                if failures:
                    await self._pause(failures, exc)
                continue
            if got:
                failures = 0
            elif time.monotonic() - began < 1.0:
                # closed at once with nothing (a server shutting down): not a busy loop
                failures += 1
                await self._pause(failures, BackendUnavailableError("the watch ended at once"))

    async def _pause(self, failures: int, exc: BaseException) -> None:
        retry = self.cluster.retry
        if failures == 1 or failures % retry.attempts == 0:
            log.warning(
                "watch of pods (%s) lost the API server (%s: %s); resuming from resourceVersion %s",
                self.selector,
                type(exc).__name__,
                exc,
                self.resource_version,
            )
        await asyncio.sleep(retry.delay(min(failures, retry.attempts)))

    def _fail(self, exc: Exception) -> None:
        log.warning("watch of pods (%s) failed: %s", self.selector, exc)
        self.error = exc
        self._reset()
        self._wake_all()

    async def _list(self) -> None:
        started = time.monotonic()  # the list shows every pod created before this
        result = await self.cluster.call(
            f"listing pods ({self.selector})",
            self.cluster.core.list_namespaced_pod,
            self.cluster.namespace,
            label_selector=self.selector,
        )
        sanitize = self.cluster.core.api_client.sanitize_for_serialization
        fresh = {p.metadata.name: sanitize(p) for p in result.items or []}
        now = time.monotonic()
        for name, old in self.pods.items():
            new = fresh.get(name)
            if new is None or new["metadata"].get("uid") != old["metadata"].get("uid"):
                self._forget(old["metadata"].get("uid", ""), now)
        self.pods = fresh
        self.resource_version = result.metadata.resource_version
        self.listed_at = started
        self.lists += 1
        self._synced = True
        self._after_list = True
        self.error = None
        self._wake_all()

    async def _stream(self) -> bool:
        """One WATCH request from :attr:`resource_version`; True if it brought events."""
        k8s = require("kubernetes_asyncio", "kube")
        self._got_events = False
        timeout = max(1, round(self.watch_timeout * random.uniform(0.9, 1.1)))
        self.watches += 1
        if not self._after_list:
            self.resumes += 1
        self._after_list = False
        async with k8s.watch.Watch(return_type="object") as watch:  # JSON objects, see model()
            stream = watch.stream(
                self.cluster.core.list_namespaced_pod,
                self.cluster.namespace,
                label_selector=self.selector,
                resource_version=self.resource_version,
                allow_watch_bookmarks=True,
                timeout_seconds=timeout,
                # a connection that went silent (no close seen) fails after the server's
                # timeout, instead of never
                _request_timeout=(30, timeout + 30),
            )
            try:
                async for event in stream:
                    self._apply(event)
            except k8s.client.exceptions.ApiException as exc:
                if exc.status == 410:
                    raise _Expired(str(exc.reason)) from exc
                raise
        return self._got_events

    def _apply(self, event: Any) -> None:
        if not isinstance(event, dict) or not isinstance(event.get("raw_object"), dict):
            raise _Broken(f"not a watch event: {str(event)[:200]!r}")
        self.events += 1
        self._got_events = True
        kind = event.get("type")
        raw = event["raw_object"]
        version = (raw.get("metadata") or {}).get("resourceVersion")
        if kind in ("ADDED", "MODIFIED", "DELETED"):
            meta = raw.get("metadata") or {}
            name, uid = meta.get("name"), meta.get("uid")
            if not isinstance(name, str) or not isinstance(uid, str):
                raise _Broken(f"a pod event without name or uid: {str(raw)[:200]!r}")
            if kind == "DELETED":
                old = self.pods.get(name)
                if old is not None and old["metadata"].get("uid") == uid:
                    del self.pods[name]
                self._forget(uid, time.monotonic())
            else:
                self.pods[name] = raw
            self._wake(name)
        if version:
            self.resource_version = version

    def _forget(self, uid: str, now: float) -> None:
        self._gone[uid] = now
        if len(self._gone) > 1000:
            self._gone = {u: t for u, t in self._gone.items() if now - t < _GONE_FOR}


def _transient(exc: BaseException) -> bool:
    """Whether ``exc`` is a connection trouble worth resuming after."""
    if isinstance(exc, _Broken | TimeoutError | OSError):
        return True
    status = getattr(exc, "status", None)
    if isinstance(status, int) and status in _TRANSIENT_STATUSES:
        return True
    aiohttp = require("aiohttp", "kube")
    return isinstance(exc, aiohttp.ClientError)


def _translate(exc: Exception, selector: str) -> Exception:
    """A failed watch as an error of the one tree (see :mod:`pydatatask.errors`)."""
    if isinstance(exc, ConfigurationError | BackendUnavailableError):
        return exc
    status = getattr(exc, "status", None)
    reason = getattr(exc, "reason", None) or str(exc)
    if status == 403:
        error: Exception = ConfigurationError(
            f"Kubernetes refused watching pods ({selector}): forbidden: {reason} (the credentials "
            "need the 'watch' permission on pods)"
        )
    else:
        error = BackendUnavailableError(f"Kubernetes watching pods ({selector}): {status} {reason}")
    error.__cause__ = exc
    return error
