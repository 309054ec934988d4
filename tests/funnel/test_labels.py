"""Label building and the label join: hand examples and Hypothesis properties."""

from __future__ import annotations

import json
import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from funnel.labels import (
    Feedback,
    JoinConfig,
    LabelConfig,
    LabelJoin,
    Ranked,
    build_request_sample,
)
from models.features import ItemFeatures, UserFeatures

ITEMS = [f"i{k}" for k in range(30)]
CANDIDATES = [ItemFeatures(i, author_id="a") for i in ITEMS]
USER = UserFeatures("u")

ranked_lists = st.lists(
    st.builds(Ranked, item_id=st.sampled_from(ITEMS), rank=st.integers(0, 20),
              logits=st.fixed_dictionaries({"click": st.floats(-5, 5)}, optional={"long_view": st.floats(-5, 5)})),
    max_size=15,
)
feedback_lists = st.lists(
    st.builds(Feedback, item_id=st.sampled_from(ITEMS + ["outside"]), ts_ms=st.integers(0, 100),
              position=st.integers(0, 5), click=st.integers(0, 1), long_view=st.integers(0, 1),
              like=st.integers(0, 1)),
    max_size=8,
)


@settings(max_examples=300, deadline=None)
@given(ranked_lists, feedback_lists, st.integers(1, 12), st.integers(0, 10), st.text(min_size=1, max_size=5))
def test_sample_properties(ranked, shown, top_n, n_easy, request_id):
    config = LabelConfig(top_n=top_n, n_easy_negatives=n_easy)
    sample = build_request_sample(request_id, 7, USER, CANDIDATES, ranked, shown, config)
    ids = [item.item_id for item in sample.items]
    first_entry = {}
    for r in ranked:
        first_entry.setdefault(r.item_id, r)
    exposed = {f.item_id for f in shown}

    assert len(ids) == len(set(ids))
    assert sum(sample.cascade) == min(top_n, len(first_entry))  # labels count = top-N
    positive_ranks = [first_entry[i].rank for i, c in zip(ids, sample.cascade) if c]
    negative_ranks = [first_entry[i].rank for i, c in zip(ids, sample.cascade) if not c and i in first_entry]
    assert not positive_ranks or not negative_ranks or max(positive_ranks) <= min(negative_ranks)
    assert all(i in first_entry for i, c in zip(ids, sample.cascade) if c)
    for k, item_id in enumerate(ids):
        mine = [f for f in shown if f.item_id == item_id]
        for name in ("click", "long_view", "like"):
            expected = max((getattr(f, name) for f in mine), default=-1)  # no leak to unexposed items
            assert getattr(sample, name)[k] == expected
        for objective, logits in sample.teacher_logits.items():
            known = item_id in first_entry and objective in first_entry[item_id].logits
            assert math.isnan(logits[k]) != known
            if known:
                assert logits[k] == first_entry[item_id].logits[objective]
    easy = [i for i in ids if i not in first_entry and i not in exposed]
    pool = [i for i in ITEMS if i not in first_entry and i not in exposed]
    assert len(easy) == min(n_easy, len(pool)) and set(easy) <= set(pool)
    assert set(ids) == set(first_entry) | exposed | set(easy)
    again = build_request_sample(request_id, 7, USER, CANDIDATES, ranked, shown, config)
    assert [i.item_id for i in again.items] == ids  # seeded by the request id


def test_sample_hand_example():
    ranked = [Ranked("i3", 2, {"click": 0.1}), Ranked("i1", 0, {"click": 0.9}), Ranked("i2", 1, {"click": 0.5}),
              Ranked("i1", 5, {"click": -9.0})]  # a repeated item keeps its first entry
    shown = [Feedback("i2", 10, click=1), Feedback("i2", 11, position=1, long_view=1), Feedback("i9", 12, like=1)]
    sample = build_request_sample("r", 5, USER, CANDIDATES, ranked, shown, LabelConfig(top_n=2, n_easy_negatives=0))
    assert [i.item_id for i in sample.items] == ["i1", "i2", "i3", "i9"]
    assert sample.cascade == (1, 1, 0, 0)
    assert sample.click == (-1, 1, -1, 0) and sample.long_view == (-1, 1, -1, 0) and sample.like == (-1, 0, -1, 1)
    assert sample.teacher_logits["click"][:3] == (0.9, 0.5, 0.1) and math.isnan(sample.teacher_logits["click"][3])
    assert sample.items[0].author_id == "a" and sample.user is USER and sample.ts_ms == 5


def test_label_config_validation():
    with pytest.raises(ValueError):
        LabelConfig(top_n=0)
    with pytest.raises(ValueError):
        LabelConfig(n_easy_negatives=-1)
    with pytest.raises(ValueError):
        JoinConfig(window_ms=-1)


