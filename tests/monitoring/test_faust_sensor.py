"""Faust's Prometheus sensor registers on the worker's registry, beside PrerankMetrics."""

from __future__ import annotations

from types import SimpleNamespace

import faust
from faust.sensors.prometheus import PrometheusMonitor
from faust.types import TP
from prometheus_client import CollectorRegistry

from monitoring.faust_sensor import FAUST_PREFIX, enable_faust_sensor
from monitoring.metrics import PrerankMetrics, exposed_sample_names


def test_sensor_shares_the_registry():
    registry = CollectorRegistry()
    PrerankMetrics(registry)
    app = faust.App("prerank-sensor-test", broker="kafka://127.0.0.1:1", web_enabled=False)
    enable_faust_sensor(app, registry)
    names = exposed_sample_names(registry)
    assert isinstance(app.monitor, PrometheusMonitor)
    assert f"{FAUST_PREFIX}_messages_received_total" in names
    assert f"{FAUST_PREFIX}_topic_partition_offset_commited" in names
    assert "prerank_scorer_latency_seconds_bucket" in names
    # Faust calls this hook for every consumed message; it must count into our registry.
    app.monitor.on_message_in(TP("prerank.impressions", 2), 41, SimpleNamespace())
    app.monitor.on_message_in(TP("prerank.impressions", 2), 42, SimpleNamespace())
    assert registry.get_sample_value(f"{FAUST_PREFIX}_messages_received_total") == 2.0
    assert registry.get_sample_value(
        f"{FAUST_PREFIX}_messages_received_per_topic_total", {"topic": "prerank.impressions"}
    ) == 2.0
