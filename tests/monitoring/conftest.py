"""Shared fixtures of the monitoring tests."""

from __future__ import annotations

import os
import shutil

import pytest
from prometheus_client import CollectorRegistry

from monitoring.metrics import PrerankMetrics


def _require_tool(name: str) -> str:
    """Path of a binary; a skip normally, a failure when PRERANK_REQUIRE_SERVICES=1."""
    path = shutil.which(name)
    if path is None:
        message = f"{name} is not on PATH (Debian: apt-get install -y prometheus)"
        if os.environ.get("PRERANK_REQUIRE_SERVICES") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture
def metrics() -> PrerankMetrics:
    return PrerankMetrics(CollectorRegistry())


@pytest.fixture(scope="session")
def promtool() -> str:
    return _require_tool("promtool")


@pytest.fixture(scope="session")
def prometheus_binary() -> str:
    return _require_tool("prometheus")
