"""Shared fixtures. Real servers come from ``scripts/test-services up``, which writes a
``services.json`` whose path is in ``$PDT_TEST_SERVICES``. A test that needs a server and
finds none fails loudly; it is never skipped."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest


def _load_services() -> dict[str, Any] | None:
    path = os.environ.get("PDT_TEST_SERVICES")
    if not path:
        return None
    return json.loads(Path(path).read_text())  # type: ignore[no-any-return]


@pytest.fixture(scope="session")
def services() -> dict[str, Any]:
    """Connection details of the real test servers (see scripts/test-services)."""
    data = _load_services()
    if data is None:
        pytest.fail(
            "this test needs the real test servers: run `bash scripts/test-services install && "
            "eval $(bash scripts/test-services up)` (or use .ci/run), which sets PDT_TEST_SERVICES",
            pytrace=False,
        )
    return data


def service(services: dict[str, Any], name: str) -> dict[str, Any]:
    """One server's section of services.json, failing loudly if it is absent."""
    if name not in services:
        pytest.fail(f"test server {name!r} is not listed in $PDT_TEST_SERVICES", pytrace=False)
    return services[name]  # type: ignore[no-any-return]


@pytest.fixture
def kcfg(services: dict[str, Any]) -> dict[str, Any]:
    """The test Kubernetes cluster's section of services.json (kubeconfig, namespace, node)."""
    return service(services, "kube")
