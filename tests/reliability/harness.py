"""A reusable crash and outage harness for pipelines run as real subprocesses.

The pieces:

* :class:`Backend` and its subclasses set up one namespace of a pipeline's data (a local
  directory, an S3 prefix, a set of Mongo collections), seed the inputs, and read back
  everything the final checks need: outputs, job records, claims, and *debris* (hidden
  temporary files, in-progress S3 multipart uploads).
* :class:`TcpProxy` is a small asyncio TCP proxy that can be *cut* (new connections are
  refused, open ones dropped) and restored. It stands in for stopping a server whose
  data would not survive a restart (the Mongo test server keeps its data in memory).
* :class:`ChaosHarness` runs a pipeline script (``python SCRIPT run --json``), injects
  faults at random points (SIGKILL of the whole process group, or an outage of one
  server for a few seconds), restores what it broke, reruns until the pipeline reports
  nothing left to do, then checks the invariants (:meth:`ChaosHarness.check`).

Everything random comes from one ``random.Random(seed)``; every failure message carries
the seed, and ``PDT_RELIABILITY_SEED=<seed>`` replays a run.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
PIPELINES = Path(__file__).resolve().parent / "pipelines"
COUNTED = PIPELINES / "counted.py"
REMOTE = PIPELINES / "remote.py"
BUCKET = "pdt-reliability"


# ---------------------------------------------------------------- figures
@dataclass
class Figures:
    """What a reliability test counts; summed over rounds and written to the summary file."""

    rounds: int = 0
    faults: int = 0
    kills: int = 0
    outages: int = 0
    runs: int = 0
    jobs: int = 0
    duplicates: int = 0
    lost: int = 0
    #: faults injected while some job (or call of a batch) had started its work and not
    #: yet been recorded
    mid_work: int = 0

    def add(self, other: Figures) -> None:
        for name in self.__dataclass_fields__:
            setattr(self, name, getattr(self, name) + getattr(other, name))

    def as_dict(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in self.__dataclass_fields__}


def rounds_wanted(config: Any, quick: int) -> int:
    """Rounds per backend: ``PDT_RELIABILITY_ROUNDS``, else 20 with ``--reliability-full``, else ``quick``."""
    env = os.environ.get("PDT_RELIABILITY_ROUNDS")
    if env:
        return max(1, int(env))
    if config.getoption("--reliability-full", default=False):
        return 20
    return quick


def make_seed() -> int:
    env = os.environ.get("PDT_RELIABILITY_SEED")
    return int(env) if env else random.SystemRandom().randrange(1 << 32)


# ---------------------------------------------------------------- lines and processes
def count_lines(path: Path) -> Counter[str]:
    """``{key: number of lines}`` of a ``KEY PID`` log written by the pipeline script."""
    if not path.exists():
        return Counter()
    return Counter(line.split()[0] for line in path.read_text().splitlines() if line.strip())


def processes_with_env(marker: str) -> list[int]:
    """Pids of live processes whose environment contains ``marker`` (``NAME=value``)."""
    needle = marker.encode() + b"\0"
    found: list[int] = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry.name}/environ", "rb") as f:
                env = f.read() + b"\0"
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                state = f.read().rsplit(b")", 1)[1].split()[0]
        except OSError:
            continue
        if state != b"Z" and needle in env:
            found.append(int(entry.name))
    return found


def service_cmd(action: str, name: str, timeout: float = 90) -> None:
    """``bash scripts/test-services ACTION NAME`` (``start`` waits for readiness)."""
    subprocess.run(
        ["bash", str(ROOT / "scripts" / "test-services"), action, name],
        check=True,
        timeout=timeout,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


@dataclass
class RunResult:
    returncode: int | None
    stdout: str
    stderr: str
    killed: bool = False


async def start_script(script: Path, args: list[str], env: dict[str, str]) -> asyncio.subprocess.Process:
    """Start ``python script args`` in its own process group (so a kill takes its children too)."""
    return await asyncio.create_subprocess_exec(
        sys.executable,
        str(script),
        *args,
        env={**os.environ, **env},
        cwd=str(ROOT),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
    )


async def finish(proc: asyncio.subprocess.Process, timeout: float) -> RunResult:  # noqa: ASYNC109
    """Wait for ``proc`` (killing its group after ``timeout``) and collect its output."""
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        kill_group(proc.pid)
        out, err = await proc.communicate()
        return RunResult(proc.returncode, out.decode(), err.decode() + "\n[harness: timed out]", True)
    return RunResult(proc.returncode, out.decode(), err.decode())


def kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)


# ---------------------------------------------------------------- TCP proxy
class TcpProxy:
    """An asyncio TCP proxy on 127.0.0.1 that can be cut and restored.

    While cut, new connections are accepted and closed at once (the client sees a reset /
    EOF, as from a server that went away) and every open connection is dropped.
    """

    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.cut_now = False
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self.connections = 0
        self.refused = 0
        #: drop the connection instead of forwarding the server's reply to the next request
        #: that contains these bytes (e.g. ``b"insert"``); cleared once done
        self.drop_reply_to: bytes | None = None

    async def __aenter__(self) -> TcpProxy:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        self._drop_all()
        await self._server.wait_closed()

    def _drop_all(self) -> None:
        for writer in list(self._writers):
            transport = writer.transport
            transport.abort()
        self._writers.clear()

    def cut(self) -> None:
        self.cut_now = True
        self._drop_all()

    def restore(self) -> None:
        self.cut_now = False

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.cut_now:
            self.refused += 1
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            writer.transport.abort()
            return
        self.connections += 1
        self._writers.update((writer, up_writer))

        doomed = False

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter, replies: bool) -> None:
            nonlocal doomed
            try:
                while data := await src.read(65536):
                    if self.cut_now:
                        break
                    if not replies and self.drop_reply_to is not None and self.drop_reply_to in data:
                        self.drop_reply_to = None
                        doomed = True  # the request goes through; its reply will not
                    elif replies and doomed:
                        writer.transport.abort()
                        up_writer.transport.abort()
                        break
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                dst.transport.abort()

        try:
            await asyncio.gather(pump(reader, up_writer, False), pump(up_reader, writer, True))
        finally:
            self._writers.discard(writer)
            self._writers.discard(up_writer)


# ---------------------------------------------------------------- backends
@dataclass
class State:
    """What a backend holds after a run."""

    outputs: dict[str, bytes]
    records: dict[str, Any]
    claims: list[str]
    debris: list[str]
    other: list[str] = field(default_factory=list)  # anything outside the expected layout


class Backend:
    """One namespace of the counted pipeline's data on one kind of store."""

    name = "files"
    #: the server an outage stops (None: only kills)
    outage_service: str | None = None

    def __init__(self, data: Path, ns: str) -> None:
        self.data = data
        self.ns = ns
        #: where the ``done`` and ``live`` folders are
        self.state_dir = data / "state"

    def env(self) -> dict[str, str]:
        return {"PDT_REL_BACKEND": self.name, "PDT_REL_DATA": str(self.data), "PDT_REL_NS": self.ns}

    @staticmethod
    def text(key: str) -> bytes:
        return f"value of {key}\n".encode()

    async def seed(self, keys: list[str]) -> None:
        (self.data / "src").mkdir(parents=True, exist_ok=True)
        for key in keys:
            (self.data / "src" / f"{key}.txt").write_bytes(self.text(key))

    async def state(self) -> State:
        from pydatatask import YamlMetadataFileRepository

        out_dir = self.data / "out"
        outputs = {p.name[:-4]: p.read_bytes() for p in _visible(out_dir) if p.name.endswith(".txt")}
        records = {k: v async for k, v in YamlMetadataFileRepository(self.state_dir / "done").items()}
        claims = [p.name for p in _visible(self.state_dir / "live")]
        debris = [
            str(p.relative_to(self.data))
            for sub in ("out", "state")
            for p in (self.data / sub).rglob(".*")
            if p.name != ".pdt-lock"
        ]
        return State(outputs, records, claims, debris)

    async def outage(self, seconds: float) -> None:
        raise NotImplementedError

    async def leftovers(self) -> list[Problem]:
        """Backend-specific final checks (remote processes, pods); empty: all good."""
        return []

    async def aclose(self) -> None:
        pass


