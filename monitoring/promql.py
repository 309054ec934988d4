"""PromQL as found in the dashboard and the alert rules: list it, render it, name its metrics.

These are the pure helpers behind the checks that every metric a query names exists and
that every panel's query returns data from a real Prometheus.

>>> sorted(metric_names(
...     'histogram_quantile(0.99, sum by (le) (rate(prerank_scorer_latency_seconds_bucket'
...     '{job="prerank"}[$__rate_interval])))'))
['prerank_scorer_latency_seconds_bucket']
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from monitoring.exceptions import DashboardError

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_LABEL_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGES = re.compile(r"\[[^\[\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
# An identifier not glued to a number (``5m``, ``1e3``) nor to ``$`` (a Grafana variable).
_IDENTIFIER = re.compile(r"(?<![\w.:$])([A-Za-z_:][\w:]*)(\s*\()?")
_KEYWORDS = frozenset({
    "and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring",
    "group_left", "group_right", "inf", "nan", "atan2",
})


def metric_names(expr: str) -> frozenset[str]:
    """Metric names selected by a PromQL expression (functions, labels and keywords removed).

    Examples
    --------
    >>> sorted(metric_names('sum by (tier) (rate(a_total[5m])) / ignoring(tier) group_left '
    ...                     'sum(rate(a_total[5m]))'))
    ['a_total']
    >>> sorted(metric_names('time() - max(x_seconds offset 1h) > 3e2 and on() up{job="p"} == 1'))
    ['up', 'x_seconds']
    >>> sorted(metric_names('label_replace(y, "dst", "$1", "src", "(.*)") or vector(0)'))
    ['y']
    """
    text = _STRING.sub('""', expr)
    text = _LABEL_MATCHERS.sub(" ", text)
    text = _RANGES.sub(" ", text)
    text = _GROUPING.sub(" ", text)
    names = set()
    for match in _IDENTIFIER.finditer(text):
        name, is_call = match.group(1), match.group(2)
        if not is_call and name.lower() not in _KEYWORDS:
            names.add(name)
    return frozenset(names)


def render_grafana_macros(expr: str, rate_interval: str = "1m", interval: str = "15s") -> str:
    """Replace Grafana's interval variables so Prometheus' HTTP API accepts the query.

    >>> render_grafana_macros("rate(a_total[$__rate_interval]) + rate(b_total[${__interval}])")
    'rate(a_total[1m]) + rate(b_total[15s])'
    """
    for name, value in (("__rate_interval", rate_interval), ("__interval", interval),
                        ("__range", rate_interval)):
        expr = expr.replace("${" + name + "}", value).replace("$" + name, value)
    return expr


@dataclass(frozen=True)
class PanelQuery:
    """One PromQL target of one dashboard panel."""

    panel_id: int
    panel_title: str
    ref_id: str
    expr: str


def _panels(dashboard: Mapping) -> Iterator[Mapping]:
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])  # the children of a collapsed row


def dashboard_queries(dashboard: Mapping) -> list[PanelQuery]:
    """Every PromQL target of a Grafana dashboard (a dashboard JSON model), in panel order.

    Examples
    --------
    >>> board = {"panels": [
    ...     {"id": 1, "type": "row", "title": "Serving", "panels": []},
    ...     {"id": 2, "type": "timeseries", "title": "Requests",
    ...      "targets": [{"refId": "A", "expr": "rate(prerank_scorer_requests_total[1m])"}]}]}
    >>> [(q.panel_id, q.ref_id, q.expr) for q in dashboard_queries(board)]
    [(2, 'A', 'rate(prerank_scorer_requests_total[1m])')]
    """
    if not isinstance(dashboard, Mapping) or "panels" not in dashboard:
        raise DashboardError("a dashboard is a mapping with a 'panels' list")
    queries = []
    for panel in _panels(dashboard):
        for target in panel.get("targets", []):
            expr = target.get("expr")
            if not expr:
                raise DashboardError(f"panel {panel.get('title')!r} has a target without 'expr'")
            queries.append(PanelQuery(panel.get("id"), panel.get("title", ""), target.get("refId", ""), expr))
    return queries


def data_panels(dashboard: Mapping) -> list[Mapping]:
    """The panels that show data (every panel but rows), collapsed rows' children included."""
    return [panel for panel in _panels(dashboard) if panel.get("type") != "row"]
