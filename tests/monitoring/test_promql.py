"""PromQL helpers: metric names found by hand-listed expectations, macro rendering, query listing."""

from __future__ import annotations

import pytest

from monitoring.exceptions import DashboardError
from monitoring.promql import (
    dashboard_queries,
    data_panels,
    metric_names,
    render_grafana_macros,
)


@pytest.mark.parametrize("expr, expected", [
    ("up", {"up"}),
    ('rate(prerank_scorer_requests_total{job="prerank", instance=~"a|b"}[5m])',
     {"prerank_scorer_requests_total"}),
    ("histogram_quantile(0.95, sum(rate(a_bucket[5m])) by (le, job))", {"a_bucket"}),
    ("sum by (tier) (rate(a_total[1m])) / ignoring (tier) group_left sum(rate(a_total[1m]))",
     {"a_total"}),
    ("max_over_time(r_ratio[2h]) - r_ratio > 0.1", {"r_ratio"}),
    ("x > 0 unless on () (sum(rate(y_total[5m])) > 0)", {"x", "y_total"}),
    ("a and on(instance) b or c unless d", {"a", "b", "c", "d"}),
    ("time() - g_seconds offset 5m > 1e3", {"g_seconds"}),
    ("sum(rate(a_total[$__rate_interval])) / $denominator", {"a_total"}),
    ('label_replace(m, "out", "$1", "in", "(by|on)")', {"m"}),
    ("avg_over_time(z[10m:1m]) > bool 0.5", {"z"}),
    ("topk(5, w) or vector(0)", {"w"}),
])
def test_metric_names(expr, expected):
    assert metric_names(expr) == expected


def test_render_grafana_macros():
    assert render_grafana_macros("rate(a[$__rate_interval])", rate_interval="30s") == "rate(a[30s])"
    assert render_grafana_macros("rate(a[${__interval}])", interval="2m") == "rate(a[2m])"
    # $__rate_interval must not be read as $__rate + "_interval" or as $__interval.
    assert "$" not in render_grafana_macros("a[$__rate_interval] + b[$__interval] + c[$__range]")


def test_dashboard_queries_include_collapsed_rows():
    board = {"panels": [
        {"id": 1, "type": "row", "title": "Open", "panels": []},
        {"id": 2, "type": "stat", "title": "S", "targets": [{"refId": "A", "expr": "a"},
                                                             {"refId": "B", "expr": "b"}]},
        {"id": 3, "type": "row", "title": "Collapsed", "collapsed": True, "panels": [
            {"id": 4, "type": "timeseries", "title": "T", "targets": [{"refId": "A", "expr": "c"}]},
        ]},
    ]}
    assert [(q.panel_id, q.ref_id, q.expr) for q in dashboard_queries(board)] == [
        (2, "A", "a"), (2, "B", "b"), (4, "A", "c"),
    ]
    assert [p["id"] for p in data_panels(board)] == [2, 4]


def test_dashboard_queries_reject_malformed_dashboards():
    with pytest.raises(DashboardError):
        dashboard_queries({"rows": []})
    with pytest.raises(DashboardError, match="without 'expr'"):
        dashboard_queries({"panels": [{"id": 1, "title": "x", "targets": [{"refId": "A"}]}]})
