"""Pods per second: N keys as one pod per key through the test kubelet.

* ``ours``: a ``PodTask`` over N keys (in-memory input and records) on a
  ``KubeExecutor`` (``max_pods=C``); each pod writes its key's output file. Timed from
  the open pipeline (client created) to the end of the run.
* ``bare``: one ``kubernetes_asyncio`` client, one LIST and one WATCH of the measurement's
  label, and ``C`` worker coroutines that create a pod, wait for the watch to show it
  Succeeded or Failed, and delete it: the same pods (same command, same output file).
* ``batch50``: the ``ours`` task with ``batch=50``: one pod writes the output files of up
  to 50 keys (``$PDT_KEYS``), each key still with its own record.

Each measurement also counts the series' API requests by verb (``requests_per_job`` and
``post_per_job``, ``delete_per_job``, ...: every request the process sends through
``kubernetes_asyncio``, the final check that no pod is left excluded).

Each series is one function of :data:`SERIES` (``series(params) -> seconds``): another
series (a batched one) is one more entry. The API server and kubelet come from
``$PDT_TEST_SERVICES`` (``scripts/test-services``), loopback only; pods go into the test
namespace under a label of their own, and none is left behind.
Targets: ``ours`` >= 0.8x the bare loop's pod throughput; ``batch50`` >= 10x the key
throughput of ``ours``.
"""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

from . import Options, Point, ScenarioResult, Verdict, ratio
from ._common import at_least, is_loopback, run_workers, test_services

NAME = "kube_pods"
TITLE = "Kubernetes: one pod per key through the test kubelet"
CONCURRENCY = 16
DEFAULT_SIZE = 1_000
QUICK_SIZE = 10
#: the pod of a key: writes the key into its output file
SCRIPT = 'printf %s "$KEY" > "$OUT"'
#: keys per pod of the batched series
BATCH = 50
#: the pod of a batch: writes each key into its output file (in the directory $OUT)
BATCH_SCRIPT = 'printf "%s\\n" "$PDT_KEYS" | while IFS= read -r k; do printf %s "$k" > "$OUT/$k"; done'


def points(opts: Options) -> list[Point]:
    n = opts.size or (QUICK_SIZE if opts.quick else DEFAULT_SIZE)
    return [Point(f"{n} pods", n, {"n": n, "concurrency": CONCURRENCY}, list(SERIES))]


def verdicts(res: ScenarioResult) -> list[Verdict]:
    p = res.points[0].label
    r = ratio(res.median(p, "bare"), res.median(p, "ours"))
    b = ratio(res.median(p, "ours"), res.median(p, "batch50"))
    return [
        at_least(">= 0.8x the bare kubernetes_asyncio loop", r, 0.8),
        at_least(f"batch={BATCH}: >= 10x the key throughput of one pod per key", b, 10),
    ]


def prepare(opts: Options) -> dict[str, Any] | str:
    """The cluster's settings, or why the scenario cannot run."""
    services = test_services()
    if not services or "kube" not in services:
        return "no Kubernetes test cluster: run `bash scripts/test-services up` (sets PDT_TEST_SERVICES)"
    conf = services["kube"]
    if not is_loopback(conf["server"]):
        return f"refusing a non-loopback API server {conf['server']}"
    try:
        import kubernetes_asyncio  # noqa: F401
    except ImportError:
        return "kubernetes_asyncio is not installed (pip install 'pydatatask[kube]')"
    return {"kube": {"kubeconfig": conf["kubeconfig"], "namespace": conf["namespace"]}}


def _manifest_env(key: str, out: str) -> list[dict[str, str]]:
    return [{"name": "KEY", "value": key}, {"name": "OUT", "value": out}]


