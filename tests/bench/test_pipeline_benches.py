"""Smoke runs of the pipeline benchmarks (``--quick``) on the real local stack.

Each bench runs as a child process, as ``prerank bench NAME`` would, and its JSON is checked
against bounds that hold whatever the machine's speed: physics of the pipeline (nothing is
fresher than its join window), exact counts (every request answered, every sample learned once),
and the bench's own cleanup.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from core.kafka import kafka_python_options
from core.redis import redis_client
from tests.conftest import need_service

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture()
def stack(base_settings):
    need_service("Kafka", base_settings.stack.host, base_settings.stack.kafka_port)
    need_service("Redis", base_settings.stack.host, base_settings.stack.redis_port)
    return base_settings


def run_bench(module: str, tmp_path: Path, *args: str) -> dict:
    out = tmp_path / "result.json"
    # A deadline, not a speed claim: a quick bench takes ~40 s alone, several times that on a
    # machine shared with other work.
    done = subprocess.run(
        [sys.executable, "-m", module, "--quick", "--json", str(out), *args],
        cwd=REPO, capture_output=True, text=True, timeout=540,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert json.loads(done.stdout) == result  # printed and written alike
    return result


def assert_cleaned_up(settings, prefix: str) -> None:
    from kafka.admin import KafkaAdminClient

    admin = KafkaAdminClient(**kafka_python_options(settings.kafka))
    try:
        left = [name for name in admin.list_topics() if name.startswith(prefix)]
    finally:
        admin.close()
    assert left == []
    client = redis_client(settings.redis)
    assert list(client.scan_iter(match=f"{prefix.rstrip('.')}:*")) == []


def test_freshness_quick(stack, tmp_path):
    result = run_bench("bench.freshness", tmp_path)
    assert result["n"] == 10 and result["missed"] == 0
    assert 0 < result["p50_s"] <= result["p95_s"] <= result["max_s"]
    # The full path waits for the join window to close, so it can never beat it...
    assert result["join_s"]["p50_s"] >= result["join_window_s"]
    assert result["p50_s"] > result["join_window_s"]
    # ...and is the trainer-side path plus that wait.
    direct = result["training_samples_path"]
    assert direct["missed"] == 0 and direct["n"] == 4
    assert direct["p50_s"] < result["p50_s"]
    assert result["after_join_s"]["p50_s"] > 0
    assert result["versions_seen"] >= 2  # each probe needed a newer version than the one before
    assert_cleaned_up(stack, result["run_prefix"])


@pytest.mark.parametrize("workers", [1, 2])
def test_scoring_topic_quick(stack, tmp_path, workers):
    """One scorer, or two in one consumer group (the step starts once both have answered)."""
    result = run_bench("bench.scoring_topic", tmp_path, "--workers", str(workers))
    assert result["scorer_workers"] == workers
    assert result["sent"] == result["answered"] == 250 and result["errors"] == 0
    assert 0 < result["p50_ms"] <= result["p99_ms"] <= result["max_ms"]
    assert result["versions_served"] == [result["model_version"]]
    # every candidate came from the hot set the version published: all resident, none computed
    assert result["cache_tiers"] == {"local": 250 * 1000, "computed": 0}
    # the worker's CPU per request, split by stage from its own counters, covers the stages it times
    breakdown = result["cpu_breakdown"]
    assert all(breakdown[stage] > 0 for stage in ("decode", "user_tower", "item_vectors", "encode"))
    assert 0 < breakdown["total_staged"] <= breakdown["worker_process"]
    assert 0 < result["cpu_share"]["worker"] and 0 < result["cpu_share"]["load_generator"]
    assert_cleaned_up(stack, result["run_prefix"])


def test_streaming_overhead_quick(stack, tmp_path):
    result = run_bench("bench.streaming_overhead", tmp_path)
    assert result["samples"] == 300 * 20
    assert result["kafka_samples_learned"] == [result["samples"]] * 2  # every sample exactly once, both Kafka arms
    runs = result["samples_per_s_runs"]
    assert all(rate > 0 for rates in runs.values() for rate in rates)
    assert result["overhead"] == pytest.approx(1 - runs["kafka"][0] / runs["memory"][0])
    assert set(result["trainer_step_ms"]) == {"decode", "convert", "progressive_auc", "learn"}
    assert all(ms > 0 for ms in result["trainer_step_ms"].values())
    assert_cleaned_up(stack, result["run_prefix"])


def test_trainer_group_quick(stack, tmp_path):
    """One trainer and a group of two learn the same stream through the broker to the last record."""
    result = run_bench("bench.trainer_group", tmp_path)
    for arm, world_size in (("single", 1), ("group", 2)):
        figures = result[arm]
        assert figures["world_size"] == world_size and figures["records"] == 400
        assert 0.0 <= figures["long_view_auc"] <= 1.0 and 0.0 <= figures["recall_at_100"] <= 1.0
        assert figures["evaluated_exposures"] == result["single"]["evaluated_exposures"] > 0  # the same held-out set
        assert figures["records_per_s"] > 0
        assert_cleaned_up(stack, figures["run_prefix"])
    assert result["long_view_auc_abs_diff"] == pytest.approx(
        abs(result["group"]["long_view_auc"] - result["single"]["long_view_auc"]))


def test_train_bench_with_a_group_of_two(tmp_path):
    result = run_bench("bench.train", tmp_path, "--world-size", "2")
    assert result["world_size"] == 2 and len(result["ranks"]) == 2
    assert result["speedup"] == pytest.approx(result["samples_per_s"] / result["single_samples_per_s"])
    assert all(rank["samples"] == 10 * 32 * 20 for rank in result["ranks"])
