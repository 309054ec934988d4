"""Request grouping: pages are maximal same-user, same-tab runs with small gaps."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from replay.events import Exposure
from replay.exceptions import ReplayConfigError
from replay.grouping import group_requests

exposures = st.lists(
    st.builds(Exposure, user_id=st.sampled_from("uvw"), item_id=st.sampled_from("abcdef"),
              ts_ms=st.integers(0, 2_000), tab=st.integers(0, 2)),
    max_size=60,
)


@settings(max_examples=200, deadline=None)
@given(exposures, st.integers(0, 300))
def test_pages_partition_the_log_into_maximal_runs(log, gap):
    requests = group_requests(log, gap_ms=gap)
    assert Counter(e for r in requests for e in r.exposures) == Counter(log)
    assert len({r.request_id for r in requests}) == len(requests)
    assert [r.ts_ms for r in requests] == sorted(r.ts_ms for r in requests)
    for request in requests:
        assert request.ts_ms == request.exposures[0].ts_ms
        assert {(e.user_id, e.tab) for e in request.exposures} == {(request.user_id, request.tab)}
        steps = [b.ts_ms - a.ts_ms for a, b in zip(request.exposures, request.exposures[1:])]
        assert all(0 <= step <= gap for step in steps)
    # the definition, exposure by exposure: a user's consecutive exposures (stable time order)
    # share a page exactly when they share a tab and the pause is at most the gap
    page_of = {id(e): r.request_id for r in requests for e in r.exposures}
    for user in "uvw":
        mine = sorted((e for e in log if e.user_id == user), key=lambda e: e.ts_ms)
        for a, b in zip(mine, mine[1:]):
            together = a.tab == b.tab and b.ts_ms - a.ts_ms <= gap
            assert (page_of[id(a)] == page_of[id(b)]) == together


def test_hand_example():
    log = [Exposure("u", "a", 0, tab=1), Exposure("u", "b", 40, tab=1), Exposure("u", "c", 100, tab=1),
           Exposure("u", "d", 101, tab=2), Exposure("v", "e", 50, tab=1)]
    pages = [(r.request_id, r.item_ids) for r in group_requests(log, gap_ms=50)]
    assert pages == [("u-1-0", ("a", "b")), ("v-1-50", ("e",)), ("u-1-100", ("c",)), ("u-2-101", ("d",))]


def test_same_millisecond_tab_flips_get_distinct_ids():
    log = [Exposure("u", "a", 5, tab=1), Exposure("u", "b", 5, tab=2), Exposure("u", "c", 5, tab=1)]
    ids = [r.request_id for r in group_requests(log, gap_ms=10)]
    assert sorted(ids) == ["u-1-5", "u-1-5-1", "u-2-5"]


def test_negative_gap_is_rejected():
    with pytest.raises(ReplayConfigError):
        group_requests([], gap_ms=-1)