# ---------------------------------------------------------------------- series
async def ours(params: dict[str, Any], label: str, out_dir: Path, batch: int = 1) -> float:
    from pydatatask import FileRepository, MemoryMetadataRepository, Session
    from pydatatask.executor.kubernetes import KubeExecutor
    from pydatatask.executor.pods import api_client
    from pydatatask.pipeline import Pipeline
    from pydatatask.task.pod import PodTask

    kube_conf, n, conc = params["kube"], params["n"], params["concurrency"]
    session = Session()

    @session.resource
    async def kube() -> AsyncIterator[Any]:
        async with api_client(kube_conf["kubeconfig"]) as api:
            yield api

    manifest = f"""
metadata:
  labels: {{"pdt-bench": "{label}"}}
spec:
  containers:
  - name: main
    image: busybox
    command: ["sh", "-c", {json.dumps(SCRIPT if batch == 1 else BATCH_SCRIPT)}]
    env:
    - {{name: KEY, value: {{{{ key }}}}}}
    - {{name: OUT, value: {{{{ {"out.path" if batch == 1 else "out.root"} }}}}}}
"""
    task = PodTask(
        f"b{label[:8]}",
        manifest,
        executor=KubeExecutor(
            kube, name=f"bench-{label[:8]}", namespace=kube_conf["namespace"], max_pods=conc
        ),
        inputs={"src": MemoryMetadataRepository({f"k{i:05d}": {} for i in range(n)})},
        outputs={"out": FileRepository(out_dir)},
        concurrency=conc,
        batch=batch,
    )
    pipeline = Pipeline([task], session)
    async with pipeline:
        t1 = time.perf_counter()
        summary = await pipeline.run()
        seconds = time.perf_counter() - t1
    assert summary.ok and summary.succeeded == n, summary.as_dict()
    return seconds


async def bare(params: dict[str, Any], label: str, out_dir: Path) -> float:
    from kubernetes_asyncio import client, config, watch

    kube_conf, n, conc = params["kube"], params["n"], params["concurrency"]
    ns = kube_conf["namespace"]
    configuration = client.Configuration()
    await config.load_kube_config(config_file=kube_conf["kubeconfig"], client_configuration=configuration)
    async with client.ApiClient(configuration) as api:
        core = client.CoreV1Api(api)
        t1 = time.perf_counter()
        selector = f"pdt-bench={label}"
        ended: dict[str, asyncio.Future[str]] = {}
        listed = await core.list_namespaced_pod(ns, label_selector=selector)

        async def follow() -> None:
            version = listed.metadata.resource_version
            while True:
                async with watch.Watch() as w:
                    stream = w.stream(
                        core.list_namespaced_pod,
                        ns,
                        label_selector=selector,
                        resource_version=version,
                        allow_watch_bookmarks=True,
                        timeout_seconds=300,
                    )
                    async for event in stream:
                        version = event["raw_object"]["metadata"]["resourceVersion"]
                        if event["type"] == "BOOKMARK":
                            continue
                        pod = event["object"]
                        phase = pod.status.phase if pod.status else None
                        fut = ended.get(pod.metadata.name)
                        if fut is not None and not fut.done() and phase in ("Succeeded", "Failed"):
                            fut.set_result(phase)

        keys = iter(f"k{i:05d}" for i in range(n))

        async def worker() -> None:
            for key in keys:
                name = f"b{label[:8]}-{key}"
                ended[name] = asyncio.get_running_loop().create_future()
                body = {
                    "metadata": {"name": name, "labels": {"pdt-bench": label}},
                    "spec": {
                        "restartPolicy": "Never",
                        "containers": [
                            {
                                "name": "main",
                                "image": "busybox",
                                "command": ["sh", "-c", SCRIPT],
                                "env": _manifest_env(key, str(out_dir / key)),
                            }
                        ],
                    },
                }
                await core.create_namespaced_pod(ns, body)
                phase = await ended[name]
                del ended[name]
                assert phase == "Succeeded", (name, phase)
                await core.delete_namespaced_pod(name, ns)

        watcher = asyncio.ensure_future(follow())
        try:
            await run_workers(conc, worker)
        finally:
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)
        return time.perf_counter() - t1


async def batch50(params: dict[str, Any], label: str, out_dir: Path) -> float:
    """``ours`` with ``batch=50``: one pod for up to 50 keys."""
    return await ours(params, label, out_dir, batch=BATCH)


