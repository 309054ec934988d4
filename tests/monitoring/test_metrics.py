"""PrerankMetrics: names, units, buckets, label sets, helpers and the /metrics exposition."""

from __future__ import annotations

import random
import urllib.request

import pytest
from prometheus_client import REGISTRY, CollectorRegistry, Histogram
from prometheus_client.parser import text_string_to_metric_families

from monitoring import buckets
from monitoring.exceptions import UnknownLabelValueError
from monitoring.metrics import (
    CACHE_TIERS,
    JOIN_EVENTS,
    PrerankMetrics,
    exposed_sample_names,
    metrics_from_default_registry,
)
from monitoring.server import serve_metrics

# Gauges and histograms whose value is a count or a dimensionless number by nature.
UNITLESS = {
    "prerank_scorer_candidates", "prerank_trainer_loss", "prerank_embedding_rows",
    "prerank_model_version",
}
UNIT_SUFFIXES = ("_seconds", "_bytes", "_ratio", "_messages", "_requests")

# What the issue asks to be measured, by exposed family name.
REQUIRED_FAMILIES = {
    "prerank_scorer_latency_seconds", "prerank_scorer_candidates", "prerank_scorer_item_vectors",
    "prerank_scorer_requests", "prerank_scorer_errors", "prerank_trainer_samples",
    "prerank_trainer_loss", "prerank_trainer_progressive_auc_ratio", "prerank_trainer_batch_seconds",
    "prerank_consistency_recall_ratio", "prerank_embedding_rows", "prerank_embedding_zero_rows_ratio",
    "prerank_embedding_admissions", "prerank_embedding_evictions", "prerank_model_version",
    "prerank_model_version_age_seconds", "prerank_publish_duration_seconds",
    "prerank_published_items", "prerank_freshness_seconds", "prerank_joiner_events",
    "prerank_dead_letters", "prerank_consumer_lag_messages",
}


def families(metrics: PrerankMetrics) -> dict:
    return {family.name: family for family in metrics.registry.collect()}


def test_every_required_metric_exists(metrics):
    assert REQUIRED_FAMILIES <= set(families(metrics))


def test_names_carry_prefix_and_unit(metrics):
    for name, family in families(metrics).items():
        assert name.startswith("prerank_"), name
        if family.type == "counter":
            assert f"{name}_total" in exposed_sample_names(metrics), name
        elif name not in UNITLESS:
            assert name.endswith(UNIT_SUFFIXES), f"{name} has no unit suffix"


def test_histograms_use_the_explicit_buckets(metrics):
    expected = {
        "prerank_scorer_latency_seconds": buckets.SCORER_LATENCY_SECONDS,
        "prerank_scorer_candidates": buckets.CANDIDATES_PER_REQUEST,
        "prerank_trainer_batch_seconds": buckets.TRAINER_BATCH_SECONDS,
        "prerank_publish_duration_seconds": buckets.PUBLISH_SECONDS,
        "prerank_freshness_seconds": buckets.FRESHNESS_SECONDS,
    }
    histograms = {n: f for n, f in families(metrics).items() if f.type == "histogram"}
    assert set(histograms) == set(expected)
    for name, family in histograms.items():
        edges = [float(s.labels["le"]) for s in family.samples if s.name.endswith("_bucket")]
        assert edges == [float(e) for e in expected[name]] + [float("inf")], name
        assert tuple(expected[name]) != Histogram.DEFAULT_BUCKETS


def test_scorer_latency_buckets_bracket_the_targets():
    edges = buckets.SCORER_LATENCY_SECONDS
    assert edges[0] <= 0.00025 and edges[-1] >= 0.1
    assert {0.002, 0.01, 0.025} <= set(edges)  # warm target, alert threshold, Kafka target
    assert 5.0 in buckets.FRESHNESS_SECONDS and buckets.FRESHNESS_SECONDS[0] <= 0.1


def test_bucket_counts_match_a_brute_force_count(metrics):
    rng = random.Random(7)
    values = [rng.lognormvariate(-7, 1.2) for _ in range(500)]
    for value in values:
        metrics.scorer_latency_seconds.observe(value)
    registry = metrics.registry
    for edge in buckets.SCORER_LATENCY_SECONDS:
        got = registry.get_sample_value("prerank_scorer_latency_seconds_bucket", {"le": str(edge)})
        assert got == sum(v <= edge for v in values), edge
    assert registry.get_sample_value("prerank_scorer_latency_seconds_sum") == pytest.approx(sum(values))


def test_closed_label_sets_exist_at_zero(metrics):
    registry = metrics.registry
    for tier in CACHE_TIERS:
        assert registry.get_sample_value("prerank_scorer_item_vectors_total", {"tier": tier}) == 0.0
    for event in JOIN_EVENTS:
        assert registry.get_sample_value("prerank_joiner_events_total", {"event": event}) == 0.0


def test_item_vectors_by_tier(metrics):
    metrics.observe_item_vectors(local=950, computed=50)
    metrics.observe_item_vectors(local=1, computed=2)
    got = {t: metrics.registry.get_sample_value("prerank_scorer_item_vectors_total", {"tier": t})
           for t in CACHE_TIERS}
    assert got == {"local": 951.0, "computed": 52.0}
    with pytest.raises(ValueError, match="computed"):
        metrics.observe_item_vectors(local=1, computed=-1)


def test_checked_labels_reject_unknown_values(metrics):
    with pytest.raises(UnknownLabelValueError):
        metrics.set_progressive_auc("like", 0.7)
    with pytest.raises(UnknownLabelValueError):
        metrics.count_join_event("early")
    with pytest.raises(UnknownLabelValueError):
        metrics.set_model_version("ranker", 3, 0.0)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        metrics.set_progressive_auc("click", 1.2)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        metrics.set_consistency_recall(50, -0.1)


