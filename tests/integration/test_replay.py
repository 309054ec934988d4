"""A short end-to-end replay on the real stack: synthetic log -> agents -> report."""

from __future__ import annotations

import json
import math

import pytest

from replay.command import run_replay
from replay.report import COLUMNS, write_report

pytestmark = pytest.mark.integration

REQUIRED = ("auc_click", "auc_long_view", "gauc_long_view", "consistency_recall_at_50",
            "consistency_recall_at_100", "consistency_recall_at_200", "zero_row_ratio",
            "export_size_reduction", "requests", "samples_learned")


def test_short_replay_through_the_agents_writes_a_report(stack_settings, tmp_path):
    # 80 requests last a few seconds: publish often enough that the scorer must switch versions.
    worker = stack_settings.worker.model_copy(update={"publish_interval_s": 0.5})
    stack_settings = stack_settings.model_copy(update={"worker": worker})
    with pytest.warns(UserWarning, match="(?i)synthetic"):
        report = run_replay(stack_settings, None, ["cascade"], None, tmp_path, baselines=True, peers=True,
                            max_requests=80, n_candidates=200, progress=lambda _: None,
                            l1_sweep=(0.0, 3.0), l1_sweep_requests=400)
    assert set(report) == {"cascade", "global_ctr", "logistic_ftrl", "online_tree", "vowpal_wabbit", "river_lr_ftrl"}
    on_disk = json.loads((tmp_path / "report.json").read_text())
    assert set(on_disk) == set(report)
    cascade = on_disk["cascade"]
    for key in REQUIRED:
        assert key in cascade, key
    assert cascade["counts"]["answered"] == cascade["counts"]["sent"] > 0
    assert cascade["counts"]["errors"] == 0
    assert cascade["requests"] > 0 and cascade["samples_learned"] > 0
    # every answered request is accounted for: a training record (all of them learned), or an
    # orphan or late events the joiner counted (a whole window of lag: see docs/replay.md)
    counts = cascade["counts"]
    assert cascade["records_learned"] == counts["joiner_records"] > 0
    accounted = counts["joiner_records"] + counts["joiner_orphan"]
    assert accounted == counts["answered"] or (accounted < counts["answered"] and counts["joiner_late"] > 0)
    # how many versions a few seconds of replay see depends on the machine's speed; the switch
    # itself is tested deterministically (test_pipeline: test_the_scorer_switches_to_each_new_version_whole)
    assert cascade["model_versions_seen"] >= 1
    # the driver's own CPU, per stage, and the evaluation process's beside it
    driver = cascade["driver"]
    assert driver["requests"] == counts["answered"] and 0 < driver["cpu_share"] and cascade["requests_per_s"] > 0
    assert {"candidates", "send", "poll", "decode", "evaluate", "impressions"} <= set(driver["stages_ms_per_request"])
    assert cascade["evaluator"]["process"] and cascade["evaluator"]["cpu_s"] > 0
    # and each worker's, by its agents: every one of them worked during the stream
    workers = cascade["workers_cpu"]
    assert set(workers) == {"history,joiner,scorer", "ranker", "trainer,publisher"}
    assert all(w["cpu_share"] > 0 and w["cpu_ms_per_request"] > 0 for w in workers.values()), workers
    from replay.report import rate_table

    assert rate_table(on_disk).splitlines()[2].startswith("| cascade |")
    # Better than chance on the same candidates: scored at random, each of the fine ranker's top 10
    # of the 200 candidates lands in the top 50 with probability 50/200, so random recall@50 is 0.25
    # on average (sd about 0.13 / sqrt(audited requests)); twice that is > 4 sd over 5+ requests.
    # The cascade student is trained on exactly those top 10 (runs so far: 0.75 .. 0.82).
    chance_at_50 = 50 / 200  # k / n_candidates of the call above
    assert cascade["consistency_requests"] >= 5
    assert cascade["consistency_recall_at_50"] >= 2 * chance_at_50, cascade["consistency_recall_at_50"]
    assert cascade["consistency_recall_at_200"] == 1.0  # the top 200 of 200 candidates hold everything
    assert cascade["consistency_recall_at_50"] <= cascade["consistency_recall_at_200"]
    # ~150 evaluated exposures of a synthetic log guarantee no click AUC margin over 0.5 (0.47 .. 0.62
    # in runs so far): only that it was computed
    assert math.isfinite(cascade["auc_click"])
    # FTRL's l1 (0.5) leaves admitted rows all-zero on this short stream, the pruned export drops them,
    # and a student that ranks better than chance has non-zero rows
    assert 0.0 < cascade["zero_row_ratio"] < 1.0 and cascade["export_size_reduction"] > 0.0
    for name in ("global_ctr", "logistic_ftrl", "online_tree", "vowpal_wabbit", "river_lr_ftrl"):
        assert on_disk[name]["requests"] == cascade["requests"]  # same requests, side by side
        assert math.isfinite(on_disk[name]["auc_long_view"]) and on_disk[name]["consistency_requests"] > 0
    table = write_report(tmp_path)
    assert table.splitlines()[0].split(" | ")[1:-1] == list(COLUMNS[:-1])
    assert (tmp_path / "report.md").exists() and (tmp_path / "quality.png").stat().st_size > 0
    series = cascade["over_time"]
    assert series and sum(point["exposures"] for point in series) == cascade["eval_exposures"]
    assert (tmp_path / "over_time.png").stat().st_size > 0
    assert 0.0 <= cascade["hit_rate_long_view_at_100"] <= 1.0
    run = json.loads((tmp_path / "run.json").read_text())
    assert 0 < run["sampling"]["user_sample_rate"] <= 1.0
    assert run["prefit"]["warm_start_requests"] > 0  # the trainer started from the pre-period student
    sweep = {r["l1"]: r for r in run["l1_sweep"]["results"]}
    assert sweep[0.0]["zero_row_ratio"] == 0.0 < sweep[3.0]["zero_row_ratio"]
    assert (tmp_path / "zero_rows_vs_l1.png").stat().st_size > 0 and "FTRL l1 sweep" in table


