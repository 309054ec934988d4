"""The examples in the monitoring modules' docstrings run and pass.

(pytest's ``--doctest-modules`` only reaches them when ``monitoring`` is on the command line
or in ``testpaths``; this keeps them checked either way.)
"""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = [
    "monitoring.buckets", "monitoring.metrics", "monitoring.lag", "monitoring.server",
    "monitoring.promql", "monitoring.dashboard", "monitoring.rules",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0, f"{name} has no examples"
    assert result.failed == 0
