"""A short run of :mod:`bench.load` (the 60 s run: ``python -m bench.reliability --long``).

Under a steady rate every request is answered with a bounded latency and the worker's memory
stays flat; under overload nothing is lost or shed, memory stays flat (the backlog waits in
Kafka, not in the worker) and the backlog drains afterwards.
"""

from __future__ import annotations

import pytest

from bench.load import LoadConfig, run

pytestmark = pytest.mark.integration


def test_sustained_load_then_overload_loses_nothing_and_memory_stays_flat(stack_settings, measure):
    config = LoadConfig(rate=10, duration_s=12, overload_factor=3, overload_s=5, warmup_s=3, candidates=200,
                        n_items=2000, drain_timeout_s=120)
    result = run(config, settings=stack_settings)
    sustained, overload = result["phases"]["sustained"], result["phases"]["overload"]
    for name, phase in (("sustained", sustained), ("overload", overload)):
        for figure in ("sent", "lost", "p50_ms", "p99_ms", "rss_mb_max", "backlog_max"):
            measure(f"{name}_{figure}", phase[figure])
    measure("drain_s_after_overload", result["drain_s_after_overload"])
    assert sustained["lost"] == 0 and overload["lost"] == 0 and result["error_answers"] == 0
    assert sustained["p99_ms"] < 2000
    assert sustained["rss_mb_max"] - sustained["rss_mb_first"] < 64  # no growth at a steady rate
    assert overload["rss_mb_max"] - sustained["rss_mb_max"] < 64  # the backlog is not held in memory
    # 5 s of requests at 3x the measured capacity, sent at once: ~15 s of work queued at its peak.
    assert overload["backlog_max"] > result["capacity_per_s"] and result["drain_s_after_overload"] is not None
