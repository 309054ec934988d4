"""The committed Grafana dashboard: structure, data source, and metrics that exist."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from prometheus_client import CollectorRegistry

from monitoring.dashboard import DATASOURCE_UID, ROWS, dashboard_json, load_dashboard
from monitoring.metrics import PrerankMetrics, exposed_sample_names
from monitoring.promql import dashboard_queries, data_panels, metric_names
from monitoring.rules import load_alert_rules

REPO = Path(__file__).resolve().parents[2]
# Series Prometheus itself adds to every scrape target.
SCRAPE_SERIES = {"up", "scrape_duration_seconds", "scrape_samples_scraped"}


@pytest.fixture(scope="module")
def board() -> dict:
    return load_dashboard()


@pytest.fixture(scope="module")
def defined_names() -> frozenset[str]:
    return exposed_sample_names(PrerankMetrics(CollectorRegistry())) | SCRAPE_SERIES


def test_rows_are_serving_training_quality_freshness_health(board):
    rows = [p["title"] for p in board["panels"] if p["type"] == "row"]
    assert rows == ["Serving", "Training", "Quality", "Freshness", "Health"]


def test_panel_ids_are_unique(board):
    ids = [p["id"] for p in board["panels"]] + [c["id"] for p in board["panels"] for c in p.get("panels", [])]
    assert len(ids) == len(set(ids))
    assert all(isinstance(i, int) and i > 0 for i in ids)


def test_every_panel_has_the_datasource_and_a_promql_target(board):
    panels = data_panels(board)
    assert len(panels) == sum(len(row.panels) for row in ROWS)
    for panel in panels:
        assert panel["datasource"] == {"type": "prometheus", "uid": DATASOURCE_UID}, panel["title"]
        targets = panel.get("targets", [])
        assert targets and all(t.get("expr") for t in targets), panel["title"]
        assert len({t["refId"] for t in targets}) == len(targets), panel["title"]
        assert all(t.get("datasource", {}).get("uid") == DATASOURCE_UID for t in targets)


def test_panels_do_not_overlap(board):
    cells = set()
    for panel in board["panels"]:
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24, panel["title"]
        mine = {(x, y) for x in range(pos["x"], pos["x"] + pos["w"])
                for y in range(pos["y"], pos["y"] + pos["h"])}
        assert not cells & mine, f"{panel['title']} overlaps another panel"
        cells |= mine


def test_every_metric_in_the_dashboard_is_defined(board, defined_names):
    for query in dashboard_queries(board):
        names = metric_names(query.expr)
        assert names, f"{query.panel_title}: no metric in {query.expr}"
        assert names <= defined_names, f"{query.panel_title}: unknown {names - defined_names}"


def test_every_metric_in_the_rules_is_defined(defined_names):
    for rule in load_alert_rules():
        names = metric_names(rule.expr)
        assert names and names <= defined_names, f"{rule.name}: unknown {names - defined_names}"


def test_every_metric_is_shown_or_alerted_on(board):
    """A metric nobody looks at is dead weight: each family appears in a panel or a rule."""
    used = set()
    for expr in [q.expr for q in dashboard_queries(board)] + [r.expr for r in load_alert_rules()]:
        used |= metric_names(expr)
    for family in PrerankMetrics(CollectorRegistry()).registry.collect():
        samples = {family.name + suffix for suffix in ("", "_total", "_bucket", "_count", "_sum")}
        assert used & samples, f"{family.name} is in no panel and no rule"


def test_datasource_provisioning_matches_the_panels():
    datasources = yaml.safe_load(
        (REPO / "monitoring/grafana/provisioning/datasources/prometheus.yml").read_text()
    )["datasources"]
    assert [(d["type"], d["uid"]) for d in datasources] == [("prometheus", DATASOURCE_UID)]


def test_committed_json_is_what_the_builder_makes():
    pytest.importorskip("grafana_foundation_sdk", reason="the dashboard builder's dev dependency")
    committed = (REPO / "monitoring/grafana/dashboards/prerank.json").read_text()
    assert committed == dashboard_json(), "stale: run `python -m monitoring.dashboard`"
