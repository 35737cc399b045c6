"""Tests of the test kubelet itself, against the real kube-apiserver/scheduler started by scripts/test-services."""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from kubernetes_asyncio import client, config
from kubernetes_asyncio.client.rest import ApiException

pytestmark = pytest.mark.kube

TIMEOUT = 30.0


async def _api(kube: dict) -> client.ApiClient:
    cfg = client.Configuration()
    await config.load_kube_config(config_file=kube["kubeconfig"], client_configuration=cfg)
    return client.ApiClient(cfg)


async def _poll(what: str, fn: Callable[[], Awaitable[Any]], within: float = TIMEOUT) -> Any:
    end = time.monotonic() + within
    last: Any = None
    while time.monotonic() < end:
        last = await fn()
        if last:
            return last
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out after {within}s waiting for {what} (last: {last!r})")


def _pod(name: str, containers: list[client.V1Container], **spec: Any) -> client.V1Pod:
    return client.V1Pod(
        metadata=client.V1ObjectMeta(name=name, labels={"app": "pdt-kubelet-test"}),
        spec=client.V1PodSpec(restart_policy="Never", containers=containers, **spec),
    )


def _ctr(name: str, command: list[str], **kw: Any) -> client.V1Container:
    return client.V1Container(name=name, image="ignored:latest", command=command, **kw)


def _name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


async def _run_pod(
    kube: dict, pod: client.V1Pod, body: Callable[[client.CoreV1Api, str, str], Awaitable[None]]
) -> None:
    ns = kube["namespace"]
    async with await _api(kube) as api:
        v1 = client.CoreV1Api(api)
        await v1.create_namespaced_pod(ns, pod)
        try:
            await body(v1, ns, pod.metadata.name)
        finally:
            try:
                await v1.delete_namespaced_pod(pod.metadata.name, ns, grace_period_seconds=0)
            except ApiException as e:
                if e.status != 404:
                    raise


async def _finished(v1: client.CoreV1Api, ns: str, name: str) -> client.V1Pod:
    async def check() -> client.V1Pod | None:
        p = await v1.read_namespaced_pod_status(name, ns)
        return p if p.status.phase in ("Succeeded", "Failed") else None

    return await _poll(f"pod {name} to finish", check)


def _terminated(pod: client.V1Pod, container: str) -> client.V1ContainerStateTerminated:
    (cs,) = [c for c in pod.status.container_statuses if c.name == container]
    assert cs.state.terminated is not None, cs.state
    return cs.state.terminated


