"""The in-process scoring benchmark runs end to end and its scorer agrees with the naive path."""

from __future__ import annotations

import json

from bench import score


def test_quick_score_bench_writes_its_figures_and_agrees_with_the_naive_top_k(tmp_path):
    out = tmp_path / "score.json"
    assert score.main(["--quick", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["top_k_agree"] is True
    for key in ("p50_ms", "p99_ms", "naive_p99_ms", "scorer_p99_ms", "speedup"):
        assert result[key] > 0, key
