"""A real Prometheus scrapes a real /metrics endpoint: every dashboard query returns data.

The endpoint serves a registry that a simulated workload keeps updating through the same
``PrerankMetrics`` API the agents use; the full-replay version of this test runs the real
workers instead. The alert rules are loaded too, and each must evaluate without error.
"""

from __future__ import annotations

import json
import math
import random
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml
from prometheus_client import CollectorRegistry

from core.ports import free_port
from monitoring.dashboard import load_dashboard
from monitoring.lag import record_consumer_lag
from monitoring.metrics import AGENTS, RECALL_AT_K, PrerankMetrics
from monitoring.promql import dashboard_queries, render_grafana_macros
from monitoring.rules import RULES_DIR, load_alert_rules
from monitoring.server import serve_metrics

pytestmark = [pytest.mark.integration, pytest.mark.prometheus]

PROMETHEUS_DIR = Path(__file__).resolve().parents[2] / "monitoring" / "prometheus"
RATE_WINDOW = "20s"
DEADLINE_S = 45.0


def simulate(metrics: PrerankMetrics, rng: random.Random, tick: int) -> None:
    """One tick of every agent's bookkeeping, through the API the agents call."""
    for _ in range(20):
        metrics.scorer_latency_seconds.observe(rng.lognormvariate(-7.0, 0.6))
        metrics.scorer_candidates.observe(rng.randint(800, 1200))
        metrics.scorer_requests_total.inc()
    metrics.observe_item_vectors(local=rng.randint(800, 1000), computed=rng.randint(0, 20))
    metrics.scorer_errors_total.labels(reason="invalid_request").inc(rng.random() < 0.5)
    metrics.trainer_samples_total.labels(mode="cascade").inc(256)
    metrics.trainer_loss.labels(mode="cascade").set(0.4 + 0.1 * rng.random())
    metrics.trainer_batch_seconds.observe(rng.uniform(0.02, 0.06))
    metrics.set_progressive_auc("click", 0.70 + 0.02 * rng.random())
    metrics.set_progressive_auc("long_view", 0.75 + 0.02 * rng.random())
    for k in RECALL_AT_K:
        metrics.set_consistency_recall(k, min(1.0, 0.4 + k / 400 + 0.05 * rng.random()))
    for table, rows in (("item_id", 5000 + tick), ("author_id", 900)):
        metrics.embedding_rows.labels(table=table).set(rows)
        metrics.embedding_zero_rows_ratio.labels(table=table).set(0.5)
        metrics.embedding_admissions_total.labels(table=table).inc(3)
        metrics.embedding_evictions_total.labels(table=table).inc(1)
    metrics.publish_duration_seconds.observe(rng.uniform(0.1, 0.4))
    metrics.published_items_total.inc(2000)
    metrics.published_versions_total.inc()
    metrics.publish_deleted_items_total.inc(5)
    for _ in range(10):
        metrics.freshness_seconds.observe(rng.uniform(0.5, 3.0))
    now = time.time()
    for agent in ("trainer", "publisher", "scorer"):
        metrics.set_model_version(agent, tick + 1, created_at_s=now - 1.0)
    metrics.joiner_records_total.inc(30)
    metrics.count_join_event("late")
    metrics.count_join_event("duplicate", rng.randint(0, 2))
    metrics.dead_letters_total.labels(topic="prerank.impressions", reason="schema").inc(rng.random() < 0.002)
    for agent in AGENTS:
        record_consumer_lag(metrics, agent, {(f"prerank.{agent}-input", p): rng.randint(0, 50) for p in range(2)})


class Workload(threading.Thread):
    def __init__(self, metrics: PrerankMetrics) -> None:
        super().__init__(daemon=True)
        self.metrics = metrics
        self.stopped = threading.Event()

    def run(self) -> None:
        rng = random.Random(3)
        tick = 0
        while not self.stopped.wait(0.1):
            simulate(self.metrics, rng, tick)
            tick += 1


def api(base: str, path: str, **params) -> dict:
    url = f"{base}{path}?{urllib.parse.urlencode(params)}" if params else f"{base}{path}"
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


def wait_for(condition, what: str, deadline: float):
    while time.monotonic() < deadline:
        try:
            value = condition()
        except OSError:
            value = None
        if value:
            return value
        time.sleep(0.25)
    pytest.fail(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def prometheus(prometheus_binary, tmp_path_factory):
    """Base URL of a Prometheus scraping a live /metrics endpoint every second."""
    metrics = PrerankMetrics(CollectorRegistry())
    workload = Workload(metrics)
    workload.start()
    endpoint = serve_metrics(metrics.registry, port=0)

    home = tmp_path_factory.mktemp("prometheus")
    config = yaml.safe_load((PROMETHEUS_DIR / "prometheus-local.yml").read_text())
    config["global"].update(scrape_interval="1s", evaluation_interval="1s")
    config["rule_files"] = [str(RULES_DIR / "*.yml")]
    (job,) = config["scrape_configs"]
    job["static_configs"] = [{"targets": [f"127.0.0.1:{endpoint.port}"]}]
    (home / "prometheus.yml").write_text(yaml.safe_dump(config))

    port = free_port()
    log = (home / "prometheus.log").open("w")
    process = subprocess.Popen(
        [prometheus_binary, f"--config.file={home / 'prometheus.yml'}",
         f"--storage.tsdb.path={home / 'data'}", f"--web.listen-address=127.0.0.1:{port}"],
        stdout=log, stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + DEADLINE_S
        wait_for(lambda: urllib.request.urlopen(f"{base}/-/ready", timeout=2).status == 200,
                 "Prometheus to be ready", deadline)
        wait_for(lambda: api(base, "/api/v1/query",
                             query=f"sum(rate(prerank_scorer_requests_total[{RATE_WINDOW}])) > 0")["data"]["result"],
                 "two scrapes with traffic", deadline)
        yield base
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()
        workload.stopped.set()
        workload.join(timeout=5)
        endpoint.close()


def test_every_dashboard_query_returns_data(prometheus):
    empty = []
    for query in dashboard_queries(load_dashboard()):
        expr = render_grafana_macros(query.expr, rate_interval=RATE_WINDOW)
        answer = api(prometheus, "/api/v1/query", query=expr)
        assert answer["status"] == "success", f"{query.panel_title}: {answer}"
        values = [float(series["value"][1]) for series in answer["data"]["result"]]
        if not any(math.isfinite(v) for v in values):
            empty.append(f"{query.panel_title} [{query.ref_id}]: {expr} -> {values}")
    assert not empty, "queries without data:\n" + "\n".join(empty)


def test_alert_rules_load_and_evaluate(prometheus):
    """Every rule evaluates without error; on the healthy workload none stays pending or firing.

    Right after start a rule may be pending for one evaluation (a rate needs two scrapes),
    so the states are polled until they settle.
    """
    expected = {rule.name for rule in load_alert_rules()}
    seen = {}

    def settled():
        groups = api(prometheus, "/api/v1/rules")["data"]["groups"]
        rules = {r["name"]: r for g in groups for r in g["rules"] if r["type"] == "alerting"}
        seen.update({name: (r["health"], r["state"], r.get("lastError", "")) for name, r in rules.items()})
        return set(rules) == expected and all(
            r["health"] == "ok" and r["state"] == "inactive" for r in rules.values()
        )

    deadline = time.monotonic() + 20
    while not settled():
        assert time.monotonic() < deadline, f"rules did not settle: {seen}"
        time.sleep(0.5)
