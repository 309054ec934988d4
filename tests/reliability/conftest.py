"""Fixtures of the reliability suite.

Every test reports its figures (records sent, lost, duplicated, seconds to recover...) with
``measure(name, value)``: they land in the test report's ``user_properties``, which
``bench/reliability.py`` collects into the table of ``docs/reliability.md``.
"""

from __future__ import annotations

from contextlib import ExitStack

import pytest

from tests.reliability.harness import derive


@pytest.fixture()
def measure(record_property):
    def record(name: str, value) -> None:
        record_property(name, value)

    return record


@pytest.fixture()
def small_settings(stack_settings):
    """The test's stack settings with a small student, so a trainer learns in seconds."""
    return derive(stack_settings, model={"hidden_dim": 32, "output_dim": 16, "embedding_dim": 8})


@pytest.fixture()
def cleanup():
    """Stops whatever a test registers (workers, private services), last registered first."""
    with ExitStack() as stack:
        yield stack
