"""Admission, eviction, capacity and persistence of the dynamic id map and its table."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.embedding import EmbeddingTable
from models.exceptions import ConfigError
from models.id_map import FALLBACK_ROW, DynamicIdMap


def test_ids_share_the_fallback_row_until_min_count_sightings():
    ids = DynamicIdMap(min_count=3)
    assert ids.lookup(["x"], now=0).tolist() == [FALLBACK_ROW]
    assert ids.lookup(["x"], now=1).tolist() == [FALLBACK_ROW]
    assert "x" not in ids
    row = ids.lookup(["x"], now=2).tolist()[0]
    assert row != FALLBACK_ROW and "x" in ids
    assert ids.lookup(["x"], now=3).tolist() == [row]


def test_read_only_lookups_do_not_count_sightings():
    ids = DynamicIdMap(min_count=2)
    for _ in range(5):
        assert ids.lookup(["x"], now=0, learn=False).tolist() == [FALLBACK_ROW]
    ids.lookup(["x"], now=0)
    assert "x" not in ids


def test_admitted_ids_never_collide():
    ids = DynamicIdMap(min_count=1)
    raw = [f"id{i}" for i in range(5_000)]
    rows = ids.lookup(raw, now=0)
    assert len(set(rows.tolist())) == len(raw)
    assert FALLBACK_ROW not in rows
    assert ids.lookup(raw[::-1], now=1, learn=False).tolist() == rows[::-1].tolist()


def test_int_and_str_ids_are_the_same_id():
    ids = DynamicIdMap(min_count=1)
    row = ids.lookup([42], now=0).tolist()[0]
    assert ids.lookup(["42"], now=0, learn=False).tolist() == [row]


def test_ttl_evicts_untouched_rows_and_reports_them():
    table = EmbeddingTable(2, DynamicIdMap(min_count=1), ttl=10)
    rows = table.lookup(["old", "new"], now=0)
    table.weight[torch.from_numpy(rows)] = 1.0
    table.lookup(["new"], now=8)
    assert table.evict_expired(now=12) == ["old"]
    assert table.drain_evicted_ids() == ["old"]
    assert table.drain_evicted_ids() == []
    assert "old" not in table.id_map and "new" in table.id_map
    assert not table.weight[rows[0]].any(), "an evicted row is reset to zero"
    reused = table.lookup(["fresh"], now=13).tolist()[0]
    assert reused == rows[0], "evicted rows are recycled"
    assert not table.weight[reused].any()


def test_capacity_evicts_least_recently_touched_rows():
    table = EmbeddingTable(2, DynamicIdMap(min_count=1, capacity=3), ttl=None)
    for now, raw in enumerate(["a", "b", "c"]):
        table.lookup([raw], now=now)
    table.lookup(["a"], now=3)  # b is now the least recently touched
    table.lookup(["d"], now=4)
    assert sorted(raw for raw, _ in table.id_map.items()) == ["a", "c", "d"]
    assert table.drain_evicted_ids() == ["b"]


def test_capacity_never_evicts_rows_of_the_current_lookup():
    ids = DynamicIdMap(min_count=1, capacity=2)
    rows = ids.lookup(["a", "b", "c"], now=0)
    assert len(set(rows.tolist())) == 3, "all three rows stay valid for this batch"
    ids.lookup(["d"], now=1)
    assert len(ids) == 2


def test_pending_counts_expire_with_the_ttl():
    ids = DynamicIdMap(min_count=2)
    ids.lookup(["x"], now=0)
    ids.evict_expired(now=100, ttl=10)
    ids.lookup(["x"], now=101)
    assert "x" not in ids, "the first sighting was forgotten"


def test_state_round_trip():
    ids = DynamicIdMap(min_count=2, capacity=10)
    ids.lookup(["a", "a", "b", "c", "c"], now=5)
    ids.evict_expired(now=20, ttl=100)
    meta, last_seen = ids.state()
    copy = DynamicIdMap.from_state(meta, last_seen)
    assert copy.items() == ids.items()
    assert copy.lookup(["b"], now=6).tolist() == ids.lookup(["b"], now=6).tolist()
    np.testing.assert_array_equal(copy.last_seen(np.array([1, 2])), ids.last_seen(np.array([1, 2])))


def test_bad_configuration_raises():
    with pytest.raises(ConfigError):
        DynamicIdMap(min_count=0)
    with pytest.raises(ConfigError):
        DynamicIdMap(capacity=0)