# ---- the join --------------------------------------------------------------------------------

def make_events(spec, rng: random.Random):
    """spec: per request (has_rank_scores, n_impressions, duplicate_rank, duplicate_impression)."""
    events = []
    for k, (has_rank, n_imp, dup_rank, dup_imp) in enumerate(spec):
        rid, ts = f"r{k}", 1_000 * k
        if has_rank:
            for _ in range(1 + dup_rank):
                events.append(("rank", rid, ts, [Ranked(f"i{j}", j, {"click": float(j)}) for j in range(3)]))
        for j in range(n_imp):
            for _ in range(1 + (dup_imp and j == 0)):
                events.append(("imp", rid, Feedback(f"i{j}", ts + 10 + j, position=j, click=j % 2)))
    rng.shuffle(events)
    return events


def feed(join: LabelJoin, events):
    out = []
    for event in events:
        if event[0] == "rank":
            out += join.add_rank_scores(event[1], "u", event[2], event[3], candidates=ITEMS)
        else:
            out += join.add_impression(event[1], "u", event[2])
    return out


request_specs = st.lists(st.tuples(st.booleans(), st.integers(0, 3), st.booleans(), st.booleans()), max_size=8)


@settings(max_examples=200, deadline=None)
@given(request_specs, st.integers(0, 2**32 - 1))
def test_join_with_a_wide_window_emits_each_ranked_request_once_with_all_its_impressions(spec, seed):
    events = make_events(spec, random.Random(seed))
    join = LabelJoin(JoinConfig(window_ms=10**9))
    emitted = feed(join, events) + join.flush()
    ids = [p.request_id for p in emitted]
    assert sorted(ids) == sorted(f"r{k}" for k, s in enumerate(spec) if s[0])  # exactly once
    for part in emitted:
        has_rank, n_imp, _, _ = spec[int(part.request_id[1:])]
        assert sorted(f.item_id for f in part.impressions) == [f"i{j}" for j in range(n_imp)]
        assert [r.item_id for r in part.ranked] == ["i0", "i1", "i2"] and part.candidates == tuple(ITEMS)
    c = join.counters
    assert c["duplicate_rank_scores"] == sum(1 for s in spec if s[0] and s[2])
    assert c["duplicate_impressions"] == sum(1 for s in spec if s[1] and s[3])
    assert c["orphan_impressions"] == sum(s[1] for s in spec if not s[0])
    assert c["emitted_without_impressions"] == sum(1 for s in spec if s[0] and not s[1])
    assert c["late_rank_scores"] == c["late_impressions"] == 0


@settings(max_examples=200, deadline=None)
@given(request_specs, st.integers(0, 2**32 - 1), st.integers(0, 3_000))
def test_join_accounts_for_every_event_and_never_emits_twice(spec, seed, window):
    events = make_events(spec, random.Random(seed))
    join = LabelJoin(JoinConfig(window_ms=window, retention_ms=10**9))
    emitted = feed(join, events) + join.flush()
    ids = [p.request_id for p in emitted]
    assert len(ids) == len(set(ids))
    c = join.counters
    n_rank = sum(1 for e in events if e[0] == "rank")
    n_imp = len(events) - n_rank
    assert c["rank_scores"] + c["duplicate_rank_scores"] + c["late_rank_scores"] == n_rank
    assert c["impressions"] + c["duplicate_impressions"] + c["late_impressions"] == n_imp
    assert sum(len(p.impressions) for p in emitted) + c["orphan_impressions"] == c["impressions"]
    assert c["emitted"] == len(emitted) == c["rank_scores"]
    assert not join.pending


def test_join_late_and_orphan_rules():
    join = LabelJoin(JoinConfig(window_ms=100, retention_ms=1_000))
    assert join.add_rank_scores("a", "u", 0, [Ranked("x", 0, {"click": 1.0})]) == []
    assert join.add_impression("b", "u", Feedback("y", 50)) == []  # b never gets rank-scores
    closed = join.add_impression("c", "u", Feedback("z", 160))  # watermark 160 closes a and b
    assert [p.request_id for p in closed] == ["a"] and closed[0].impressions == []
    assert join.counters["orphan_requests"] == 1 and join.counters["orphan_impressions"] == 1
    assert join.add_impression("a", "u", Feedback("x", 161)) == []  # a is closed: late
    assert join.add_rank_scores("d", "u", 10, [Ranked("x", 0, {})]) == []  # window ended at 110: late
    assert join.add_impression("c", "u", Feedback("z", 300)) == []  # c (from 160) ends at 260: orphan
    assert join.counters["late_impressions"] == 1 and join.counters["late_rank_scores"] == 1
    assert join.counters["orphan_requests"] == 2 and join.counters["orphan_impressions"] == 3
    assert join.add_rank_scores("c", "u", 160, [Ranked("z", 0, {})]) == []  # c closed at 300: late
    assert join.counters["late_rank_scores"] == 2
    join.advance(5_000)  # retention passed: closed ids are forgotten
    assert "a" not in join.closed