def test_an_interrupted_replay_resumes_where_it_stopped(stack_settings, tmp_path):
    """Ctrl-C mid-stream (simulated in the progress callback), then ``--resume``: every request is
    completed exactly once, the trainer carries on from its checkpoint, the report is whole."""
    from replay.exceptions import ReplayInterrupted
    from replay.progress import RunProgress, find_resumable

    def ctrl_c_after_60(state):
        if state.get("requests", 0) >= 60:
            raise KeyboardInterrupt

    with pytest.warns(UserWarning, match="(?i)synthetic"), pytest.raises(ReplayInterrupted) as stopped:
        run_replay(stack_settings, None, ["cascade"], None, tmp_path, baselines=True, max_requests=150,
                   n_candidates=200, progress=ctrl_c_after_60)
    run_dir = find_resumable(tmp_path)
    checkpoint = json.loads((run_dir / "cascade" / "eval.json").read_text())
    assert 60 <= stopped.value.completed == len(checkpoint["completed"]) < stopped.value.total
    assert checkpoint["counts"]["answered"] == checkpoint["counts"]["sent"]  # in flight were drained
    assert (run_dir / "cascade" / "baseline-online_tree.json").exists()

    with pytest.warns(UserWarning, match="(?i)synthetic"):
        report = run_replay(stack_settings, None, ["ignored"], "2000-01-01", tmp_path, resume=True,
                            progress=lambda _: None)
    completed = json.loads((run_dir / "cascade" / "eval.json").read_text())["completed"]
    assert len(completed) == len(set(completed)) == stopped.value.total  # each request once
    cascade = report["cascade"]
    assert cascade["counts"]["answered"] == cascade["counts"]["sent"] == stopped.value.total
    assert cascade["records_learned"] > 0 and report["global_ctr"]["requests"] == cascade["requests"]
    assert RunProgress.load(run_dir).complete and json.loads((tmp_path / "run.json").read_text())["work_dir"] == str(run_dir)


@pytest.mark.prometheus
def test_every_dashboard_panel_has_data_from_real_workers_during_a_replay(stack_settings, tmp_path):
    """A real Prometheus scrapes the replay's real workers; every panel query returns data."""
    import subprocess
    import time
    import urllib.parse
    import urllib.request

    import yaml

    from monitoring.dashboard import load_dashboard
    from monitoring.promql import dashboard_queries, render_grafana_macros
    from prerank.stack import PROMETHEUS_CONFIG, require_tool
    from tests.conftest import free_port
    from tests.integration.workers import send_all

    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    config["global"].update(scrape_interval="1s", evaluation_interval="1s")
    config["rule_files"] = [str(PROMETHEUS_CONFIG.parent / "rules" / "*.yml")]
    base_port = stack_settings.worker.metrics_port
    config["scrape_configs"][0]["static_configs"] = [
        {"targets": [f"127.0.0.1:{base_port + i}" for i in range(3)]}]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    log = (tmp_path / "prometheus.log").open("w")
    prometheus = subprocess.Popen(
        [require_tool("prometheus"), f"--config.file={tmp_path / 'prometheus.yml'}",
         f"--storage.tsdb.path={tmp_path / 'tsdb'}", f"--web.listen-address=127.0.0.1:{port}"],
        stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"

    def query(expr: str) -> list[float]:
        url = f"{base}/api/v1/query?{urllib.parse.urlencode({'query': expr})}"
        answer = json.loads(urllib.request.urlopen(url, timeout=10).read())
        assert answer["status"] == "success", answer
        return [float(series["value"][1]) for series in answer["data"]["result"]]

    def one_bad_record(mode_settings) -> None:  # so the dead-letter panel has a series too
        send_all(mode_settings, "impressions", [(b"u0", b"not json")])

    empty: list[str] = []
    checked: list[int] = []

    def check_panels(mode_settings) -> None:  # while the workers still run: gauges are not stale
        time.sleep(3)  # a few more scrapes after the last publish
        for panel in dashboard_queries(load_dashboard()):
            expr = render_grafana_macros(panel.expr, rate_interval="2m")
            checked.append(1)
            if not any(math.isfinite(v) for v in query(expr)):
                empty.append(f"{panel.panel_title}: {expr}")

    try:
        with pytest.warns(UserWarning):
            run_replay(stack_settings, None, ["cascade"], None, tmp_path / "report", max_requests=150,
                       n_candidates=300, progress=lambda _: None, on_mode_started=one_bad_record,
                       on_mode_finished=check_panels)
        assert len(checked) == len(dashboard_queries(load_dashboard())) > 20
        assert not empty, "panels without data:\n" + "\n".join(empty)
    finally:
        prometheus.terminate()
        prometheus.wait(timeout=30)
        log.close()
