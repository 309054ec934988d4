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
    with pytest.warns(UserWarning, match="(?i)synthetic"):
        report = run_replay(stack_settings, None, ["cascade"], None, tmp_path, baselines=True,
                            max_requests=80, n_candidates=200, progress=lambda _: None)
    assert set(report) == {"cascade", "global_ctr", "logistic_ftrl", "online_tree"}
    on_disk = json.loads((tmp_path / "report.json").read_text())
    assert set(on_disk) == set(report)
    cascade = on_disk["cascade"]
    for key in REQUIRED:
        assert key in cascade, key
    assert cascade["counts"]["answered"] == cascade["counts"]["sent"] > 0
    assert cascade["counts"]["errors"] == 0
    assert cascade["requests"] > 0 and cascade["samples_learned"] > 0
    assert cascade["model_versions_seen"] >= 2  # the scorer switched versions during the replay
    assert 0.0 <= cascade["auc_click"] <= 1.0 and 0.0 <= cascade["consistency_recall_at_200"] <= 1.0
    assert cascade["consistency_recall_at_50"] <= cascade["consistency_recall_at_200"]
    assert 0.0 <= cascade["zero_row_ratio"] <= 1.0 and not math.isnan(cascade["export_size_reduction"])
    for name in ("global_ctr", "logistic_ftrl", "online_tree"):
        assert on_disk[name]["requests"] == cascade["requests"]  # same requests, side by side
    table = write_report(tmp_path)
    assert table.splitlines()[0].split(" | ")[1:-1] == list(COLUMNS[:-1])
    assert (tmp_path / "report.md").exists() and (tmp_path / "quality.png").stat().st_size > 0
