"""Credentials never leak: S3 secret, Mongo password, SSH key passphrase, Kubernetes token.

Each test drives a pipeline through failure paths with the credential in play, collects
everything the library produced - captured logs at DEBUG (every logger, client libraries
included), CLI stdout/stderr of ``-vv run --json`` and ``-vv status --json``, job records,
job logs, exception messages with their chained tracebacks - and greps it for the secret.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import subprocess
import sys
import traceback
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from pydatatask import Backoff, FileRepository, MemoryBlobRepository, MemoryMetadataRepository, Session
from pydatatask.pipeline import Pipeline
from pydatatask.task import FunctionTask

from .harness import BUCKET, ROOT, ensure_bucket, s3_client, s3_empty

LEAKY = ROOT / "tests" / "reliability" / "pipelines" / "leaky.py"


def assert_absent(secret: str, where: dict[str, str]) -> None:
    assert len(secret) >= 8
    leaks = [name for name, text in where.items() if secret in text]
    assert not leaks, f"the secret appears in: {leaks}"


def exc_text(exc: BaseException) -> str:
    return "".join(traceback.format_exception(exc))


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(LEAKY), "-vv", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=90,
        cwd=ROOT,
    )


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ---------------------------------------------------------------- S3
def leaky_s3(
    services: dict[str, Any], data: Path, label: str
) -> tuple[dict[str, Any], str, str, str, dict[str, str]]:
    """``leaky.py`` in its S3 mode over ``data`` (inputs ``viabad``, read with a wrong
    secret, and ``k1``): the S3 settings, the real secret, the wrong one, a fresh prefix
    (``LABEL...``) and the script's environment (added to ``os.environ``)."""
    conf = {k: services["s3"][k] for k in ("endpoint", "access_key", "secret_key", "region")}
    real, bad = conf["secret_key"], "BADSECRET-" + secrets.token_hex(8)
    prefix = f"{label}{uuid.uuid4().hex[:8]}/"
    (data / "src").mkdir()
    for k in ("viabad", "k1"):
        (data / "src" / f"{k}.txt").write_text("x")
    env = {
        "PDT_SEC_DATA": str(data),
        "PDT_SEC_MODE": "s3",
        "PDT_SEC_BAD_SECRET": bad,
        "PDT_SEC_S3": json.dumps({**conf, "bucket": BUCKET, "prefix": prefix}),
    }
    return conf, real, bad, prefix, env