def _visible(folder: Path) -> list[Path]:
    if not folder.exists():
        return []
    return [p for p in folder.iterdir() if not p.name.startswith(".")]


def s3_client(conf: dict[str, Any]) -> Any:
    from aiobotocore.config import AioConfig
    from aiobotocore.session import get_session

    return get_session().create_client(
        "s3",
        endpoint_url=conf["endpoint"],
        aws_access_key_id=conf["access_key"],
        aws_secret_access_key=conf["secret_key"],
        region_name=conf.get("region", "us-east-1"),
        config=AioConfig(max_pool_connections=64, retries={"total_max_attempts": 3}),
    )


async def ensure_bucket(client: Any, bucket: str = BUCKET) -> None:
    try:
        await client.head_bucket(Bucket=bucket)
    except Exception:
        with contextlib.suppress(Exception):
            await client.create_bucket(Bucket=bucket)


async def s3_names(client: Any, bucket: str, prefix: str) -> list[str]:
    names: list[str] = []
    async for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        names.extend(obj["Key"] for obj in page.get("Contents", ()))
    return names


async def s3_uploads(client: Any, bucket: str, prefix: str) -> list[dict[str, Any]]:
    resp = await client.list_multipart_uploads(Bucket=bucket, Prefix=prefix)
    return list(resp.get("Uploads", ()))