def _pids_with_env(marker: str) -> list[int]:
    found = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/environ", "rb") as f:
                env = f.read().split(b"\0")
            with open(f"/proc/{d}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if marker.encode() in env and state != "Z":
            found.append(int(d))
    return found


def test_node_registered_ready(kube_services: dict) -> None:
    async def main() -> None:
        async with await _api(kube_services) as api:
            node = await client.CoreV1Api(api).read_node(kube_services["node"])
            ready = [c for c in node.status.conditions if c.type == "Ready"]
            assert ready and ready[0].status == "True"
            assert {"type": "InternalIP", "address": "127.0.0.1"} in [
                a.to_dict() for a in node.status.addresses
            ]
            assert node.status.daemon_endpoints.kubelet_endpoint.port > 0
            assert node.status.allocatable["pods"]

    asyncio.run(main())


def test_failing_pod_exit_code_and_logs(kube_services: dict) -> None:
    pod = _pod(_name("fail"), [_ctr("main", ["sh", "-c", "echo hello; exit 3"])])

    async def body(v1: client.CoreV1Api, ns: str, name: str) -> None:
        p = await _finished(v1, ns, name)
        assert p.status.phase == "Failed"
        assert p.spec.node_name == kube_services["node"]  # bound by the real scheduler
        t = _terminated(p, "main")
        assert t.exit_code == 3 and t.reason == "Error"
        assert t.started_at is not None and t.finished_at is not None
        assert p.status.start_time is not None
        text = await v1.read_namespaced_pod_log(name, ns)
        assert "hello" in text

    asyncio.run(_run_pod(kube_services, pod, body))


def test_succeeding_pod_and_log_options(kube_services: dict) -> None:
    pod = _pod(_name("ok"), [_ctr("main", ["sh", "-c", "echo one; echo two; echo three 1>&2"])])

    async def body(v1: client.CoreV1Api, ns: str, name: str) -> None:
        p = await _finished(v1, ns, name)
        assert p.status.phase == "Succeeded"
        t = _terminated(p, "main")
        assert t.exit_code == 0 and t.reason == "Completed"
        assert await v1.read_namespaced_pod_log(name, ns, container="main") == "one\ntwo\nthree\n"
        assert await v1.read_namespaced_pod_log(name, ns, tail_lines=1) == "three\n"
        assert await v1.read_namespaced_pod_log(name, ns, limit_bytes=3) == "one"

    asyncio.run(_run_pod(kube_services, pod, body))


def test_env_and_working_dir(kube_services: dict, tmp_path: Any) -> None:
    pod = _pod(
        _name("env"),
        [
            _ctr(
                "main",
                ["sh", "-c"],
                args=['echo "FOO=$FOO"; echo "REF=$(FOO)"; pwd'],
                env=[client.V1EnvVar(name="FOO", value="bar baz")],
                working_dir=str(tmp_path),
            )
        ],
    )

    async def body(v1: client.CoreV1Api, ns: str, name: str) -> None:
        p = await _finished(v1, ns, name)
        assert p.status.phase == "Succeeded", p.status
        text = await v1.read_namespaced_pod_log(name, ns)
        assert "FOO=bar baz\n" in text
        assert "REF=bar baz\n" in text  # Kubernetes $(VAR) expansion in args
        assert text.splitlines()[-1] == str(tmp_path)

    asyncio.run(_run_pod(kube_services, pod, body))


def test_multi_container_one_fails(kube_services: dict) -> None:
    pod = _pod(_name("multi"), [_ctr("good", ["true"]), _ctr("bad", ["sh", "-c", "exit 7"])])

    async def body(v1: client.CoreV1Api, ns: str, name: str) -> None:
        p = await _finished(v1, ns, name)
        assert p.status.phase == "Failed"
        assert _terminated(p, "good").exit_code == 0
        assert _terminated(p, "bad").exit_code == 7

    asyncio.run(_run_pod(kube_services, pod, body))


def test_missing_executable(kube_services: dict) -> None:
    pod = _pod(_name("noexe"), [_ctr("main", ["/nonexistent/pdt-no-such-binary", "x"])])

    async def body(v1: client.CoreV1Api, ns: str, name: str) -> None:
        p = await _finished(v1, ns, name)
        assert p.status.phase == "Failed"
        assert _terminated(p, "main").exit_code == 127
        text = await v1.read_namespaced_pod_log(name, ns)
        assert "pdt-no-such-binary" in text

    asyncio.run(_run_pod(kube_services, pod, body))


def test_delete_running_pod_kills_process(kube_services: dict) -> None:
    marker = f"PDT_KUBELET_TEST_ID={uuid.uuid4().hex}"
    key, value = marker.split("=", 1)
    pod = _pod(_name("del"), [_ctr("main", ["sleep", "300"], env=[client.V1EnvVar(name=key, value=value)])])

    async def body(v1: client.CoreV1Api, ns: str, name: str) -> None:
        async def running() -> bool:
            p = await v1.read_namespaced_pod_status(name, ns)
            return p.status.phase == "Running"

        await _poll(f"pod {name} Running", running)
        pids = await _poll("the pod's process", lambda: asyncio.sleep(0, _pids_with_env(marker)))
        assert len(pids) == 1
        await v1.delete_namespaced_pod(
            name, ns
        )  # default grace: the kubelet TERMs, then deletes with grace 0

        async def gone() -> bool:
            try:
                await v1.read_namespaced_pod(name, ns)
                return False
            except ApiException as e:
                return e.status == 404

        await _poll(f"pod {name} to disappear", gone)
        await _poll("the process to be gone", lambda: asyncio.sleep(0, not _pids_with_env(marker)), within=5)

    asyncio.run(_run_pod(kube_services, pod, body))


def test_follow_logs_stream_until_exit(kube_services: dict) -> None:
    pod = _pod(
        _name("follow"), [_ctr("main", ["sh", "-c", "for i in 1 2 3; do echo line$i; sleep 0.3; done"])]
    )

    async def body(v1: client.CoreV1Api, ns: str, name: str) -> None:
        async def started() -> bool:
            p = await v1.read_namespaced_pod_status(name, ns)
            return p.status.phase != "Pending"

        await _poll(f"pod {name} to start", started)
        resp = await v1.read_namespaced_pod_log(name, ns, follow=True, _preload_content=False)
        lines = [line async for line in resp.content]
        resp.release()
        assert lines == [b"line1\n", b"line2\n", b"line3\n"]
        assert (await _finished(v1, ns, name)).status.phase == "Succeeded"

    asyncio.run(_run_pod(kube_services, pod, body))


def test_init_container_and_deadline(kube_services: dict, tmp_path: Any) -> None:
    flag = tmp_path / "init-ran"
    pod = _pod(
        _name("deadline"),
        [_ctr("main", ["sh", "-c", f"cat {flag}; exec sleep 60"])],
        init_containers=[_ctr("init", ["sh", "-c", f"echo from-init > {flag}"])],
        active_deadline_seconds=1,
    )

    async def body(v1: client.CoreV1Api, ns: str, name: str) -> None:
        p = await _finished(v1, ns, name)
        assert p.status.phase == "Failed" and p.status.reason == "DeadlineExceeded"
        assert p.status.init_container_statuses[0].state.terminated.exit_code == 0
        assert _terminated(p, "main").exit_code == 128 + 15
        assert await v1.read_namespaced_pod_log(name, ns, container="main") == "from-init\n"

    asyncio.run(_run_pod(kube_services, pod, body))
