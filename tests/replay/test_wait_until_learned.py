"""The replay's end: it waits until every answered request is learned, or accounted for."""

from __future__ import annotations

from replay.command import wait_until_learned


class VersionsOverTime:
    """A model store whose published ``records_learned`` follows a script, one step per poll."""

    def __init__(self, learned: list[int]) -> None:
        self.learned = learned
        self.polls = 0

    def current_version(self) -> int:
        self.polls += 1
        return min(self.polls, len(self.learned))

    def meta(self, version: int) -> dict:
        return {"version": version, "records_learned": self.learned[version - 1]}


def test_it_returns_the_version_that_holds_every_answered_request():
    store = VersionsOverTime([3, 7, 10, 10])
    meta = wait_until_learned(store, answered=10, timeout_s=30)
    assert meta["records_learned"] == 10 and meta["version"] == 3 and store.polls == 3


def test_a_record_the_joiner_emitted_is_waited_for_even_when_it_comes_late():
    # learned stays at 9 for a while; the joiner emitted 10: not done, not quiet (quiet_s 30)
    store = VersionsOverTime([9, 9, 9, 9, 10])
    counts = {"joiner_records": 10, "joiner_orphan": 0}
    meta = wait_until_learned(store, answered=10, timeout_s=30, joiner=lambda: counts)
    assert meta["records_learned"] == 10


def test_requests_the_joiner_dropped_as_orphans_end_the_wait_early():
    store = VersionsOverTime([8, 9, 9, 9, 9, 9, 9])
    counts = {"joiner_records": 9, "joiner_orphan": 1}
    meta = wait_until_learned(store, answered=10, timeout_s=30, joiner=lambda: counts)
    assert meta["records_learned"] == 9 and store.polls == 2


def test_without_progress_it_gives_up_after_the_quiet_spell():
    store = VersionsOverTime([4])
    meta = wait_until_learned(store, answered=10, timeout_s=30, quiet_s=1.0)
    assert meta["records_learned"] == 4 and meta["expected_records"] == 10 and store.polls <= 5