async def s3_empty(client: Any, bucket: str, prefix: str) -> None:
    names = await s3_names(client, bucket, prefix)
    for start in range(0, len(names), 1000):
        batch = [{"Key": n} for n in names[start : start + 1000]]
        await client.delete_objects(Bucket=bucket, Delete={"Objects": batch, "Quiet": True})
    for up in await s3_uploads(client, bucket, prefix):
        await client.abort_multipart_upload(Bucket=bucket, Key=up["Key"], UploadId=up["UploadId"])


class S3Backend(Backend):
    """Inputs, outputs (multipart uploads), records and claims under ``s3://pdt-reliability/NS/``.

    An outage stops and starts the S3 server itself, or, with a ``proxy``, cuts the
    :class:`TcpProxy` the pipeline reaches it through (what a client sees of a restart,
    without restarting the server other tests share, and in a fraction of the time).
    """

    name = "s3"
    outage_service = "s3"

    def __init__(
        self, data: Path, ns: str, conf: dict[str, Any], client: Any, proxy: TcpProxy | None = None
    ) -> None:
        super().__init__(data, ns)
        self.conf = conf
        self.client = client  # direct to the server, for seeding and checks
        self.proxy = proxy

    def env(self) -> dict[str, str]:
        conf = {**self.conf, "bucket": BUCKET}
        if self.proxy is not None:
            conf["endpoint"] = f"http://127.0.0.1:{self.proxy.port}"
        return {**super().env(), "PDT_REL_S3": json.dumps(conf)}

    async def seed(self, keys: list[str]) -> None:
        await ensure_bucket(self.client)
        sem = asyncio.Semaphore(32)

        async def put(key: str) -> None:
            async with sem:
                await self.client.put_object(
                    Bucket=BUCKET, Key=f"{self.ns}/src/{key}.txt", Body=self.text(key)
                )

        await asyncio.gather(*(put(k) for k in keys))

    async def state(self) -> State:
        from pydatatask import YamlMetadataS3Repository

        names = await s3_names(self.client, BUCKET, f"{self.ns}/")
        outputs: dict[str, bytes] = {}
        claims: list[str] = []
        other: list[str] = []
        for name in names:
            rel = name[len(self.ns) + 1 :]
            folder, _, base = rel.partition("/")
            if folder == "out" and base.endswith(".txt"):
                body = await self.client.get_object(Bucket=BUCKET, Key=name)
                async with body["Body"] as stream:
                    outputs[base[:-4]] = await stream.read()
            elif folder == "live":
                claims.append(base)
            elif folder not in ("src", "done", "logs"):
                other.append(rel)
        done = YamlMetadataS3Repository(self.client, BUCKET, f"{self.ns}/done/")
        records = {k: v async for k, v in done.items()}
        debris = [f"multipart upload of {u['Key']}" for u in await s3_uploads(self.client, BUCKET, self.ns)]
        return State(outputs, records, claims, debris, other)

    async def outage(self, seconds: float) -> None:
        if self.proxy is not None:
            self.proxy.cut()
            try:
                await asyncio.sleep(seconds)
            finally:
                self.proxy.restore()
            return
        service_cmd("stop", "s3")
        try:
            await asyncio.sleep(seconds)
        finally:
            await asyncio.to_thread(service_cmd, "start", "s3")

    async def aclose(self) -> None:
        await s3_empty(self.client, BUCKET, f"{self.ns}/")