def test_join_events_and_auc(metrics):
    metrics.count_join_event("late", 3)
    metrics.count_join_event("late")
    metrics.set_progressive_auc("long_view", 0.71)
    registry = metrics.registry
    assert registry.get_sample_value("prerank_joiner_events_total", {"event": "late"}) == 4.0
    assert registry.get_sample_value("prerank_trainer_progressive_auc_ratio", {"label": "long_view"}) == 0.71


def test_model_version_age_follows_the_clock(metrics):
    now = [5_000.0]
    timed = PrerankMetrics(CollectorRegistry(), clock=lambda: now[0])
    timed.set_model_version("publisher", 12, created_at_s=4_990.5)
    registry = timed.registry
    assert registry.get_sample_value("prerank_model_version", {"agent": "publisher"}) == 12.0
    assert registry.get_sample_value("prerank_model_version_age_seconds", {"agent": "publisher"}) == 9.5
    now[0] += 60
    assert registry.get_sample_value("prerank_model_version_age_seconds", {"agent": "publisher"}) == 69.5
    timed.set_model_version("publisher", 13, created_at_s=5_058.5)  # now is 5,060
    assert registry.get_sample_value("prerank_model_version_age_seconds", {"agent": "publisher"}) == 1.5
    now[0] = 0.0  # a clock behind the version (skew between hosts) reads as age 0, not negative
    assert registry.get_sample_value("prerank_model_version_age_seconds", {"agent": "publisher"}) == 0.0
    with pytest.raises(TypeError):
        timed.set_model_version("publisher", "14", 0.0)


def test_registry_is_checked_and_names_register_once():
    with pytest.raises(TypeError, match="CollectorRegistry"):
        PrerankMetrics(registry=None)
    registry = CollectorRegistry()
    PrerankMetrics(registry)
    with pytest.raises(ValueError, match="Duplicated"):
        PrerankMetrics(registry)


def test_default_registry_metrics_are_created_once():
    first = metrics_from_default_registry()
    assert first is metrics_from_default_registry()
    assert first.registry is REGISTRY


def test_exposed_names_cover_labelled_families_without_children(metrics):
    names = exposed_sample_names(metrics)
    assert {"prerank_dead_letters_total", "prerank_consumer_lag_messages",
            "prerank_freshness_seconds_bucket", "prerank_freshness_seconds_count"} <= names
    assert "prerank_dead_letters" not in names


def test_metrics_endpoint_serves_what_was_recorded(metrics):
    metrics.scorer_requests_total.inc(3)
    metrics.dead_letters_total.labels(topic="prerank.impressions", reason="schema").inc()
    metrics.set_consistency_recall(200, 0.5)
    server = serve_metrics(metrics.registry, port=0)
    try:
        body = urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=5).read()
    finally:
        server.close()
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(body.decode())
        for s in family.samples
    }
    assert samples[("prerank_scorer_requests_total", ())] == 3.0
    assert samples[("prerank_dead_letters_total",
                    (("reason", "schema"), ("topic", "prerank.impressions")))] == 1.0
    assert samples[("prerank_consistency_recall_ratio", (("k", "200"),))] == 0.5


def test_a_port_out_of_range_is_refused():
    with pytest.raises(ValueError):
        serve_metrics(CollectorRegistry(), port=70_000)


def test_dead_letter_reasons_are_a_closed_set(metrics):
    from monitoring.metrics import DEAD_LETTER_REASONS, WORKER_AGENTS

    for reason in DEAD_LETTER_REASONS:
        metrics.count_dead_letter("prerank.impressions", reason)
    with pytest.raises(UnknownLabelValueError):
        metrics.count_dead_letter("prerank.impressions", "injected_0: Extra inputs are not permitted")
    with pytest.raises(UnknownLabelValueError):
        metrics.count_dead_letter("prerank.impressions", "record of 7000000 bytes exceeds 4194304")
    series = [s for f in metrics.registry.collect() if f.name == "prerank_dead_letters" for s in f.samples
              if s.name == "prerank_dead_letters_total"]
    assert {s.labels["reason"] for s in series} == set(DEAD_LETTER_REASONS)
    for agent in WORKER_AGENTS:  # the survival counters exist at zero for every agent
        assert metrics.registry.get_sample_value("prerank_agent_errors_total", {"agent": agent}) == 0.0
    metrics.count_agent_error("joiner")
    metrics.count_dead_letter_failure("scorer")
    assert metrics.registry.get_sample_value("prerank_agent_errors_total", {"agent": "joiner"}) == 1.0
    with pytest.raises(UnknownLabelValueError):
        metrics.count_agent_error("somebody")


def test_reason_classes_map_every_codec_error_to_the_closed_set():
    from agents.app import reason_class
    from monitoring.metrics import DEAD_LETTER_REASONS
    from streams.impressions import CODEC
    from streams.exceptions import RecordError

    bad = [None, b"x" * (4 * 1024 * 1024 + 1), b"\xff", b"{not json", b"[1]", b'{"v": 2}', b'{"v": true}',
           b'{"v": 1, "request_id": "r"}', b'{"v": 1, "' + b"f" * 5000 + b'": 1}']
    reasons = []
    for raw in bad:
        with pytest.raises(RecordError) as caught:
            CODEC.decode(raw, topic="t", partition=0, offset=1)
        reasons.append(reason_class(caught.value))
    assert set(reasons) <= set(DEAD_LETTER_REASONS)
    assert reasons[:3] == ["tombstone", "too_large", "invalid_json"] and reasons[5:7] == ["version", "version"]
    assert reasons[-1] in ("unknown_field", "schema")
