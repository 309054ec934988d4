"""The trainer's recent-id set against a reference model, and its round trip through a file."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from funnel.dedupe import RecentIds


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from([f"r{k}" for k in range(12)]), max_size=60), st.integers(1, 8))
def test_remembers_exactly_the_last_capacity_new_ids(ids, capacity):
    recent, window = RecentIds(capacity), []
    for request_id in ids:
        fresh = request_id not in window
        assert recent.add(request_id) == fresh
        if fresh:
            window = (window + [request_id])[-capacity:]
        assert recent.to_list() == window and len(recent) == len(window)


def test_survives_a_save_and_load_and_a_smaller_capacity(tmp_path):
    recent = RecentIds.from_list([f"r{k}" for k in range(10)], capacity=10)
    recent.save(tmp_path / "ids.json")
    assert RecentIds.load(tmp_path / "ids.json", capacity=10).to_list() == recent.to_list()
    assert RecentIds.load(tmp_path / "ids.json", capacity=3).to_list() == ["r7", "r8", "r9"]
    assert len(RecentIds.load(tmp_path / "absent.json", capacity=3)) == 0  # a checkpoint from before the ids


def test_capacity_must_be_positive():
    with pytest.raises(ValueError):
        RecentIds(0)