class MongoBackend(Backend):
    """Inputs, outputs, records and claims in Mongo collections ``NS_*``, reached through a proxy."""

    name = "mongo"
    outage_service = "mongo"

    def __init__(self, data: Path, ns: str, uri: str, proxy: TcpProxy, client: Any) -> None:
        super().__init__(data, ns)
        self.uri = uri
        self.proxy = proxy
        self.client = client  # direct to the server, for seeding and checks
        self.db = client["pdt_reliability"]

    def env(self) -> dict[str, str]:
        return {
            **super().env(),
            "PDT_REL_MONGO": f"mongodb://127.0.0.1:{self.proxy.port}/?directConnection=true",
        }

    async def seed(self, keys: list[str]) -> None:
        docs = [{"_id": k, "value": {"text": self.text(k).decode()}} for k in keys]
        for start in range(0, len(docs), 1000):
            await self.db[f"{self.ns}_src"].insert_many(docs[start : start + 1000])

    async def state(self) -> State:
        outputs = {d["_id"]: str(d["value"]["text"]).encode() async for d in self.db[f"{self.ns}_out"].find()}
        records = {d["_id"]: d["value"] async for d in self.db[f"{self.ns}_done"].find()}
        claims = [d["_id"] async for d in self.db[f"{self.ns}_live"].find()]
        names = await self.db.list_collection_names()
        expected = {f"{self.ns}_{n}" for n in ("src", "out", "done", "live")}
        other = [n for n in names if n.startswith(f"{self.ns}_") and n not in expected]
        return State(outputs, records, claims, [], other)

    async def outage(self, seconds: float) -> None:
        self.proxy.cut()
        try:
            await asyncio.sleep(seconds)
        finally:
            self.proxy.restore()

    async def aclose(self) -> None:
        for suffix in ("src", "out", "done", "live"):
            await self.db.drop_collection(f"{self.ns}_{suffix}")


# ---------------------------------------------------------------- remote executors
def _ss_pids(filter_expr: str) -> list[tuple[int, int]]:
    """``(local port, pid)`` of established TCP sockets matching an ``ss`` filter."""
    out = subprocess.run(
        ["ss", "-tnpH", "state", "established", filter_expr], capture_output=True, text=True, check=True
    ).stdout
    found: list[tuple[int, int]] = []
    for line in out.splitlines():
        fields = line.split()
        local = next((f for f in fields if f.count(":") >= 1 and f[0].isdigit()), "")
        port = int(local.rpartition(":")[2]) if local else 0
        found.extend((port, int(pid)) for pid in re.findall(r"pid=(\d+)", line))
    return found


