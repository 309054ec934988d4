"""Consumer lag against a brute-force model of a partition log."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from monitoring.exceptions import InvalidOffsetsError
from monitoring.lag import consumer_lag, record_consumer_lag


class PartitionLog:
    """A log that only grows at the end and is trimmed at the start by retention."""

    def __init__(self, start: int, written: int) -> None:
        self.offsets = list(range(start, start + written))
        self.start = start
        self.end = start + written

    def unread(self, committed: int | None) -> int:
        position = self.start if committed is None else committed
        return sum(offset >= position for offset in self.offsets)


@given(
    st.lists(
        st.tuples(
            st.integers(0, 50),  # log start offset (older records trimmed by retention)
            st.integers(0, 60),  # records written since
            st.one_of(st.none(), st.integers(0, 70)),  # records consumed; past the end is a race
        ),
        min_size=1, max_size=6,
    )
)
def test_lag_equals_unread_messages(partitions):
    logs, committed = {}, {}
    for p, (start, written, consumed) in enumerate(partitions):
        logs[("t", p)] = PartitionLog(start, written)
        committed[("t", p)] = None if consumed is None else start + consumed
    got = consumer_lag(
        {tp: log.end for tp, log in logs.items()},
        committed,
        start_offsets={tp: log.start for tp, log in logs.items()},
    )
    assert got == {tp: log.unread(committed[tp]) for tp, log in logs.items()}


def test_missing_commit_without_start_offsets_counts_from_zero():
    assert consumer_lag({("a", 0): 7, ("a", 1): 3}, {("a", 1): 1}) == {("a", 0): 7, ("a", 1): 2}


def test_only_partitions_with_end_offsets_are_reported():
    assert consumer_lag({("a", 0): 5}, {("a", 0): 5, ("a", 9): 100}) == {("a", 0): 0}


@pytest.mark.parametrize("end, committed", [(-1, 0), (5, -2), (5.0, 1), (True, 0), (5, "3")])
def test_invalid_offsets_raise(end, committed):
    with pytest.raises(InvalidOffsetsError):
        consumer_lag({("a", 0): end}, {("a", 0): committed})


def test_invalid_offsets_are_value_errors():
    with pytest.raises(ValueError):
        consumer_lag({("a", 0): -5}, {})


def test_record_sets_one_gauge_per_partition(metrics):
    record_consumer_lag(metrics, "joiner", {("prerank.impressions", 0): 12, ("prerank.impressions", 1): 0})
    record_consumer_lag(metrics, "joiner", {("prerank.impressions", 0): 4})
    get = metrics.registry.get_sample_value
    labels = {"agent": "joiner", "topic": "prerank.impressions"}
    assert get("prerank_consumer_lag_messages", {**labels, "partition": "0"}) == 4.0
    assert get("prerank_consumer_lag_messages", {**labels, "partition": "1"}) == 0.0
