"""Fixtures for the test-kubelet tests: they need the real servers started by `scripts/test-services up`."""

from __future__ import annotations

import json
import os

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "kube: needs the real kube-apiserver + test kubelet from scripts/test-services"
    )


@pytest.fixture(scope="session")
def kube_services() -> dict:
    """The `kube` section of $PDT_TEST_SERVICES (services.json). Fails, never skips, when it is missing."""
    path = os.environ.get("PDT_TEST_SERVICES")
    if not path:
        pytest.fail(
            "PDT_TEST_SERVICES is not set: run `bash scripts/test-services install && bash scripts/test-services up` "
            "and export the printed PDT_TEST_SERVICES=... before running these tests",
            pytrace=False,
        )
    try:
        with open(path) as f:
            services = json.load(f)
    except OSError as e:
        pytest.fail(
            f"PDT_TEST_SERVICES={path}: cannot read services.json ({e}); is `scripts/test-services up` done?",
            pytrace=False,
        )
    kube = services.get("kube")
    if not kube:
        pytest.fail(
            f"{path} has no 'kube' section: start the Kubernetes services (PDT_SERVICES must include 'kube')",
            pytrace=False,
        )
    return kube
