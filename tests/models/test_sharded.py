"""Data-parallel learning (models.sharded): two ranks over gloo on loopback learn what one learner
learns from the union of their micro-batches, and every row has exactly one owner."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from core.ports import free_port
from models.sharded import owner_of

RANK = Path(__file__).with_name("sharded_rank.py")


def run_group(tmp_path: Path, idle: str = "") -> dict:
    out, port = tmp_path / "scores.npz", free_port()
    ranks = [subprocess.Popen([sys.executable, str(RANK), "--rank", str(rank), "--world-size", "2",
                               "--port", str(port), "--idle", idle, "--out", str(out)])
             for rank in range(2)]
    for rank in ranks:
        assert rank.wait(timeout=300) == 0
    with np.load(out, allow_pickle=False) as data:
        return {key: data[key] for key in data.files}


@pytest.mark.parametrize("idle", ["", "2,3"], ids=["both-learning", "rank-1-idle-two-steps"])
def test_two_ranks_learn_what_one_learner_learns_from_their_union(tmp_path, idle):
    result = run_group(tmp_path, idle)
    # min_count=1 admits at first sight, so no id reads a rank's own fallback row: the same math,
    # only summed in another order.
    np.testing.assert_allclose(result["group"], result["alone"], atol=1e-4)
    assert result["steps"][0] == result["steps"][1] == 8
    assert result["rows_group"].tolist() == result["rows_alone"].tolist()  # each id in one shard only
    assert (result["rows_rank0"] < result["rows_alone"]).all()  # rank 0 holds a part, not everything


def test_learning_changes_the_scores_in_the_group(tmp_path):
    result = run_group(tmp_path)
    assert np.ptp(result["group"]) > 1e-3  # the comparison above is not of two untrained models


def test_an_id_has_one_owner_in_every_process():
    here = [owner_of(f"i{n}", 2) for n in range(200)]
    code = "from models.sharded import owner_of; print([owner_of(f'i{n}', 2) for n in range(200)])"
    there = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           cwd=Path(__file__).resolve().parents[2]).stdout.strip()
    assert str(here) == there
    assert 60 < sum(here) < 140  # both ranks own a share
