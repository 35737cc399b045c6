"""The page and /api never show credentials: the S3 secret of a pipeline whose jobs fail
through S3 (records, claims and logs on S3, one input read with a wrong secret)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.reliability.harness import BUCKET, ensure_bucket, s3_client, s3_empty
from tests.reliability.test_secrets import LEAKY, assert_absent, leaky_s3

from .test_cli_serve import Started


def fetch(url: str, path: str) -> str:
    with urllib.request.urlopen(url.split("#")[0].rstrip("/") + path, timeout=30) as r:
        return str(r.read().decode("utf-8"))


@pytest.mark.s3
async def test_s3_secret_never_in_the_page_or_the_api(services: dict[str, Any], tmp_path: Path) -> None:
    conf, real, bad, prefix, env = leaky_s3(services, tmp_path, "websecret")
    environ = {**os.environ, **env}
    async with s3_client(conf) as client:
        await ensure_bucket(client)
        try:
            run = subprocess.run(  # noqa: ASYNC221 - the server test needs the records first
                [sys.executable, str(LEAKY), "-vv", "run"],
                env=environ,
                capture_output=True,
                text=True,
                timeout=90,
            )
            assert run.returncode == 1, run.stderr[-2000:]
            served = Started(tmp_path, "-vv", "serve", "--port", "0", script=LEAKY, environ=environ)
            try:
                seen: dict[str, str] = {}
                for path in (
                    "/",
                    "/static/app.js",
                    "/api/status",
                    "/api/failures",
                    "/api/graph",
                    "/graph.svg",
                    "/metrics",
                ):
                    seen[path] = fetch(served.url, path)
                status = json.loads(seen["/api/status"])
                assert status["tasks"]["leaky"]["counts"]["failed"] == 2, status
                failures = json.loads(seen["/api/failures"])["failures"]
                assert "does not match" in " ".join(f["message"] for f in failures)
                for state in status["states"]:
                    seen[f"keys {state}"] = fetch(served.url, f"/api/keys?task=leaky&state={state}")
                for key in ("viabad", "k1"):
                    q = urllib.parse.urlencode({"task": "leaky", "key": key})
                    seen[f"job {key}"] = fetch(served.url, f"/api/job?{q}")
                    seen[f"log {key}"] = fetch(served.url, f"/api/log?{q}")
                assert "Traceback" in seen["job viabad"]
            finally:
                assert served.wait(15) == 143
            seen["serve stderr"] = served.stderr()
            for secret in (real, bad):
                assert_absent(secret, seen)
        finally:
            await s3_empty(client, BUCKET, prefix)
