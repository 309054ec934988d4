"""User history: bounds, recency, sessions, context, JSON round trip, seeding."""

from __future__ import annotations

import datetime as dt
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from funnel.history import HistoryConfig, UserHistory, local_hour_and_weekday
from models.features import ItemFeatures


def item(k: int) -> ItemFeatures:
    return ItemFeatures(f"i{k}", author_id=f"a{k % 3}", tags=(f"t{k % 4}",))


def test_recent_lists_are_distinct_bounded_and_newest_last():
    history = UserHistory("u", HistoryConfig(max_items=3, max_authors=2, max_tags=10))
    for ts, k in enumerate([1, 2, 3, 1, 4]):
        history.observe(item(k), ts)
    assert history.items == ("i3", "i1", "i4")
    assert history.authors == ("a0", "a1")  # a1, a2, a0, a1, a1 seen: the last two distinct
    assert history.tags == ("t2", "t3", "t1", "t0")


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(0, 20), max_size=60), st.integers(0, 6))
def test_items_equal_the_last_distinct_values(stream, bound):
    history = UserHistory("u", HistoryConfig(max_items=bound))
    for ts, k in enumerate(stream):
        history.observe(item(k), ts)
    expected: list[str] = []
    for k in reversed(stream):  # newest first, first occurrence wins
        if f"i{k}" not in expected:
            expected.append(f"i{k}")
    assert history.items == tuple(reversed(expected[:bound])) if bound else history.items == ()


def test_sessions_split_on_the_gap_and_ignore_late_events():
    history = UserHistory("u", HistoryConfig(session_gap_ms=100, max_session_items=2))
    for ts, k in [(0, 1), (50, 2), (140, 3)]:
        history.observe(item(k), ts)
    user = history.snapshot(ts_ms=200)
    assert user.session_items == ("i2", "i3") and user.session_length == 3
    history.observe(item(4), 10)  # late: enters the history, not the session
    assert "i4" in history.items and history.snapshot(200).session_length == 3
    history.observe(item(5), 400)  # 260 ms pause: a new session
    assert history.snapshot(450).session_items == ("i5",)
    assert history.snapshot(501).session_items == () and history.snapshot(501).session_length == 0


def test_snapshot_context_matches_datetime():
    history = UserHistory("u", HistoryConfig(utc_offset_hours=8.0))
    ts = 1_651_400_000_000
    local = dt.datetime.fromtimestamp(ts / 1000, dt.timezone(dt.timedelta(hours=8)))
    user = history.snapshot(ts, tab=3, profile={"age": "20"})
    assert (user.hour, user.weekday, user.tab, dict(user.profile)) == (local.hour, local.weekday(), 3, {"age": "20"})
    for offset in (-5.0, 0.0, 5.5):
        local = dt.datetime.fromtimestamp(ts / 1000, dt.timezone(dt.timedelta(hours=offset)))
        assert local_hour_and_weekday(ts, offset) == (local.hour, local.weekday())


def test_json_round_trip_and_truncation():
    history = UserHistory("u", HistoryConfig(session_gap_ms=1_000))
    for ts, k in enumerate(range(10)):
        history.observe(item(k), ts)
    state = json.loads(json.dumps(history.to_dict()))
    again = UserHistory.from_dict(state, history.config)
    assert again.to_dict() == history.to_dict()
    assert again.snapshot(20) == history.snapshot(20)
    small = UserHistory.from_dict(state, HistoryConfig(max_items=2, max_tags=1))
    assert small.items == ("i8", "i9") and small.tags == ("t1",)
    with pytest.raises(ValueError, match="version"):
        UserHistory.from_dict({**state, "v": 99})


def test_seeded_history_uses_the_catalog_and_has_no_session():
    catalog = {f"i{k}": item(k) for k in range(5)}
    history = UserHistory.seeded("u", ["i1", "i1", "i2", "zz"], last_ts_ms=1_000, catalog=catalog)
    assert history.items == ("i1", "i2", "zz")
    assert history.authors == ("a1", "a2") and history.tags == ("t1", "t2")
    user = history.snapshot(ts_ms=1_000 + 10 * 60 * 60_000)
    assert user.history_items == ("i1", "i2", "zz") and user.session_items == ()


def test_bad_config_is_rejected():
    with pytest.raises(ValueError):
        HistoryConfig(max_items=-1)


def test_a_history_longer_than_a_snapshot_may_carry_is_refused_at_configuration():
    from streams.training_samples import MAX_HISTORY

    with pytest.raises(ValueError, match="max_tags"):
        HistoryConfig(max_tags=MAX_HISTORY + 1)
    HistoryConfig(max_tags=MAX_HISTORY)  # the bound itself is fine
