"""Faust's own Prometheus sensor, sharing the worker's registry.

Faust counts messages, events, table operations, commits and rebalances. With the same
registry as :class:`~monitoring.metrics.PrerankMetrics`, one ``/metrics`` port per worker
exposes both; the sensor also answers on Faust's web server (``/metrics`` on port 6066).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from faust.sensors.prometheus import setup_prometheus_sensors
from prometheus_client import CollectorRegistry

if TYPE_CHECKING:
    import faust

#: Prefix of Faust's metric names, e.g. ``prerank_faust_messages_received_total``.
FAUST_PREFIX = "prerank_faust"


def enable_faust_sensor(
    app: faust.App, registry: CollectorRegistry, name_prefix: str = FAUST_PREFIX
) -> None:
    """Install Faust's Prometheus monitor on ``app``, registering its metrics on ``registry``.

    Call once per app, before the worker starts.
    """
    setup_prometheus_sensors(app, pattern="/metrics", registry=registry, name_prefix=name_prefix)
