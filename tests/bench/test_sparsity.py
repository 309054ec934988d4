"""The l1 sweep runs and its outputs move the way FTRL says they must."""

from __future__ import annotations

import json

import pytest

from bench.sparsity import main


def test_quick_sweep_writes_json_and_plot(tmp_path):
    with pytest.warns(UserWarning):  # synthetic data says so
        assert main(["--quick", "--l1", "0,1", "--json", str(tmp_path / "s.json")]) == 0
    report = json.loads((tmp_path / "s.json").read_text())
    by_l1 = {r["l1"]: r for r in report["results"]}
    assert by_l1[0.0]["zero_row_ratio"] == 0.0 and by_l1[0.0]["export_size_reduction"] == 0.0
    assert by_l1[1.0]["zero_row_ratio"] > 0.5
    assert by_l1[1.0]["export_bytes"] < by_l1[1.0]["export_bytes_unpruned"]
    assert (tmp_path / "s.png").stat().st_size > 0
