"""Resources declared in a file, opened against the real test servers: S3 with credentials
from named environment variables, MongoDB from a URL variable, processes over SSH."""

from __future__ import annotations

import json
import textwrap
import uuid
from pathlib import Path
from typing import Any

import pytest

from pydatatask.cli.command import run_command
from pydatatask.config import load_pipeline
from tests.conftest import service

ROOT = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "pipeline.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def copy_value(key: str, src: Any) -> dict[str, Any]:
    return {"out": {"copied": src}}


@pytest.mark.mongo
async def test_mongo_resource_and_repository(services: dict[str, Any], tmp_path: Path) -> None:
    conf = service(services, "mongo")
    collection = f"t_{uuid.uuid4().hex[:10]}"
    path = write(
        tmp_path,
        f"""\
        python_path: [{ROOT}]
        resources:
          db: {{kind: mongo, url: "${{PDT_FILE_MONGO}}", timeout: 5s}}
        repositories:
          src: {{kind: memory_metadata}}
          out: {{kind: mongo, resource: db, database: pdt_files, collection: {collection}}}
        tasks:
          copy: {{kind: function, function: "tests.config.test_resources:copy_value", inputs: {{src: src}}, outputs: {{out: out}}}}
        """,
    )
    pipeline = load_pipeline(path, environ={"PDT_FILE_MONGO": conf["uri"]})
    src = pipeline.tasks["copy"].links["src"].repository
    await src.put("k1", {"n": 1})  # type: ignore[attr-defined]
    summary = await pipeline.run()
    assert summary.ok and summary.succeeded == 1
    out = pipeline.tasks["copy"].links["out"].repository
    async with pipeline.session:
        assert await out.get("k1") == {"copied": {"n": 1}}  # type: ignore[attr-defined]
        await out.collection.drop()  # type: ignore[attr-defined]


@pytest.mark.s3
def test_s3_credentials_from_named_variables(
    services: dict[str, Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    conf = service(services, "s3")
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("MY_KEY_ID", conf["access_key"])
    monkeypatch.setenv("MY_SECRET", conf["secret_key"])
    bucket = f"pdt-files-{uuid.uuid4().hex[:10]}"
    path = write(
        tmp_path,
        f"""\
        resources:
          store: {{kind: s3, endpoint: "{conf["endpoint"]}", region: "{conf.get("region", "us-east-1")}",
                   access_key_id: "${{MY_KEY_ID}}", secret_access_key: "${{MY_SECRET}}"}}
        repositories:
          out: {{kind: s3, resource: store, bucket: {bucket}, prefix: out/, create_bucket: true}}
        tasks:
          put: {{kind: process, command: "true", outputs: {{out: out}}}}
        """,
    )
    assert run_command(["-f", str(path), "inject", "put.out", "hello", str(path)]) == 0
    assert run_command(["-f", str(path), "ls", "put.out", "--json"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out) == ["hello"]
    assert run_command(["-f", str(path), "rm", "put.out", "hello"]) == 0
    assert run_command(["-f", str(path), "status", "--json"]) == 0
    captured = capsys.readouterr()
    assert conf["secret_key"] not in captured.out + captured.err
    # without the variables, nothing is tried: the error names the variable, not a value
    monkeypatch.delenv("MY_SECRET")
    assert run_command(["-f", str(path), "status"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(
        f"error: {path}:3:62: resources.store.secret_access_key: the environment variable MY_SECRET"
    )


@pytest.mark.ssh
def test_process_task_on_an_ssh_executor(
    services: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    conf = service(services, "ssh")
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.txt").write_text("over ssh\n")
    path = write(
        tmp_path,
        f"""\
        resources:
          box: {{kind: ssh, host: "{conf["host"]}", port: {conf["port"]}, username: {conf["user"]},
                 client_keys: ["{conf["client_key"]}"], known_hosts: "{conf["known_hosts"]}"}}
        repositories:
          src: {{kind: files, root: in, extension: .txt}}
          out: {{kind: files, root: out, extension: .txt}}
        executors:
          remote: {{kind: ssh, resource: box, cpus: 2, memory: 1Gi, workdir: /tmp/pdt-files-{uuid.uuid4().hex[:8]}}}
        tasks:
          shout:
            kind: process
            executor: remote
            command: "tr a-z A-Z < {{{{ src.path }}}} > {{{{ out.path }}}}"
            inputs: {{src: src}}
            outputs: {{out: out}}
        pipeline:
          state_dir: state
        """,
    )
    assert run_command(["validate", "-f", str(path)]) == 0
    assert capsys.readouterr().out == f"{path}: ok (1 task(s): shout)\n"
    assert run_command(["-f", str(path), "run", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["succeeded"] == 1, result
    assert (tmp_path / "out" / "a.txt").read_text() == "OVER SSH\n"
    record = (tmp_path / "state" / "shout" / "done" / "a.yaml").read_text()
    assert "host: remote" in record


@pytest.mark.kube
def test_pod_task_on_a_kubernetes_executor(
    services: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import secrets

    kcfg = service(services, "kube")
    (tmp_path / "in").mkdir()
    for key in ("p1", "p2"):
        (tmp_path / "in" / f"{key}.txt").write_text(key)
    (tmp_path / "pod.yaml").write_text(
        textwrap.dedent(
            """\
            spec:
              containers:
              - name: main
                image: busybox
                command: ["sh", "-c", 'echo "pod of $KEY" > "$OUT"']
                env:
                - {name: KEY, value: {{ key }}}
                - {name: OUT, value: {{ o.path }}}
            """
        )
    )
    name = "f" + secrets.token_hex(3)
    path = write(
        tmp_path,
        f"""\
        resources:
          cluster: {{kind: kubernetes, config_file: "{kcfg["kubeconfig"]}"}}
        repositories:
          src: {{kind: files, root: in, extension: .txt}}
          out: {{kind: files, root: out, extension: .txt}}
        executors:
          {name}: {{kind: kubernetes, resource: cluster, namespace: "{kcfg["namespace"]}", max_pods: 2}}
        tasks:
          {name}:
            kind: pod
            manifest_file: pod.yaml
            executor: {name}
            inputs: {{src: src}}
            outputs: {{o: out}}
            cpu: 100m
            memory: 64Mi
        pipeline:
          state_dir: state
        """,
    )
    assert run_command(["validate", "-f", str(path)]) == 0
    capsys.readouterr()
    assert run_command(["-f", str(path), "run", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["succeeded"] == 2, result
    assert (tmp_path / "out" / "p2.txt").read_text() == "pod of p2\n"