@pytest.mark.s3
async def test_s3_secret_never_leaks(
    services: dict[str, Any], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    conf, real, bad, prefix, env = leaky_s3(services, tmp_path, "secret")
    async with s3_client(conf) as client:
        await ensure_bucket(client)
        try:
            run = cli(env, "run", "--json")
            status = cli(env, "status", "--json")
            assert run.returncode == 1 and "SignatureDoesNotMatch" in run.stderr, run.stderr[-2000:]
            assert status.returncode == 0, status.stderr
            assert json.loads(status.stdout)["leaky"]["counts"]["failed"] == 2
            stored: dict[str, str] = {}
            for name in await _names(client, prefix):
                obj = await client.get_object(Bucket=BUCKET, Key=name)
                async with obj["Body"] as body:
                    stored[name] = (await body.read()).decode()
            assert any("/done/" in n for n in stored) and any("/logs/" in n for n in stored)
            assert "does not match" in "".join(v for n, v in stored.items() if "viabad" in n)

            # in process: a refused signature, with every logger at DEBUG
            from pydatatask import RepositoryError, S3BucketRepository

            async with s3_client({**conf, "secret_key": bad}) as wrong:
                repo = S3BucketRepository(wrong, BUCKET, prefix, retry=Backoff(attempts=1))
                with pytest.raises(RepositoryError) as info:
                    await repo.write_bytes("k", b"x")
            for secret in (real, bad):
                assert_absent(
                    secret,
                    {
                        "run stdout": run.stdout,
                        "run stderr": run.stderr,
                        "status stdout": status.stdout,
                        "status stderr": status.stderr,
                        "records and logs on S3": json.dumps(stored),
                        "exception": exc_text(info.value),
                        "captured logs": caplog.text,
                    },
                )
        finally:
            await s3_empty(client, BUCKET, prefix)


async def _names(client: Any, prefix: str) -> list[str]:
    from .harness import s3_names

    return await s3_names(client, BUCKET, prefix)


# ---------------------------------------------------------------- Mongo
@pytest.mark.mongo
async def test_mongo_password_never_leaks(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from pymongo import AsyncMongoClient

    from pydatatask import BackendUnavailableError, MongoMetadataRepository

    caplog.set_level(logging.DEBUG)
    password = "SECRETPASS-" + secrets.token_hex(8)
    uri = f"mongodb://pdtuser:{password}@127.0.0.1:{free_port()}/?authSource=admin"
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "k1.txt").write_text("x")
    env = {"PDT_SEC_DATA": str(tmp_path), "PDT_SEC_MODE": "mongo", "PDT_SEC_MONGO": uri}
    run = cli(env, "run", "--json")
    status = cli(env, "status", "--json")
    assert run.returncode == 1 and "unavailable" in run.stderr, run.stderr[-2000:]
    assert status.returncode == 1 and "unavailable" in status.stderr

    client: Any = AsyncMongoClient(uri, serverSelectionTimeoutMS=300)
    try:
        done = MongoMetadataRepository(client["db"]["done"], retry=Backoff(attempts=2, initial=0.05))

        async def job(key: str) -> None:
            pass

        src = FileRepository(tmp_path / "src", ".txt")
        pipeline = Pipeline([FunctionTask("t", job, inputs={"src": src}, done=done)])
        with pytest.raises(BackendUnavailableError) as info:
            await pipeline.run()
        with pytest.raises(BackendUnavailableError) as info2:
            await done.put("k", {"v": 1})
    finally:
        await client.close()
    assert "127.0.0.1" in str(info.value)
    assert_absent(
        password,
        {
            "run stdout": run.stdout,
            "run stderr": run.stderr,
            "status stdout": status.stdout,
            "status stderr": status.stderr,
            "pipeline exception": exc_text(info.value),
            "put exception": exc_text(info2.value),
            "captured logs": caplog.text,
        },
    )


# ---------------------------------------------------------------- SSH key passphrase
@pytest.mark.ssh
async def test_ssh_key_passphrase_never_leaks(
    services: dict[str, Any], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import asyncssh

    from pydatatask import ProcessTask
    from pydatatask.executor import SSHHost

    caplog.set_level(logging.DEBUG)
    ssh = services["ssh"]
    passphrase = "PASSPHRASE-" + secrets.token_hex(8)
    key = asyncssh.generate_private_key("ssh-ed25519")
    key_path = tmp_path / "id_protected"
    key.write_private_key(str(key_path), "pkcs8-pem", passphrase=passphrase)
    os.chmod(key_path, 0o600)

    def connect(phrase: str) -> Any:
        async def factory() -> Any:
            return await asyncssh.connect(
                ssh["host"],
                port=int(ssh["port"]),
                username=ssh["user"],
                client_keys=[str(key_path)],
                passphrase=phrase,
                known_hosts=ssh["known_hosts"],
            )

        return factory

    src = MemoryBlobRepository()
    await src.write_bytes("k1", b"x")
    records: list[Any] = []
    logs = MemoryBlobRepository()
    errors: list[str] = []
    # the right passphrase on a key the server does not accept, then a wrong passphrase
    for phrase in (passphrase, "wrong-" + passphrase[::-1]):
        done = MemoryMetadataRepository()
        host = SSHHost(connect=connect(phrase), name="locked", retry_interval="0.2s")
        task = ProcessTask(
            "p", "echo {{ key }}", executor=host, inputs={"src": src}, done=done, logs=logs, timeout="15s"
        )
        try:
            summary = await Pipeline([task]).run(timeout="30s")
            errors.extend(summary.errors)
        except Exception as exc:
            errors.append(exc_text(exc))
        records.extend([v async for _, v in done.items()])
    log_texts = [await logs.read_text(k) for k in await logs.keys()]
    assert records or errors, "the failure left no trace at all"
    assert_absent(
        passphrase,
        {
            "records": json.dumps(records, default=str),
            "errors": "\n".join(errors),
            "job logs": "\n".join(log_texts),
            "captured logs": caplog.text,
        },
    )


# ---------------------------------------------------------------- Kubernetes token
@pytest.mark.kube
async def test_kube_token_never_leaks(
    services: dict[str, Any], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from pydatatask.executor.kubernetes import KubeExecutor
    from pydatatask.executor.pods import KubeCluster, api_client
    from pydatatask.task import PodTask

    caplog.set_level(logging.DEBUG)
    kube = services["kube"]
    token = Path(kube["token_file"]).read_text().strip()  # noqa: ASYNC240
    session = Session()

    @session.resource
    async def api() -> AsyncIterator[Any]:
        async with api_client(kube["kubeconfig"]) as client:
            yield client

    src = MemoryBlobRepository()
    for k in ("k1", "k2"):
        await src.write_bytes(k, b"x")
    done, logs = MemoryMetadataRepository(), MemoryBlobRepository()
    pod = (
        "spec:\n  containers:\n  - name: main\n    image: busybox\n"
        '    command: ["sh", "-c", {{ params.script }}]\n'
    )
    params = {"script": "echo failing >&2; exit 3"}
    tasks = [
        PodTask(
            "kfail",
            pod,
            params=params,
            executor=KubeExecutor(KubeCluster(api, namespace=kube["namespace"]), name="kfail"),
            inputs={"src": src},
            done=done,
            logs=logs,
            timeout="40s",
        ),
    ]
    nowhere = MemoryMetadataRepository()
    tasks.append(
        PodTask(
            "knons",
            pod,
            params=params,
            executor=KubeExecutor(
                KubeCluster(api, namespace="no-such-ns-" + uuid.uuid4().hex[:6], retry=Backoff(attempts=1)),
                name="knons",
            ),
            inputs={"src": src},
            done=nowhere,
            timeout="20s",
        )
    )
    errors: list[str] = []
    try:
        summary = await asyncio.wait_for(Pipeline(tasks, session, poll_interval="0.5s").run(), 100)
        errors.extend(summary.errors)
    except Exception as exc:
        errors.append(exc_text(exc))
    records = [v async for _, v in done.items()] + [v async for _, v in nowhere.items()]
    assert records, errors
    assert any(not r["success"] for r in records)
    log_texts = [await logs.read_text(k) for k in await logs.keys()]
    assert_absent(
        token,
        {
            "records": json.dumps(records, default=str),
            "errors": "\n".join(errors),
            "job logs": "\n".join(log_texts),
            "captured logs": caplog.text,
        },
    )
