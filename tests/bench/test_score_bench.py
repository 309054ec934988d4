"""The in-process scoring benchmark runs end to end on the local Redis: its scorer agrees with the
naive path and the version switches during its timed run happen."""

from __future__ import annotations

import json

import pytest

from bench import score
from tests.conftest import need_service

pytestmark = pytest.mark.integration


def test_quick_score_bench_writes_its_figures_and_agrees_with_the_naive_top_k(base_settings, tmp_path):
    need_service("Redis", base_settings.stack.host, base_settings.stack.redis_port)
    need_service("Kafka", base_settings.stack.host, base_settings.stack.kafka_port)
    out = tmp_path / "score.json"
    assert score.main(["--quick", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["top_k_agree"] is True
    for key in ("p50_ms", "p99_ms", "p99_ms_with_switches", "naive_p99_ms", "speedup", "switch_p99_ratio"):
        assert result[key] > 0, key
    assert result["switches"] >= 1 and result["versions_served_during_switches"] >= 2
    assert result["speedup"] == result["naive_p99_ms"] / result["p99_ms"]