class SshBackend(Backend):
    """The files layout, jobs run by a ``ProcessTask`` over an ``SSHHost`` (``pipelines/remote.py``).

    The job log ``runs.log`` is a symlink to a world-writable ``/tmp`` file the SSH user
    appends to (sshd runs on this machine). An outage stops sshd and kills the sshd
    processes that serve the pipeline's own connections (stopping sshd alone leaves
    established sessions alive), then starts sshd again.
    """

    name = "ssh"
    outage_service = "sshd"

    def __init__(self, data: Path, ns: str, conf: dict[str, Any]) -> None:
        super().__init__(data, ns)
        self.conf = conf
        self.state_dir = data / "state" / ns
        self.runs = Path(f"/tmp/pdt-rel-{ns}.runs")

    def env(self) -> dict[str, str]:
        return {
            **super().env(),
            "PDT_REL_EXEC": "ssh",
            "PDT_REL_RUNS": str(self.runs),
            "PDT_REL_SSH": json.dumps(self.conf),
        }

    async def seed(self, keys: list[str]) -> None:
        await super().seed(keys)
        self.runs.touch()
        self.runs.chmod(0o666)
        (self.data / "runs.log").symlink_to(self.runs)
        # the job reads its input and writes its output as the SSH user
        for sub in ("src", "out"):
            (self.data / sub).mkdir(exist_ok=True)
        os.chmod(self.data, 0o755)

    def _cut(self) -> int:
        pids = set(processes_with_env(f"PDT_REL_NS={self.ns}"))
        port = self.conf["port"]
        clients = [lport for lport, pid in _ss_pids(f"( dport = :{port} )") if pid in pids]
        killed = 0
        for cport in clients:
            for _, pid in _ss_pids(f"( sport = :{port} and dport = :{cport} )"):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                    killed += 1
        return killed

    async def outage(self, seconds: float) -> None:
        await asyncio.to_thread(service_cmd, "stop", "sshd")
        try:
            await asyncio.to_thread(self._cut)
            await asyncio.sleep(seconds)
        finally:
            await asyncio.to_thread(service_cmd, "start", "sshd")

    async def leftovers(self) -> list[Problem]:
        problems: list[Problem] = []
        left: list[str] = []
        for _ in range(50):  # a job killed with its connection may take a moment to go
            found = (
                await asyncio.to_thread(
                    subprocess.run,
                    ["pgrep", "-u", self.conf["user"], "-f", self.runs.name],
                    capture_output=True,
                    text=True,
                )
            ).stdout.split()
            left = [p for p in found if int(p) != os.getpid()]
            if not left:
                break
            await asyncio.sleep(0.1)
        if left:
            problems.append(Problem("job processes left on the SSH host", left))
        jobs = "/tmp/pdt-jobs"  # the SSHHost's workdir, local since sshd runs on this machine
        names = os.listdir(jobs) if os.path.isdir(jobs) else []  # noqa: ASYNC240 - instant
        dirs = sorted(n for n in names if n.startswith(f"{self.ns}."))
        if dirs:
            problems.append(Problem("job directories left on the SSH host", dirs))
        return problems

    async def aclose(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.runs.unlink()


class KubeBackend(Backend):
    """The files layout, jobs run as pods by a ``PodTask`` on a ``KubeExecutor``
    (``pipelines/remote.py``).

    The pipeline reaches kube-apiserver through a :class:`TcpProxy` (a kubeconfig copy with
    the proxy's port; the host stays 127.0.0.1, the name in the server's certificate);
    an outage cuts the proxy. The checks list pods directly, bypassing the proxy.
    """

    name = "kube"
    outage_service = "kube-apiserver"

    def __init__(self, data: Path, ns: str, conf: dict[str, Any], proxy: TcpProxy) -> None:
        super().__init__(data, ns)
        self.conf = conf
        self.proxy = proxy
        self.state_dir = data / "state" / ns
        self.kubeconfig = data / "kubeconfig"

    def env(self) -> dict[str, str]:
        return {
            **super().env(),
            "PDT_REL_EXEC": "kube",
            "PDT_REL_RUNS": str(self.data / "runs.log"),
            "PDT_REL_KUBECONFIG": str(self.kubeconfig),
        }

    async def seed(self, keys: list[str]) -> None:
        await super().seed(keys)
        upstream = self.conf["server"]
        text = Path(self.conf["kubeconfig"]).read_text()  # noqa: ASYNC240 - a small local file
        assert upstream in text, "the kubeconfig does not name the server of services.json"
        self.kubeconfig.write_text(text.replace(upstream, f"https://127.0.0.1:{self.proxy.port}"))

    async def outage(self, seconds: float) -> None:
        self.proxy.cut()
        try:
            await asyncio.sleep(seconds)
        finally:
            self.proxy.restore()

    async def pods(self) -> list[str]:
        from kubernetes_asyncio import client

        from pydatatask.executor.pods import api_client, label_value

        async with api_client(self.conf["kubeconfig"]) as api:
            result = await client.CoreV1Api(api).list_namespaced_pod(
                self.conf["namespace"], label_selector=f"pydatatask.io/task={label_value(self.ns)}"
            )
        return [p.metadata.name for p in result.items]

    async def leftovers(self) -> list[Problem]:
        left = await self.pods()
        for _ in range(50):  # a deleted pod may linger for a moment
            if not left:
                return []
            await asyncio.sleep(0.2)
            left = await self.pods()
        return [Problem("orphaned pods", left)] if left else []

    async def aclose(self) -> None:
        from kubernetes_asyncio import client

        from pydatatask.executor.pods import api_client

        async with api_client(self.conf["kubeconfig"]) as api:
            core = client.CoreV1Api(api)
            for name in await self.pods():
                with contextlib.suppress(Exception):
                    await core.delete_namespaced_pod(name, self.conf["namespace"], grace_period_seconds=0)
                with contextlib.suppress(Exception):  # the task's finalizer would keep it Terminating
                    await core.patch_namespaced_pod(
                        name, self.conf["namespace"], {"metadata": {"finalizers": None}}
                    )


@contextlib.asynccontextmanager
async def open_backend(
    kind: str, data: Path, ns: str, services: dict[str, Any] | None, *, s3_outage: str = "restart"
) -> AsyncIterator[Backend]:
    """A fresh backend namespace; its server-side data is removed at the end.
    ``s3_outage``: ``"restart"`` (stop and start the S3 server) or ``"cut"`` (a proxy)."""
    data.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 - a local tmp dir, instant
    if kind == "files":
        yield Backend(data, ns)
        return
    assert services is not None
    if kind == "s3":
        conf = {k: services["s3"][k] for k in ("endpoint", "access_key", "secret_key", "region")}
        async with s3_client(conf) as client, AsyncExitStack() as stack:
            proxy = None
            if s3_outage == "cut":
                host, _, port = conf["endpoint"].split("//", 1)[1].split("/", 1)[0].rpartition(":")
                proxy = await stack.enter_async_context(TcpProxy(host, int(port)))
            backend = S3Backend(data, ns, conf, client, proxy)
            try:
                yield backend
            finally:
                if proxy is None:
                    await ensure_service("s3")
                await backend.aclose()
        return
    if kind == "mongo":
        from pymongo import AsyncMongoClient

        uri = services["mongo"]["uri"]
        host, _, port = uri.split("//", 1)[1].split("/", 1)[0].rpartition(":")
        client: Any = AsyncMongoClient(uri, serverSelectionTimeoutMS=5000)
        try:
            async with TcpProxy(host, int(port)) as proxy:
                backend = MongoBackend(data, ns, uri, proxy, client)
                try:
                    yield backend
                finally:
                    await backend.aclose()
        finally:
            await client.close()
        return
    if kind == "ssh":
        backend = SshBackend(data, ns, dict(services["ssh"]))
        try:
            yield backend
        finally:
            await ensure_service("sshd")
            await backend.aclose()
        return
    if kind == "kube":
        conf = services["kube"]
        host, _, port = conf["server"].split("//", 1)[1].rpartition(":")
        async with TcpProxy(host, int(port)) as proxy:
            backend = KubeBackend(data, ns, conf, proxy)
            try:
                yield backend
            finally:
                await backend.aclose()
        return
    raise ValueError(kind)


async def ensure_service(name: str) -> None:
    """Start ``name`` again if a fault left it stopped (``start`` of a running service is a no-op)."""
    await asyncio.to_thread(service_cmd, "start", name)


# ---------------------------------------------------------------- the harness
@dataclass
class Problem:
    what: str
    keys: list[str]

    def __str__(self) -> str:
        sample = ", ".join(self.keys[:8]) + (" ..." if len(self.keys) > 8 else "")
        return f"{self.what} ({len(self.keys)}): {sample}"


class ChaosHarness:
    """Runs the counted pipeline over one backend namespace with random faults.

    :param backend: where the data lives.
    :param keys: the input keys (seeded by :meth:`prepare`).
    :param rng: the seeded random source.
    :param faults: which faults to choose from: ``"kill"`` and/or ``"outage"``.
    :param mid_work: whether a fault waits until some job has begun its work and is not
        recorded (None: each fault draws it, one in two).
    """

    def __init__(
        self,
        backend: Backend,
        keys: list[str],
        rng: random.Random,
        *,
        faults: tuple[str, ...] = ("kill", "outage"),
        script: Path = COUNTED,
        extra_env: dict[str, str] | None = None,
        run_timeout: float = 90.0,
        mid_work: bool | None = None,
    ) -> None:
        self.backend = backend
        self.keys = keys
        self.rng = rng
        self.faults = faults if backend.outage_service else tuple(f for f in faults if f != "outage")
        self.script = script
        self.env = {**backend.env(), **(extra_env or {})}
        self.run_timeout = run_timeout
        self.mid_work = mid_work
        self.figures = Figures()
        self.log: list[str] = []  # what happened, for failure messages

    @property
    def marker(self) -> str:
        return f"PDT_REL_NS={self.backend.ns}"

    async def prepare(self) -> None:
        await self.backend.seed(self.keys)

    async def run_once(self, fault: str | None) -> RunResult:
        """One ``run``; with ``fault``, inject it at a random point while the run goes on."""
        proc = await start_script(self.script, ["run", "--json"], self.env)
        self.figures.runs += 1
        if fault is None:
            result = await finish(proc, self.run_timeout)
            self.log.append(f"run -> {result.returncode}")
            return result
        delay = self.rng.uniform(0.3, self._latest_fault())
        waiter = asyncio.ensure_future(proc.wait())
        done, _ = await asyncio.wait({waiter}, timeout=delay)
        # the fault waits (up to 10 s) for some job to be under way: always with mid_work,
        # else one fault in two (the others land anywhere, start-up and recovery included:
        # on a loaded machine the start-up alone can outlast the drawn delay)
        wait = self.mid_work if self.mid_work is not None else self.rng.random() < 0.5
        deadline = time.monotonic() + 10
        while wait and not done and not self._work_under_way() and time.monotonic() < deadline:
            done, _ = await asyncio.wait({waiter}, timeout=0.02)
        if done:
            self.log.append(f"run ended before {fault} at {delay:.2f}s")
            return await finish(proc, self.run_timeout)
        self.figures.faults += 1
        if self._work_under_way():
            self.figures.mid_work += 1
        if fault == "kill":
            self.figures.kills += 1
            kill_group(proc.pid)
            self.log.append(f"SIGKILL at {delay:.2f}s")
            return await finish(proc, self.run_timeout)
        seconds = self.rng.uniform(1.0, 4.0)
        self.figures.outages += 1
        self.log.append(f"outage of {self.backend.outage_service} at {delay:.2f}s for {seconds:.1f}s")
        await self.backend.outage(seconds)
        result = await finish(proc, self.run_timeout)
        self.log.append(f"run after outage -> {result.returncode}")
        return result

    def _work_under_way(self) -> bool:
        """Whether some key's work has begun (``runs.log``) without its success being
        recorded (``done.log``) yet."""
        runs = count_lines(self.backend.data / "runs.log")
        done = count_lines(self.backend.data / "done.log")
        return any(n > done.get(k, 0) for k, n in runs.items())

    def _latest_fault(self) -> float:
        """The latest point (seconds after the start) a fault is drawn up to: about when the
        work of one run ends (start-up ~0.5 s, then the job batches), at most 1.5 s. A fixed
        1.5 s let fast backends finish every run before its fault (CI: mongo, 2 rounds, no
        fault injected)."""
        sleep = float(self.env.get("PDT_REL_SLEEP", "0.2"))
        concurrency = max(1, int(self.env.get("PDT_REL_CONCURRENCY", "8")))
        # a batched task's concurrency counts calls of up to PDT_REL_BATCH keys
        at_once = concurrency * max(1, int(self.env.get("PDT_REL_BATCH", "1")))
        work = -(-len(self.keys) // at_once) * sleep
        return max(0.4, min(1.5, 0.5 + work))

    async def complete(self) -> bool:
        """Whether every key has a success record and no claim is left."""
        state = await self.backend.state()
        return not state.claims and all(
            isinstance(state.records.get(k), dict) and state.records[k].get("success") for k in self.keys
        )

    async def round(self, n_faults: int, plan: tuple[str, ...] = ()) -> None:
        """Runs with ``n_faults`` faults (or, with a ``plan``, one run per fault it names, in
        its order; an outage where the backend has none is a kill), then clean runs until
        the work is complete."""
        if plan:
            chosen = [f if f in self.faults else "kill" for f in plan]
        else:
            chosen = [self.rng.choice(self.faults) for _ in range(n_faults)]
        for fault in chosen:
            await self.run_once(fault)
        for _attempt in range(6):
            result = await self.run_once(None)
            if result.returncode == 0 and await self.complete():
                return
            self.log.append(f"rerun needed: rc={result.returncode} stderr tail={result.stderr[-600:]!r}")
            await self._forget_outage_failures()
        state = await self.backend.state()
        unfinished = [k for k in self.keys if not (state.records.get(k) or {}).get("success")]
        raise AssertionError(
            f"the pipeline did not complete after 6 clean runs: {len(unfinished)} key(s) unfinished "
            f"{unfinished[:5]}, claims {state.claims[:5]}\nhistory: {self.log}"
        )

    async def _forget_outage_failures(self) -> None:
        """Delete failure records caused by an outage (what an operator does: ``rm`` and rerun)."""
        state = await self.backend.state()
        failed = [k for k, r in state.records.items() if isinstance(r, dict) and not r.get("success")]
        if failed:
            self.log.append(f"removing {len(failed)} failure record(s): {failed[:5]}")
            proc = await start_script(self.script, ["rm", "work.done", *failed], self.env)
            await finish(proc, 60)

    async def check(self) -> list[Problem]:
        """The final invariants; returns the problems found (empty: all good)."""
        state = await self.backend.state()
        problems: list[Problem] = []
        expected = set(self.keys)
        runs = count_lines(self.backend.data / "runs.log")
        done = count_lines(self.backend.data / "done.log")
        self.figures.jobs += sum(runs.values())
        lost = sorted(expected - set(state.outputs))
        self.figures.lost += len(lost)
        dup = sorted(k for k, n in done.items() if n > 1)
        self.figures.duplicates += len(dup)
        wrong = sorted(
            k for k in expected & set(state.outputs) if state.outputs[k] != self.backend.text(k).upper()
        )
        extra = sorted(set(state.outputs) - expected)
        bad_records = sorted(
            k
            for k in expected
            if not (isinstance(state.records.get(k), dict) and state.records[k].get("success"))
        )
        orphan_records = sorted(set(state.records) - set(state.outputs))
        for what, keys in (
            ("outputs lost", lost),
            ("jobs recorded as succeeded more than once", dup),
            ("outputs with wrong content (partial?)", wrong),
            ("outputs for unknown keys", extra),
            ("keys without a success record", bad_records),
            ("records without an output", orphan_records),
            ("claims left in live", sorted(state.claims)),
            ("debris (temporary files / in-progress uploads)", sorted(state.debris)),
            ("unexpected names", sorted(state.other)),
        ):
            if keys:
                problems.append(Problem(what, keys))
        orphans = processes_with_env(self.marker)
        if orphans:
            problems.append(Problem("orphaned processes", [str(p) for p in orphans]))
        problems.extend(await self.backend.leftovers())
        return problems


async def run_rounds(
    make: Callable[[int], Awaitable[tuple[ChaosHarness, Callable[[], Awaitable[None]]]]],
    rounds: int,
    seed: int,
    plan: tuple[str, ...] = (),
) -> Figures:
    """Run ``rounds`` rounds; ``make(i)`` gives round ``i``'s harness and its cleanup;
    ``plan``: the faults of every round (default: one or two, drawn at random)."""
    total = Figures()
    i = 0
    # extra rounds (at most 3) while no fault has landed yet: a run may end before its fault
    while i < rounds or (total.faults == 0 and i < rounds + 3):
        harness, cleanup = await make(i)
        try:
            await harness.prepare()
            await harness.round(harness.rng.randint(1, 2), plan)
            problems = await harness.check()
            harness.figures.rounds += 1
            total.add(harness.figures)
            if problems:
                raise AssertionError(
                    f"seed {seed} round {i}: " + "; ".join(map(str, problems)) + f"\nhistory: {harness.log}"
                )
        except AssertionError:
            raise
        except BaseException as exc:
            raise AssertionError(
                f"seed {seed} round {i}: {type(exc).__name__}: {exc}\nhistory: {harness.log}"
            ) from exc
        finally:
            await cleanup()
        i += 1
    return total


async def chaos_rounds(
    backend: str,
    workdir: Path,
    config: Any,
    figures: dict[str, Any],
    services: dict[str, Any] | None,
    *,
    keys: list[str],
    extra_env: Callable[[random.Random], dict[str, str]],
    script: Path = COUNTED,
    quick: int = 2,
    plan: tuple[str, ...] = (),
    s3_outage: str = "restart",
) -> None:
    """The randomized crash/outage test of one backend: seeded rounds (``quick`` in the
    quick mode), figures recorded, then asserts no duplicate, no lost output, at least one
    fault. ``plan`` fixes the faults of every round of the quick mode (see
    :meth:`ChaosHarness.round`), each waiting for a job under way; the long mode draws
    them at random. ``s3_outage``: see
    :func:`open_backend`."""
    rounds = rounds_wanted(config, quick=quick)
    if rounds_wanted(config, quick=0) != 0:
        plan = ()  # the long mode
    seed = make_seed()
    print(f"reliability seed {seed} ({rounds} rounds on {backend})")
    rng = random.Random(seed)
    figures.update(backend=backend, seed=seed)
    t0 = time.monotonic()

    async def make(i: int) -> tuple[ChaosHarness, Callable[[], Awaitable[None]]]:
        stack = AsyncExitStack()
        ns = f"chaos{uuid.uuid4().hex[:8]}"
        store = await stack.enter_async_context(
            open_backend(backend, workdir / f"r{i}", ns, services, s3_outage=s3_outage)
        )
        harness = ChaosHarness(
            store,
            keys,
            random.Random(rng.randrange(1 << 32)),
            script=script,
            extra_env=extra_env(rng),
            mid_work=True if plan else None,
        )
        return harness, stack.aclose

    total = await run_rounds(make, rounds, seed, plan)
    figures.update(total.as_dict(), seconds=round(time.monotonic() - t0, 1))
    assert total.rounds >= rounds
    assert total.duplicates == 0 and total.lost == 0
    assert total.faults >= 1, "no fault was injected (every run ended before its fault)"
    if plan:
        assert total.mid_work >= 1, "no fault landed while a job was under way"
