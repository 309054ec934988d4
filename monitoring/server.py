"""Serve a registry on ``/metrics`` over HTTP, one port per worker.

Workers listen on loopback by default; a container sets ``host="0.0.0.0"`` so that the
Prometheus of its network can scrape it.

>>> from prometheus_client import CollectorRegistry
>>> from monitoring.metrics import PrerankMetrics
>>> metrics = PrerankMetrics(CollectorRegistry())
>>> server = serve_metrics(metrics.registry, port=0)
>>> import urllib.request
>>> body = urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics").read().decode()
>>> "prerank_scorer_latency_seconds_bucket" in body
True
>>> server.close()
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, start_http_server


@dataclass(frozen=True)
class MetricsServer:
    """A running ``/metrics`` endpoint; :meth:`close` stops it and frees the port."""

    server: WSGIServer
    thread: threading.Thread

    @property
    def port(self) -> int:
        return self.server.server_port

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


def serve_metrics(registry: CollectorRegistry, port: int, host: str = "127.0.0.1") -> MetricsServer:
    """Start a daemon thread serving ``registry`` on ``http://host:port/metrics``.

    ``port=0`` picks a free port (read it back from :attr:`MetricsServer.port`).
    """
    if not 0 <= port <= 65535:
        raise ValueError(f"port must lie in 0..65535, got {port}")
    server, thread = start_http_server(port, addr=host, registry=registry)
    return MetricsServer(server, thread)