@settings(max_examples=100, deadline=None)
@given(request_specs, st.integers(0, 2**32 - 1), st.integers(0, 3_000), st.data())
def test_join_resumes_exactly_from_json_state(spec, seed, window, data):
    events = make_events(spec, random.Random(seed))
    config = JoinConfig(window_ms=window, retention_ms=10**9)
    straight = LabelJoin(config)
    expected = [p.to_dict() for p in feed(straight, events) + straight.flush()]

    cut = data.draw(st.integers(0, len(events)))
    first = LabelJoin(config)
    got = feed(first, events[:cut])
    state = {name: json.loads(json.dumps(dict(getattr(first, name)))) for name in ("pending", "impressions", "closed")}
    second = LabelJoin(config, **state, watermark_ms=first.watermark_ms)
    got += feed(second, events[cut:]) + second.flush()
    assert [p.to_dict() for p in got] == expected


class CountingDict(dict):
    """A dict that counts the bytes of every value written, as a changelog would carry them."""

    def __init__(self) -> None:
        super().__init__()
        self.written_bytes = 0

    def __setitem__(self, key, value) -> None:
        self.written_bytes += len(json.dumps(value))
        super().__setitem__(key, value)


def test_an_impression_writes_its_own_row_not_the_whole_request():
    pending, impressions = CountingDict(), CountingDict()
    join = LabelJoin(JoinConfig(window_ms=10**9), pending=pending, impressions=impressions)
    big = [Ranked(f"i{j}", j, {"click": 0.5}) for j in range(100)]
    join.add_rank_scores("r", "u", 0, big, candidates=[f"c{j}" for j in range(1000)], user={"user_id": "u"})
    head_bytes = pending.written_bytes
    for j in range(50):
        join.add_impression("r", "u", Feedback(f"i{j}", ts_ms=10 + j, position=j))
    assert pending.written_bytes == head_bytes  # the head (with 1000 candidates) is written once
    assert impressions.written_bytes < 50 * 100  # ~60 bytes per exposure
    (part,) = join.flush()
    assert len(part.impressions) == 50 and part.user == {"user_id": "u"} and len(part.candidates) == 1000
    assert not pending and not impressions


def test_a_row_kept_without_its_head_is_joined_again():
    """A crash may keep one of an event's two writes: an exposure row whose head was lost."""
    first = LabelJoin(JoinConfig(window_ms=100))
    first.add_impression("r", "u", Feedback("a", ts_ms=10, click=1))
    impressions = dict(first.impressions)  # the head write was lost
    second = LabelJoin(JoinConfig(window_ms=100), impressions=impressions, watermark_ms=first.watermark_ms)
    second.add_impression("r", "u", Feedback("a", ts_ms=10, click=1))  # the replayed event
    second.add_rank_scores("r", "u", 5, [Ranked("a", 0, {"click": 1.0})])
    (part,) = second.flush()
    assert [f.item_id for f in part.impressions] == ["a"] and second.counters["duplicate_impressions"] == 0


def test_pure_modules_import_no_broker_or_store_client():
    import subprocess
    import sys

    code = (
        "import sys, funnel.labels, funnel.history\n"
        "bad = sorted({m.split('.')[0] for m in sys.modules} & {'faust', 'kafka', 'aiokafka', 'redis'})\n"
        "print(','.join(bad))\n"
    )
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=repo)
    assert result.stdout.strip() == ""


# ---- the watermark's bound (issue 13) ---------------------------------------------------------

NOW = 1_700_000_000_000
HOUR = 3_600_000


def test_an_event_23_hours_ahead_does_not_make_on_time_events_late():
    config = JoinConfig(window_ms=60_000, max_ahead_ms=60_000)
    join = LabelJoin(config, clock_ms=lambda: NOW)
    for r in range(20):  # a partition's steady traffic
        join.add_rank_scores(f"before{r}", "u", NOW - 20_000 + 1000 * r, [Ranked("a", 0, {"click": 1.0})])
    join.add_impression("evil", "u", Feedback("x", ts_ms=NOW + 23 * HOUR))  # within max_future_ms (24 h)
    assert join.counters["future_impressions"] == 0 and join.counters["ahead_impressions"] == 1
    assert join.watermark_ms <= NOW + config.max_ahead_ms  # moved by at most max_ahead_ms
    for r in range(50):  # on time: each is joined, none is late
        join.add_rank_scores(f"after{r}", "u", NOW + 100 * r, [Ranked("a", 0, {"click": 1.0})])
        join.add_impression(f"after{r}", "u", Feedback("a", ts_ms=NOW + 100 * r + 10, click=1))
    assert join.counters["late_rank_scores"] == join.counters["late_impressions"] == 0
    emitted = {p.request_id: p for p in join.flush()}
    assert all(len(emitted[f"after{r}"].impressions) == 1 for r in range(50))
    assert join.counters["orphan_impressions"] == 1  # the outlier itself: joined, never ranked


