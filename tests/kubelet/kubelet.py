#!/usr/bin/env python3
"""pydatatask's test kubelet: runs the pods bound to one Node as local processes.

Usage (from anywhere; the file is self-contained):

    python tests/kubelet/kubelet.py --kubeconfig K --node pdt-test-node --port 10250 \
        --state-dir DIR [--cpu 8] [--memory 32Gi] [--pods 110] [--label k=v ...]

It registers the Node (Ready, heartbeat every ~10 s), watches pods whose spec.nodeName is the node
(kube-scheduler binds them), runs each container's command+args as a local process (the image is
ignored), reports phase/exit codes through the pod status subresource, honours deletion and serves
container logs over HTTPS at GET /containerLogs/{ns}/{pod}/{container} for the API server's proxy.
See README.md beside this file for what it does not do.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import http.server
import logging
import os
import re
import shutil
import signal
import ssl
import subprocess
import sys
import threading
import time
import urllib.parse
from dataclasses import dataclass
from typing import Any

from kubernetes_asyncio import client, config, watch
from kubernetes_asyncio.client.rest import ApiException

log = logging.getLogger("test-kubelet")

KUBELET_VERSION = "v1.20.2-pdt-test"
# every job process gets this in its environment, so leftovers can be found via /proc/*/environ
JOB_MARKER = "PDT_TEST_KUBELET_NODE"


def now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# --------------------------------------------------------------------------- log server
@dataclass
class LogEntry:
    path: str
    done: bool = False


class LogRegistry:
    """(namespace, pod, container) -> current log file; shared with the HTTP server thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: dict[tuple[str, str, str], LogEntry] = {}

    def set(self, key: tuple[str, str, str], entry: LogEntry) -> None:
        with self._lock:
            self._entries[key] = entry

    def get(self, key: tuple[str, str, str]) -> LogEntry | None:
        with self._lock:
            return self._entries.get(key)

    def drop(self, key: tuple[str, str, str], entry: LogEntry) -> None:
        with self._lock:
            if self._entries.get(key) is entry:
                del self._entries[key]


def _select(data: bytes, query: dict[str, list[str]]) -> bytes:
    if "tailLines" in query:
        n = int(query["tailLines"][0])
        lines = data.splitlines(keepends=True)
        data = b"".join(lines[-n:]) if n > 0 else b""
    if "limitBytes" in query:
        data = data[: int(query["limitBytes"][0])]
    return data


def make_handler(registry: LogRegistry):
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0"  # body ends when the connection closes (also for follow)

        def log_message(self, fmt: str, *args: Any) -> None:  # quiet
            log.debug("http: " + fmt, *args)

        def _error(self, code: int, text: str) -> None:
            body = text.encode()
            self.send_response(code)
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:  # noqa: N802
            url = urllib.parse.urlsplit(self.path)
            parts = [urllib.parse.unquote(p) for p in url.path.split("/") if p]
            if parts == ["healthz"]:
                return self._error(200, "ok")
            if len(parts) != 4 or parts[0] != "containerLogs":
                return self._error(404, "404 page not found")
            _, ns, pod, ctr = parts
            query = urllib.parse.parse_qs(url.query)
            entry = registry.get((ns, pod, ctr))
            if entry is None or not os.path.exists(entry.path):
                return self._error(
                    400, f'container "{ctr}" in pod "{pod}" is waiting to start: ContainerCreating'
                )
            try:
                with open(entry.path, "rb") as f:
                    data = f.read()
                    pos = f.tell()
                out = _select(data, query)
                limit = int(query["limitBytes"][0]) if "limitBytes" in query else None
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.end_headers()
                self.wfile.write(out)
                sent = len(out)
                follow = query.get("follow", ["false"])[0] == "true"
                while follow and (limit is None or sent < limit):
                    finished = entry.done
                    with open(entry.path, "rb") as f:
                        f.seek(pos)
                        more = f.read()
                        pos = f.tell()
                    if more:
                        if limit is not None:
                            more = more[: limit - sent]
                        self.wfile.write(more)
                        self.wfile.flush()
                        sent += len(more)
                    elif finished:
                        break
                    else:
                        time.sleep(0.2)
            except (BrokenPipeError, ConnectionResetError):
                pass
            except ValueError as e:
                self._error(400, f"bad request: {e}")
            except FileNotFoundError:
                pass

    return Handler


