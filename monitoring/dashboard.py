"""The Grafana dashboard, built with the grafana-foundation-sdk and committed as JSON.

The panels are data (:data:`ROWS`); :func:`build_dashboard` turns them into Grafana's JSON
model with the SDK's typed builders. The JSON that Grafana provisions is
``monitoring/grafana/dashboards/prerank.json``; regenerate it after editing :data:`ROWS`::

    python -m monitoring.dashboard            # rewrites the JSON
    python -m monitoring.dashboard --check    # exit 1 if the JSON is stale

Only building needs the SDK (a dev dependency); reading the JSON does not.

>>> [row.title for row in ROWS]
['Serving', 'Training', 'Quality', 'Freshness', 'Health']
>>> board = load_dashboard()
>>> board["uid"], len(board["panels"]) > len(ROWS)
('prerank-overview', True)
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

DASHBOARD_PATH = Path(__file__).resolve().parent / "grafana" / "dashboards" / "prerank.json"
DATASOURCE_UID = "prometheus"
UID = "prerank-overview"

_RATE = "[$__rate_interval]"


def _quantile(q: float, metric: str, by: str = "") -> str:
    grouping = f"le, {by}" if by else "le"
    return f"histogram_quantile({q}, sum by ({grouping}) (rate({metric}_bucket{_RATE})))"


@dataclass(frozen=True)
class Query:
    expr: str
    legend: str


@dataclass(frozen=True)
class Panel:
    title: str
    unit: str
    queries: tuple[Query, ...]
    kind: Literal["timeseries", "stat"] = "timeseries"
    description: str = ""


@dataclass(frozen=True)
class Row:
    title: str
    panels: tuple[Panel, ...]


ROWS = (
    Row("Serving", (
        Panel("Scorer latency", "s", (
            Query(_quantile(0.5, "prerank_scorer_latency_seconds"), "p50"),
            Query(_quantile(0.99, "prerank_scorer_latency_seconds"), "p99"),
        ), description="In-process time per request. Targets: p99 <= 2 ms warm; alert at 10 ms."),
        Panel("Requests and errors", "reqps", (
            Query(f"sum(rate(prerank_scorer_requests_total{_RATE}))", "requests"),
            Query(f"sum by (reason) (rate(prerank_scorer_errors_total{_RATE}))", "errors {{reason}}"),
        )),
        Panel("Item vectors by cache tier", "percentunit", (
            Query(f"sum by (tier) (rate(prerank_scorer_item_vectors_total{_RATE})) / ignoring (tier) "
                  f"group_left sum(rate(prerank_scorer_item_vectors_total{_RATE}))", "{{tier}}"),
        ), description="Share of item vectors held in process (the version's resident set, or computed "
                       "earlier for this version) and computed by the item tower now."),
        Panel("Scorer CPU per request by stage", "s", (
            Query(f"sum by (stage) (rate(prerank_scorer_stage_seconds_total{_RATE})) / ignoring (stage) "
                  f"group_left sum(rate(prerank_scorer_requests_total{_RATE}))", "{{stage}}"),
        ), description="Where a request's time goes: decode, user features, user tower (once per batch), "
                       "item vectors, product and top-k, response, encode, produce."),
        Panel("Candidates per request", "short", (
            Query(f"sum(rate(prerank_scorer_candidates_sum{_RATE})) / "
                  f"sum(rate(prerank_scorer_candidates_count{_RATE}))", "mean"),
            Query(_quantile(0.99, "prerank_scorer_candidates"), "p99"),
        )),
    )),
    Row("Training", (
        Panel("Samples learned", "short", (
            Query(f"sum by (mode) (rate(prerank_trainer_samples_total{_RATE}))", "{{mode}} /s"),
        )),
        Panel("Loss", "none", (Query("max by (mode) (prerank_trainer_loss)", "{{mode}}"),)),
        Panel("Batch latency", "s", (
            Query(_quantile(0.5, "prerank_trainer_batch_seconds"), "p50"),
            Query(_quantile(0.99, "prerank_trainer_batch_seconds"), "p99"),
        )),
        Panel("Embedding rows", "short", (
            Query("sum by (table) (prerank_embedding_rows)", "{{table}}"),
        )),
        Panel("All-zero embedding rows", "percentunit", (
            Query("max by (table) (prerank_embedding_zero_rows_ratio)", "{{table}}"),
        ), description="FTRL rows that are exactly zero; the article reports ~50%."),
        Panel("Admissions and evictions", "short", (
            Query(f"sum by (table) (rate(prerank_embedding_admissions_total{_RATE}))", "admit {{table}}"),
            Query(f"sum by (table) (rate(prerank_embedding_evictions_total{_RATE}))", "evict {{table}}"),
        )),
    )),
    Row("Quality", (
        Panel("Progressive AUC", "none", (
            Query("max by (label) (prerank_trainer_progressive_auc_ratio)", "{{label}}"),
        ), description="Student AUC, scored before learning, over a recent window."),
        Panel("Consistency (recall of the fine ranker's top-N)", "percentunit", (
            Query("max by (k) (prerank_consistency_recall_ratio)", "recall@{{k}}"),
        )),
    )),
    Row("Freshness", (
        Panel("Freshness: impression to published vector", "s", (
            Query(_quantile(0.5, "prerank_freshness_seconds"), "p50"),
            Query(_quantile(0.95, "prerank_freshness_seconds"), "p95"),
        ), description="Target p95 <= 5 s."),
        Panel("Model version", "none", (
            Query("max by (agent) (prerank_model_version)", "{{agent}}"),
        ), kind="stat"),
        Panel("Model version age", "s", (
            Query("max by (agent) (prerank_model_version_age_seconds)", "{{agent}}"),
        )),
        Panel("Publish duration", "s", (
            Query(_quantile(0.95, "prerank_publish_duration_seconds"), "p95"),
        )),
        Panel("Items and versions published", "short", (
            Query(f"sum(rate(prerank_published_items_total{_RATE}))", "written /s"),
            Query(f"sum(rate(prerank_publish_deleted_items_total{_RATE}))", "deleted /s"),
            Query(f"sum(rate(prerank_published_versions_total{_RATE}))", "versions /s"),
        )),
    )),
    Row("Health", (
        Panel("Workers up", "none", (Query('sum(up{job="prerank"})', "workers up"),), kind="stat"),
        Panel("Consumer lag", "short", (
            Query("sum by (agent, topic) (prerank_consumer_lag_messages)", "{{agent}} {{topic}}"),
        )),
        Panel("Dead letters", "short", (
            Query(f"sum by (topic, reason) (rate(prerank_dead_letters_total{_RATE}))",
                  "{{topic}} {{reason}}"),
        )),
        Panel("Agent errors (records set aside, the agent went on)", "short", (
            Query(f"sum by (agent) (rate(prerank_agent_errors_total{_RATE}))", "{{agent}}"),
            Query(f"sum by (agent) (rate(prerank_dead_letter_failures_total{_RATE}))", "dead letter not sent {{agent}}"),
        ), description="A record an agent could not process became a dead letter; the worker never exits on data."),
        Panel("Joiner: late, orphan, duplicate", "short", (
            Query(f"sum by (event) (rate(prerank_joiner_events_total{_RATE}))", "{{event}}"),
            Query(f"sum(rate(prerank_joiner_records_total{_RATE}))", "records"),
            Query(f"sum(rate(prerank_trainer_duplicate_records_total{_RATE}))", "dropped by the trainer as seen"),
        ), description="The join is at least once: a record repeated after a crash is dropped by the trainer."),
        Panel("Joiner: open windows", "short", (
            Query("sum(prerank_joiner_pending_requests)", "requests waiting for their window to close"),
        ), description="Kept in changelogged tables: a restarted worker resumes them."),
    )),
)


def build_dashboard() -> dict:
    """The dashboard as Grafana's JSON model (a plain dict), built with the SDK."""
    from grafana_foundation_sdk.builders import dashboard as gd
    from grafana_foundation_sdk.builders import prometheus, stat, timeseries
    from grafana_foundation_sdk.cog.encoder import JSONEncoder
    from grafana_foundation_sdk.models.dashboard import DataSourceRef

    datasource = DataSourceRef(type_val="prometheus", uid=DATASOURCE_UID)
    builder = (
        gd.Dashboard("Pre-ranking: streaming two-tower")
        .uid(UID)
        .tags(["prerank"])
        .refresh("10s")
        .time("now-30m", "now")
        .timezone("browser")
    )
    panel_id = 0
    for row in ROWS:
        panel_id += 1
        builder = builder.with_row(gd.Row(row.title).id(panel_id))
        for panel in row.panels:
            panel_id += 1
            kind = stat if panel.kind == "stat" else timeseries
            viz = (
                kind.Panel().id(panel_id).title(panel.title).unit(panel.unit)
                .datasource(datasource).height(8).span(12)
            )
            if panel.description:
                viz = viz.description(panel.description)
            for ref, query in zip("ABCDEFGH", panel.queries):
                viz = viz.with_target(
                    prometheus.Dataquery().expr(query.expr).legend_format(query.legend)
                    .ref_id(ref).datasource(datasource)
                )
            builder = builder.with_panel(viz)
    return json.loads(json.dumps(builder.build(), cls=JSONEncoder))


def dashboard_json() -> str:
    """The file content of :data:`DASHBOARD_PATH`: sorted keys, stable across rebuilds."""
    return json.dumps(build_dashboard(), indent=2, sort_keys=True) + "\n"


def load_dashboard(path: Path = DASHBOARD_PATH) -> dict:
    """The committed dashboard JSON."""
    return json.loads(Path(path).read_text())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Build the Grafana dashboard JSON.")
    parser.add_argument("--check", action="store_true", help="exit 1 if the committed JSON is stale")
    args = parser.parse_args(argv)
    fresh = dashboard_json()
    if args.check:
        stale = not DASHBOARD_PATH.exists() or DASHBOARD_PATH.read_text() != fresh
        print(f"{DASHBOARD_PATH}: {'stale' if stale else 'up to date'}")
        return 1 if stale else 0
    DASHBOARD_PATH.write_text(fresh)
    print(f"wrote {DASHBOARD_PATH}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