def test_repeating_the_outlier_does_not_move_the_watermark_further():
    join = LabelJoin(JoinConfig(window_ms=60_000, max_ahead_ms=60_000), clock_ms=lambda: NOW)
    for r in range(15):
        join.add_impression(f"r{r}", "u", Feedback("a", ts_ms=NOW + r))
    for k in range(7):  # a minority of the last 15 event times
        join.add_impression(f"evil{k}", "u", Feedback("x", ts_ms=NOW + 23 * HOUR + k))
    assert join.watermark_ms <= NOW + 15 + 60_000
    assert join.counters["ahead_impressions"] == 7
    join.add_rank_scores("on-time", "u", NOW + 20, [Ranked("a", 0, {"click": 1.0})])
    assert join.counters["late_rank_scores"] == 0


def test_a_gradual_clock_advance_is_followed():
    config = JoinConfig(window_ms=60_000, max_ahead_ms=60_000)
    join = LabelJoin(config, clock_ms=lambda: NOW + 10 * HOUR)
    ts, emitted = NOW, []
    for r in range(3000):  # 5 s per event: 4 hours 10 minutes of event time
        ts += 5_000
        emitted += join.add_rank_scores(f"r{r}", "u", ts, [Ranked("a", 0, {"click": 1.0})])
        assert join.watermark_ms == ts
    assert join.counters["ahead_rank_scores"] == 0 and join.counters["late_rank_scores"] == 0
    assert len(emitted) == 3000 - 13  # every window closed once the watermark passed its end (60 s: 12 steps)


def test_a_jump_of_the_clock_is_followed_after_most_recent_events_carry_it():
    config = JoinConfig(window_ms=60_000, max_ahead_ms=60_000, reference_events=15)
    join = LabelJoin(config, clock_ms=lambda: NOW + 10 * HOUR)
    for r in range(30):
        join.add_impression(f"old{r}", "u", Feedback("a", ts_ms=NOW + r))
    later = NOW + 5 * HOUR  # a quiet partition wakes up (or a replay crosses a night)
    for r in range(8):
        join.add_rank_scores(f"new{r}", "u", later + r, [Ranked("a", 0, {"click": 1.0})])
    assert join.watermark_ms == later + 7  # 8 of the last 15 times: the reference is there
    assert join.counters["ahead_rank_scores"] == 7  # held back on the way, none dropped
    assert join.counters["rank_scores"] == 8 and join.counters["late_rank_scores"] == 0
    assert {p.request_id for p in join.flush()} == {f"new{r}" for r in range(8)}


def test_the_watermark_bound_is_validated():
    with pytest.raises(ValueError):
        JoinConfig(max_ahead_ms=-1)
    with pytest.raises(ValueError):
        JoinConfig(reference_events=0)


# ---- linear time (issue 13) -------------------------------------------------------------------

def _one_request_with(n: int) -> float:
    import time

    join = LabelJoin(JoinConfig(window_ms=10**9))
    started = time.perf_counter()
    join.add_rank_scores("r", "u", 0, [Ranked(f"i{j}", j, {"click": 0.1}) for j in range(50)],
                         candidates=[f"c{j}" for j in range(1000)], user={"user_id": "u"})
    for j in range(n):
        join.add_impression("r", "u", Feedback(f"e{j}", ts_ms=1 + j, position=j, click=j % 2))
    (part,) = join.flush()
    features = [ItemFeatures(i) for i in part.candidates] + [ItemFeatures(f.item_id) for f in part.impressions]
    sample = build_request_sample("r", 0, USER, features, part.ranked,
                                  part.impressions, LabelConfig())
    assert len(part.impressions) == n and len(sample.items) == 50 + n + 20
    return time.perf_counter() - started


def test_one_request_with_10000_impressions_is_joined_in_linear_time():
    small = min(_one_request_with(1_000) for _ in range(3))
    large = min(_one_request_with(10_000) for _ in range(3))
    # Linear is 10x; quadratic would be ~100x. The bound is generous for a shared machine.
    assert large / small < 30, (small, large)
