"""Reading a worker's ``/metrics`` back: what the replay and the tests check counters with."""

from __future__ import annotations

import urllib.request

from prometheus_client.parser import text_string_to_metric_families

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(port: int, host: str = "127.0.0.1", timeout_s: float = 5.0) -> Samples:
    """Every sample of a worker's ``/metrics``: ``{(name, sorted label items): value}``."""
    body = urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=timeout_s).read().decode()
    return parse(body)


def parse(body: str) -> Samples:
    """The samples of a Prometheus text exposition.

    >>> samples = parse('# TYPE x_total counter\\nx_total{event="late"} 3.0\\nx_total{event="orphan"} 1.0\\n')
    >>> metric_sum(samples, "x_total"), metric_sum(samples, "x_total", event="late")
    (4.0, 3.0)
    """
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(body) for sample in family.samples
    }


def metric_sum(samples: Samples, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels``."""
    wanted = set(labels.items())
    return sum(value for (sample, items), value in samples.items() if sample == name and wanted <= set(items))