class LogServer:
    def __init__(self, address: str, port: int, cert: str, key: str, registry: LogRegistry):
        self.httpd = http.server.ThreadingHTTPServer((address, port), make_handler(registry))
        self.httpd.daemon_threads = True
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert, key)
        self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="log-server", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def ensure_cert(state_dir: str, node: str, address: str) -> tuple[str, str]:
    cert, key = os.path.join(state_dir, "kubelet.crt"), os.path.join(state_dir, "kubelet.key")
    if os.path.exists(cert) and os.path.exists(key):
        return cert, key
    try:
        import ipaddress

        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        pk = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, node)])
        t = datetime.datetime.now(datetime.UTC)
        crt = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(pk.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(t - datetime.timedelta(days=1))
            .not_valid_after(t + datetime.timedelta(days=3650))
            .add_extension(
                x509.SubjectAlternativeName(
                    [
                        x509.DNSName(node),
                        x509.DNSName("localhost"),
                        x509.IPAddress(ipaddress.ip_address(address)),
                    ]
                ),
                critical=False,
            )
            .sign(pk, hashes.SHA256())
        )
        with open(key + ".tmp", "wb") as f:
            f.write(
                pk.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption(),
                )
            )
        with open(cert + ".tmp", "wb") as f:
            f.write(crt.public_bytes(serialization.Encoding.PEM))
    except ImportError:
        subprocess.run(
            [
                "openssl",
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "3650",
                "-subj",
                f"/CN={node}",
                "-keyout",
                key + ".tmp",
                "-out",
                cert + ".tmp",
            ],
            check=True,
            capture_output=True,
        )
    os.chmod(key + ".tmp", 0o600)
    os.replace(key + ".tmp", key)
    os.replace(cert + ".tmp", cert)
    return cert, key


# --------------------------------------------------------------------------- pods
_VAR_REF = re.compile(r"\$\((\w+)\)|\$\$")


def expand(s: str, env: dict[str, str]) -> str:
    """Kubernetes $(VAR) expansion in command/args/env values ($$ -> $, unknown refs kept)."""

    def rep(m: re.Match) -> str:
        if m.group(0) == "$$":
            return "$"
        return env.get(m.group(1), m.group(0))

    return _VAR_REF.sub(rep, s)


def exit_code_of(returncode: int) -> int:
    return 128 - returncode if returncode < 0 else returncode


@dataclass
class ContainerRun:
    name: str
    log: LogEntry
    proc: asyncio.subprocess.Process | None = None
    started_at: str | None = None
    finished_at: str | None = None
    exit_code: int | None = None
    reason: str | None = None
    message: str | None = None

    def status(self, image: str, init: bool = False) -> dict[str, Any]:
        s: dict[str, Any] = {
            "name": self.name,
            "image": image or "none",
            "imageID": "",
            "restartCount": 0,
            "ready": self.exit_code is None and self.started_at is not None and not init,
            "started": self.exit_code is None and self.started_at is not None,
            "containerID": f"pdt://{self.proc.pid}" if self.proc else "",
        }
        if self.exit_code is not None:
            term = {
                "exitCode": self.exit_code,
                "reason": self.reason,
                "startedAt": self.started_at or self.finished_at,
                "finishedAt": self.finished_at,
            }
            if self.message:
                term["message"] = self.message[-1024:]
            s["state"] = {"terminated": term}
        elif self.started_at is not None:
            s["state"] = {"running": {"startedAt": self.started_at}}
        else:
            s["state"] = {"waiting": {"reason": "PodInitializing"}}
        return s