#: series name -> the measurement (params, label of its pods, output directory) -> seconds
SERIES: dict[str, Callable[[dict[str, Any], str, Path], Awaitable[float]]] = {
    "ours": ours,
    "bare": bare,
    "batch50": batch50,
}


async def _no_pods_left(kube_conf: dict[str, Any], label: str) -> None:
    """Wait until no pod of the measurement is left (delete what is, dropping finalizers)."""
    from kubernetes_asyncio import client, config

    configuration = client.Configuration()
    await config.load_kube_config(config_file=kube_conf["kubeconfig"], client_configuration=configuration)
    async with client.ApiClient(configuration) as api:
        core = client.CoreV1Api(api)
        deadline = time.monotonic() + 120
        while True:
            left = (
                await core.list_namespaced_pod(kube_conf["namespace"], label_selector=f"pdt-bench={label}")
            ).items
            if not left:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"pods left behind: {[p.metadata.name for p in left][:10]}")
            for pod in left:
                if pod.metadata.deletion_timestamp is None or pod.metadata.finalizers:
                    try:
                        await core.patch_namespaced_pod(
                            pod.metadata.name, kube_conf["namespace"], {"metadata": {"finalizers": None}}
                        )
                        await core.delete_namespaced_pod(pod.metadata.name, kube_conf["namespace"])
                    except client.exceptions.ApiException:
                        pass  # gone meanwhile
            await asyncio.sleep(0.5)


# ---------------------------------------------------------------------- worker
def _count_requests() -> dict[str, int]:
    """Count every API request this process sends from now on, by verb (``POST``,
    ``DELETE``, ``PATCH``, ``GET``, ``WATCH`` for a watch), at the REST client of
    ``kubernetes_asyncio`` that every ``ApiClient`` sends through."""
    from kubernetes_asyncio.client import rest

    counts: dict[str, int] = {}
    send = rest.RESTClientObject.request

    async def request(self: Any, method: str, url: str, query_params: Any = None, *a: Any, **kw: Any) -> Any:
        watching = any(k == "watch" and str(v).lower() == "true" for k, v in query_params or [])
        verb = "WATCH" if watching else method
        counts[verb] = counts.get(verb, 0) + 1
        return await send(self, method, url, query_params, *a, **kw)

    rest.RESTClientObject.request = request  # type: ignore[method-assign]
    return counts


def run(series: str, params: dict[str, Any]) -> dict[str, Any]:
    n = params["n"]
    label = uuid.uuid4().hex[:12]
    t0 = time.perf_counter()
    if series == "bare":
        import kubernetes_asyncio.client  # noqa: F401
    else:
        import pydatatask.executor.kubernetes  # noqa: F401
    import_s = time.perf_counter() - t0
    counts = _count_requests()
    with tempfile.TemporaryDirectory(prefix="pdt-kube-pods-", dir=os.environ.get("PDT_BENCH_TMP")) as tmp:
        out_dir = Path(tmp)

        sent: dict[str, int] = {}

        async def main() -> float:
            try:
                return await SERIES[series](params, label, out_dir)
            finally:
                sent.update(counts)  # the series' own requests, not the cleanup's check
                await _no_pods_left(params["kube"], label)

        cpu0 = time.process_time()
        seconds = asyncio.run(main())
        cpu = time.process_time() - cpu0
        written = sorted(p.name for p in out_dir.iterdir() if not p.name.startswith("."))
        assert len(written) == n and (out_dir / written[0]).read_text() == written[0], written[:3]
    # client_cpu_s: this process's CPU time (the scheduler's, or the bare loop's), cleanup
    # included: what the client costs, apart from the cluster's own work
    # requests_per_job: the series' API requests (LISTs and WATCHes included) per key
    metrics = {"seconds": seconds, "jobs_per_s": n / seconds, "import_seconds": import_s, "client_cpu_s": cpu}
    metrics["requests_per_job"] = sum(sent.values()) / n
    metrics.update({f"{verb.lower()}_per_job": count / n for verb, count in sorted(sent.items())})
    return metrics


if __name__ == "__main__":
    from .. import worker_main

    worker_main(run)