class PodRunner:
    def __init__(self, kubelet: Kubelet, pod: client.V1Pod):
        self.k = kubelet
        self.pod = pod
        self.ns: str = pod.metadata.namespace
        self.name: str = pod.metadata.name
        self.uid: str = pod.metadata.uid
        self.dir = os.path.join(kubelet.state_dir, "pods", f"{self.ns}_{self.name}_{self.uid}")
        self.runs: dict[str, ContainerRun] = {}
        self.init_runs: dict[str, ContainerRun] = {}
        self.task: asyncio.Task | None = None
        self.stopping = False
        self.stop_reason: str | None = None
        self.start_time = now()
        self.finished = asyncio.Event()

    # ---- status
    def _images(self, init: bool) -> dict[str, str]:
        cs = (self.pod.spec.init_containers or []) if init else self.pod.spec.containers
        return {c.name: c.image for c in cs}

    def _status_body(self, phase: str, reason: str | None = None, message: str | None = None) -> dict:
        done = phase in ("Succeeded", "Failed")
        t = now()
        ready = "False" if done or phase == "Pending" else "True"
        initialized = "True" if all(r.exit_code == 0 for r in self.init_runs.values()) else "False"
        conds = [
            {"type": "PodScheduled", "status": "True", "lastTransitionTime": self.start_time},
            {"type": "Initialized", "status": initialized, "lastTransitionTime": t},
            {"type": "ContainersReady", "status": ready, "lastTransitionTime": t},
            {"type": "Ready", "status": ready, "lastTransitionTime": t},
        ]
        if done:
            for c in conds[2:]:
                c["reason"] = "PodCompleted"
        imgs, init_imgs = self._images(False), self._images(True)
        status: dict[str, Any] = {
            "phase": phase,
            "startTime": self.start_time,
            "hostIP": self.k.address,
            "podIP": self.k.address,
            "podIPs": [{"ip": self.k.address}],
            "conditions": conds,
            "containerStatuses": [
                (
                    self.runs[c.name].status(imgs[c.name])
                    if c.name in self.runs
                    else {
                        "name": c.name,
                        "image": c.image or "none",
                        "imageID": "",
                        "restartCount": 0,
                        "ready": False,
                        "started": False,
                        "state": {"waiting": {"reason": "PodInitializing"}},
                    }
                )
                for c in self.pod.spec.containers
            ],
        }
        if self.pod.spec.init_containers:
            status["initContainerStatuses"] = [
                (
                    self.init_runs[c.name].status(init_imgs[c.name], init=True)
                    if c.name in self.init_runs
                    else {
                        "name": c.name,
                        "image": c.image or "none",
                        "imageID": "",
                        "restartCount": 0,
                        "ready": False,
                        "state": {"waiting": {"reason": "PodInitializing"}},
                    }
                )
                for c in self.pod.spec.init_containers
            ]
        if reason:
            status["reason"] = reason
        if message:
            status["message"] = message
        return {"status": status}

    async def patch_status(self, body: dict, attempts: int = 60) -> bool:
        for i in range(attempts):
            try:
                await self.k.v1.patch_namespaced_pod_status(self.name, self.ns, body)
                return True
            except ApiException as e:
                if e.status in (404, 409) or (e.status == 422 and i > 2):
                    log.info("status patch %s/%s: %s %s", self.ns, self.name, e.status, e.reason)
                    return False
            except Exception as e:  # apiserver down (outage tests): retry
                log.warning("status patch %s/%s failed: %r", self.ns, self.name, e)
            await asyncio.sleep(min(0.5 * (i + 1), 5))
        return False

    # ---- running
    def _env_for(self, c: client.V1Container) -> dict[str, str]:
        env = dict(os.environ)
        for k in list(env):
            if k.startswith("KUBECONFIG") or k == "PDT_TEST_SERVICES_INTERNAL":
                env.pop(k, None)
        env["HOSTNAME"] = self.name
        env[JOB_MARKER] = self.k.node
        fields = {
            "metadata.name": self.name,
            "metadata.namespace": self.ns,
            "metadata.uid": self.uid,
            "spec.nodeName": self.k.node,
            "spec.serviceAccountName": self.pod.spec.service_account_name or "",
            "status.hostIP": self.k.address,
            "status.podIP": self.k.address,
        }
        for e in c.env or []:
            if e.value is not None:
                env[e.name] = expand(e.value, env)
            elif e.value_from is not None and e.value_from.field_ref is not None:
                fp = e.value_from.field_ref.field_path
                m = re.match(r"metadata\.(labels|annotations)\['(.+)'\]", fp)
                if m:
                    src = (
                        self.pod.metadata.labels if m.group(1) == "labels" else self.pod.metadata.annotations
                    ) or {}
                    env[e.name] = src.get(m.group(2), "")
                else:
                    env[e.name] = fields.get(fp, "")
            else:
                env.setdefault(e.name, "")  # secretKeyRef/configMapKeyRef/...: unsupported
        return env

    async def _run_container(self, c: client.V1Container, run: ContainerRun) -> None:
        os.makedirs(self.dir, exist_ok=True)
        env = self._env_for(c)
        argv = [expand(a, env) for a in (c.command or [])] + [expand(a, env) for a in (c.args or [])]
        run.started_at = now()
        with open(run.log.path, "ab") as logf:  # noqa: ASYNC230 (small local file)
            if not argv:
                err = f"test kubelet: container {c.name!r} has no command/args (images are not run)\n"
            else:
                err = None
                try:
                    run.proc = await asyncio.create_subprocess_exec(
                        *argv,
                        stdin=subprocess.DEVNULL,
                        stdout=logf,
                        stderr=subprocess.STDOUT,
                        env=env,
                        cwd=c.working_dir or None,
                        start_new_session=True,
                    )
                except (OSError, ValueError) as e:
                    err = f"test kubelet: failed to start container {c.name!r}: {e}\n"
            if err is not None:
                logf.write(err.encode())
                run.exit_code, run.reason, run.message = 127, "StartError", err.strip()
                run.finished_at = now()
                run.log.done = True
                return
        self.k.procs.add(run.proc.pid)
        if self.stopping:  # deleted while starting
            self.k.kill_group(run.proc.pid, signal.SIGKILL)
        try:
            rc = await run.proc.wait()
        finally:
            # a container's end takes everything it started with it
            self.k.kill_group(run.proc.pid, signal.SIGKILL)
            self.k.procs.discard(run.proc.pid)
        run.exit_code = exit_code_of(rc)
        run.finished_at = now()
        if self.stop_reason == "DeadlineExceeded":
            run.reason = "DeadlineExceeded"
        elif rc < 0 and self.stopping:
            run.reason = "Killed" if rc == -signal.SIGKILL else "Terminated"
        else:
            run.reason = "Completed" if rc == 0 else "Error"
        run.log.done = True

    def _new_run(self, c: client.V1Container, runs: dict[str, ContainerRun]) -> ContainerRun:
        path = os.path.join(self.dir, f"{c.name}.log")
        entry = LogEntry(path)
        run = ContainerRun(c.name, entry)
        runs[c.name] = run
        return run

    async def run(self) -> None:
        os.makedirs(self.dir, exist_ok=True)
        try:
            ok = True
            for c in self.pod.spec.init_containers or []:
                if self.stopping:
                    ok = False
                    break
                run = self._new_run(c, self.init_runs)
                open(run.log.path, "ab").close()  # noqa: ASYNC230 (small local file)
                self.k.logs.set((self.ns, self.name, c.name), run.log)
                await self.patch_status(self._status_body("Pending"), attempts=5)
                await self._run_container(c, run)
                if run.exit_code != 0:
                    ok = False
                    break
            if ok and not self.stopping:
                runs = [(c, self._new_run(c, self.runs)) for c in self.pod.spec.containers]
                for c, run in runs:
                    open(run.log.path, "ab").close()  # noqa: ASYNC230 (small local file)
                    self.k.logs.set((self.ns, self.name, c.name), run.log)
                tasks = [asyncio.create_task(self._run_container(c, run)) for c, run in runs]
                # starting the processes is immediate; report Running once they are started
                await asyncio.sleep(0)
                while any(r.started_at is None for _, r in runs) and not all(t.done() for t in tasks):  # noqa: ASYNC110 (polling is simplest here)
                    await asyncio.sleep(0.01)
                if not all(t.done() for t in tasks):
                    await self.patch_status(self._status_body("Running"), attempts=5)
                await asyncio.gather(*tasks)
            all_runs = list(self.init_runs.values()) + list(self.runs.values())
            failed = (not ok) or any(r.exit_code != 0 for r in all_runs) or not self.runs
            phase = "Failed" if failed else "Succeeded"
            reason = "DeadlineExceeded" if self.stop_reason == "DeadlineExceeded" else None
            message = "Pod was active on the node longer than the specified deadline" if reason else None
            if not (self.stopping and self.stop_reason == "Deleted"):
                await self.patch_status(self._status_body(phase, reason, message))
            log.info("pod %s/%s %s", self.ns, self.name, phase)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("pod %s/%s: runner crashed", self.ns, self.name)
            await self.patch_status(
                self._status_body("Failed", "TestKubeletError", "test kubelet error"), attempts=3
            )
        finally:
            self.finished.set()

    def start(self) -> None:
        self.task = asyncio.create_task(self.run())
        deadline = self.pod.spec.active_deadline_seconds
        if deadline:
            asyncio.create_task(self._deadline(deadline))

    async def _deadline(self, seconds: int) -> None:
        try:
            await asyncio.wait_for(self.finished.wait(), seconds)
        except TimeoutError:
            if not self.stopping:
                self.stop_reason = "DeadlineExceeded"
                await self.kill(self.pod.spec.termination_grace_period_seconds or 0)

    def pids(self) -> list[int]:
        return [
            r.proc.pid
            for r in [*self.init_runs.values(), *self.runs.values()]
            if r.proc is not None and r.exit_code is None
        ]

    async def kill(self, grace: float) -> None:
        """TERM every process group of the pod, KILL after `grace` seconds."""
        self.stopping = True
        for pid in self.pids():
            self.k.kill_group(pid, signal.SIGTERM)
        if self.pids() and grace > 0:
            try:
                await asyncio.wait_for(self._all_exited(), grace)
            except TimeoutError:
                pass
        for pid in self.pids():
            self.k.kill_group(pid, signal.SIGKILL)
        try:
            await asyncio.wait_for(self.finished.wait(), 10)
        except TimeoutError:
            log.warning("pod %s/%s: runner did not finish after kill", self.ns, self.name)

    async def _all_exited(self) -> None:
        while self.pids():  # noqa: ASYNC110 (polling is simplest here)
            await asyncio.sleep(0.05)

    def cleanup_logs(self) -> None:
        for name, run in [*self.init_runs.items(), *self.runs.items()]:
            self.k.logs.drop((self.ns, self.name, name), run.log)
        shutil.rmtree(self.dir, ignore_errors=True)


# --------------------------------------------------------------------------- kubelet
class Kubelet:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.node: str = args.node
        self.address: str = args.address
        self.port: int = args.port
        self.state_dir: str = os.path.abspath(args.state_dir)
        self.logs = LogRegistry()
        self.pods: dict[str, PodRunner] = {}  # uid -> runner
        self.deleting: set[str] = set()
        self.procs: set[int] = set()
        self.stop_event = asyncio.Event()
        self.v1: client.CoreV1Api

    @staticmethod
    def kill_group(pid: int, sig: int) -> None:
        try:
            os.killpg(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    # ---- node
    def _labels(self) -> dict[str, str]:
        labels = {
            "kubernetes.io/hostname": self.node,
            "kubernetes.io/os": "linux",
            "kubernetes.io/arch": "amd64",
            "pydatatask.test/kubelet": "true",
        }
        for kv in self.args.label or []:
            k, _, v = kv.partition("=")
            labels[k] = v
        return labels

    async def register(self) -> None:
        try:
            await self.v1.create_node(
                client.V1Node(metadata=client.V1ObjectMeta(name=self.node, labels=self._labels()))
            )
            log.info("node %s created", self.node)
        except ApiException as e:
            if e.status != 409:
                raise
            await self.v1.patch_node(self.node, {"metadata": {"labels": self._labels()}})
        await self.heartbeat()

    async def heartbeat(self) -> None:
        res = {
            "cpu": self.args.cpu,
            "memory": self.args.memory,
            "pods": str(self.args.pods),
            "ephemeral-storage": "100Gi",
        }
        t = now()
        body = {
            "status": {
                "capacity": res,
                "allocatable": res,
                # only an InternalIP: the API server prefers a Hostname address for the log proxy, and the node
                # name does not resolve. "$patch: replace" drops addresses from earlier registrations.
                "addresses": [{"type": "InternalIP", "address": self.address}, {"$patch": "replace"}],
                "daemonEndpoints": {"kubeletEndpoint": {"Port": self.port}},
                "nodeInfo": {
                    "kubeletVersion": KUBELET_VERSION,
                    "kubeProxyVersion": KUBELET_VERSION,
                    "operatingSystem": "linux",
                    "architecture": "amd64",
                    "containerRuntimeVersion": "pdt-test-kubelet://1",
                    "osImage": "local processes",
                    "kernelVersion": os.uname().release,
                    "machineID": "",
                    "systemUUID": "",
                    "bootID": "",
                },
                "conditions": [
                    {
                        "type": "Ready",
                        "status": "True",
                        "reason": "KubeletReady",
                        "message": "pydatatask test kubelet is posting ready status",
                        "lastHeartbeatTime": t,
                        "lastTransitionTime": t,
                    },
                    {
                        "type": "MemoryPressure",
                        "status": "False",
                        "reason": "KubeletHasSufficientMemory",
                        "lastHeartbeatTime": t,
                        "lastTransitionTime": t,
                    },
                    {
                        "type": "DiskPressure",
                        "status": "False",
                        "reason": "KubeletHasNoDiskPressure",
                        "lastHeartbeatTime": t,
                        "lastTransitionTime": t,
                    },
                    {
                        "type": "PIDPressure",
                        "status": "False",
                        "reason": "KubeletHasSufficientPID",
                        "lastHeartbeatTime": t,
                        "lastTransitionTime": t,
                    },
                ],
            }
        }
        await self.v1.patch_node_status(self.node, body)

    async def heartbeat_loop(self) -> None:
        while not self.stop_event.is_set():
            try:
                await asyncio.wait_for(self.stop_event.wait(), self.args.heartbeat)
                return
            except TimeoutError:
                pass
            try:
                await self.heartbeat()
            except ApiException as e:
                if e.status == 404:
                    try:
                        await self.register()
                    except Exception as e2:
                        log.warning("re-register failed: %r", e2)
                else:
                    log.warning("heartbeat failed: %s %s", e.status, e.reason)
            except Exception as e:
                log.warning("heartbeat failed: %r", e)

    # ---- pods
    async def on_pod(self, pod: client.V1Pod, deleted: bool = False) -> None:
        if pod.spec is None or pod.spec.node_name != self.node:
            return
        uid = pod.metadata.uid
        runner = self.pods.get(uid)
        if deleted or pod.metadata.deletion_timestamp is not None:
            if uid in self.deleting:
                return
            self.deleting.add(uid)
            asyncio.create_task(self._delete(pod, runner, already_gone=deleted))
            return
        if runner is not None:
            return
        phase = (pod.status.phase if pod.status else None) or "Pending"
        if phase in ("Succeeded", "Failed"):
            self._adopt_logs(pod)
            return
        if phase != "Pending":
            # Running according to the API, but not ours: a previous kubelet ran it and its processes are gone
            r = PodRunner(self, pod)
            self.pods[uid] = r
            await r.patch_status(
                {
                    "status": {
                        "phase": "Failed",
                        "reason": "NodeRestarted",
                        "message": "the test kubelet restarted while the pod was running",
                    }
                },
                attempts=5,
            )
            return
        log.info("pod %s/%s: starting", pod.metadata.namespace, pod.metadata.name)
        r = PodRunner(self, pod)
        self.pods[uid] = r
        r.start()

    def _adopt_logs(self, pod: client.V1Pod) -> None:
        """Serve the logs of a pod that finished before this kubelet (re)started, if they are still on disk."""
        d = os.path.join(
            self.state_dir, "pods", f"{pod.metadata.namespace}_{pod.metadata.name}_{pod.metadata.uid}"
        )
        if not os.path.isdir(d):
            return
        for c in [*(pod.spec.init_containers or []), *pod.spec.containers]:
            path = os.path.join(d, f"{c.name}.log")
            key = (pod.metadata.namespace, pod.metadata.name, c.name)
            if os.path.exists(path) and self.logs.get(key) is None:
                self.logs.set(key, LogEntry(path, done=True))

    async def _delete(self, pod: client.V1Pod, runner: PodRunner | None, already_gone: bool) -> None:
        ns, name, uid = pod.metadata.namespace, pod.metadata.name, pod.metadata.uid
        try:
            if runner is not None:
                runner.stop_reason = runner.stop_reason or "Deleted"
                grace = pod.metadata.deletion_grace_period_seconds
                if grace is None:
                    grace = pod.spec.termination_grace_period_seconds
                grace = min(float(grace if grace is not None else 30), self.args.max_grace)
                await runner.kill(grace)
            if not already_gone:
                for i in range(30):
                    try:
                        await self.v1.delete_namespaced_pod(
                            name,
                            ns,
                            grace_period_seconds=0,
                            body=client.V1DeleteOptions(
                                grace_period_seconds=0, preconditions=client.V1Preconditions(uid=uid)
                            ),
                        )
                        break
                    except ApiException as e:
                        if e.status in (404, 409):
                            break
                        log.warning("delete %s/%s: %s", ns, name, e.status)
                    except Exception as e:
                        log.warning("delete %s/%s: %r", ns, name, e)
                    await asyncio.sleep(min(0.5 * (i + 1), 5))
            log.info("pod %s/%s: deleted", ns, name)
        finally:
            if runner is not None:
                runner.cleanup_logs()
            self.pods.pop(uid, None)
            self.deleting.discard(uid)

    async def watch_loop(self) -> None:
        selector = f"spec.nodeName={self.node}"
        rv: str | None = None
        while not self.stop_event.is_set():
            try:
                if rv is None:
                    lst = await self.v1.list_pod_for_all_namespaces(field_selector=selector)
                    present = {p.metadata.uid for p in lst.items}
                    for uid, r in list(self.pods.items()):
                        if uid not in present:  # deleted while we were not watching
                            await self.on_pod(r.pod, deleted=True)
                    for p in lst.items:
                        await self.on_pod(p)
                    rv = lst.metadata.resource_version
                w = watch.Watch()
                async with w:
                    async for ev in w.stream(
                        self.v1.list_pod_for_all_namespaces,
                        field_selector=selector,
                        resource_version=rv,
                        timeout_seconds=self.args.watch_timeout,
                        allow_watch_bookmarks=True,
                    ):
                        typ, obj = ev["type"], ev["object"]
                        if typ == "BOOKMARK":
                            rv = (
                                obj.metadata.resource_version
                                if hasattr(obj, "metadata")
                                else obj["metadata"]["resourceVersion"]
                            )
                            continue
                        if obj.metadata and obj.metadata.resource_version:
                            rv = obj.metadata.resource_version
                        await self.on_pod(obj, deleted=(typ == "DELETED"))
                        if self.stop_event.is_set():
                            break
            except ApiException as e:
                if e.status == 410:
                    log.info("watch expired (410): relisting")
                else:
                    log.warning("watch error %s %s", e.status, e.reason)
                    await asyncio.sleep(1)
                rv = None
            except asyncio.CancelledError:
                raise
            except Exception as e:  # apiserver restarting (outage tests) etc.
                log.warning("watch failed: %r", e)
                rv = None
                try:
                    await asyncio.wait_for(self.stop_event.wait(), 1)
                except TimeoutError:
                    pass

    async def shutdown(self) -> None:
        runners = list(self.pods.values())
        for r in runners:
            r.stopping = True
            r.stop_reason = r.stop_reason or "Deleted"  # don't report: we are going away
        for pid in list(self.procs):
            self.kill_group(pid, signal.SIGTERM)
        t0 = time.monotonic()
        while self.procs and time.monotonic() - t0 < self.args.shutdown_grace:  # noqa: ASYNC110 (polling is simplest here)
            await asyncio.sleep(0.05)
        for pid in list(self.procs):
            self.kill_group(pid, signal.SIGKILL)
        await asyncio.sleep(0)

    async def main(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop_event.set)
        os.makedirs(os.path.join(self.state_dir, "pods"), exist_ok=True)
        cert, key = ensure_cert(self.state_dir, self.node, self.address)
        server = LogServer(self.address, self.port, cert, key, self.logs)
        server.start()
        await config.load_kube_config(config_file=self.args.kubeconfig)
        async with client.ApiClient() as api:
            self.v1 = client.CoreV1Api(api)
            while True:
                try:
                    await self.register()
                    break
                except Exception as e:
                    log.warning("node registration failed (%r), retrying", e)
                    try:
                        await asyncio.wait_for(self.stop_event.wait(), 1)
                        server.stop()
                        return
                    except TimeoutError:
                        pass
            log.info("node %s registered, logs on https://%s:%d", self.node, self.address, self.port)
            tasks = [asyncio.create_task(self.heartbeat_loop()), asyncio.create_task(self.watch_loop())]
            await self.stop_event.wait()
            log.info("stopping: killing %d job process group(s)", len(self.procs))
            await self.shutdown()
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for r in list(self.pods.values()):
                if r.task is not None:
                    r.task.cancel()
            server.stop()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kubeconfig", required=True)
    p.add_argument("--node", default="pdt-test-node")
    p.add_argument(
        "--address", default="127.0.0.1", help="InternalIP of the node and log server bind address"
    )
    p.add_argument("--port", type=int, default=10250, help="HTTPS log server port (kubeletEndpoint)")
    p.add_argument("--state-dir", default=None, help="container logs and TLS cert (default: a temp dir)")
    p.add_argument("--cpu", default="8")
    p.add_argument("--memory", default="32Gi")
    p.add_argument("--pods", type=int, default=110)
    p.add_argument("--label", action="append", help="extra node label k=v (repeatable)")
    p.add_argument("--heartbeat", type=float, default=10.0, help="seconds between node status heartbeats")
    p.add_argument("--watch-timeout", type=int, default=300, help="server-side watch timeout (seconds)")
    p.add_argument("--max-grace", type=float, default=10.0, help="cap on a deleted pod's TERM->KILL grace")
    p.add_argument(
        "--shutdown-grace", type=float, default=3.0, help="TERM->KILL grace when the kubelet stops"
    )
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    if args.state_dir is None:
        import tempfile

        args.state_dir = tempfile.mkdtemp(prefix="pdt-test-kubelet-")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("asyncio").setLevel(logging.WARNING)
    asyncio.run(Kubelet(args).main())


if __name__ == "__main__":
    main()
