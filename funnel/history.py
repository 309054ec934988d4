"""Per-user history state: recent items, authors, tags and the current session.

Pure state (no broker, no store): the user-history agent keeps one :class:`UserHistory` per user in
a Faust table as the JSON-able dict of :meth:`UserHistory.to_dict`, feeds it impressions with
:meth:`UserHistory.observe`, and the label joiner and scorer take :meth:`UserHistory.snapshot` at
request time. Recent lists hold distinct values, oldest first; seeing a value again moves it to the
end. A session is a run of impressions with gaps of at most ``session_gap_ms``.

To avoid leakage, take the snapshot of a request *before* observing that request's impressions.

>>> from models.features import ItemFeatures
>>> history = UserHistory("u1", HistoryConfig(max_items=2, session_gap_ms=1_000))
>>> history.observe(ItemFeatures("i1", author_id="a", tags=("t1",)), ts_ms=0)
>>> history.observe(ItemFeatures("i2", author_id="b", tags=("t1", "t2")), ts_ms=500)
>>> history.observe(ItemFeatures("i3", author_id="a"), ts_ms=900)
>>> history.items, history.authors, history.tags
(('i2', 'i3'), ('b', 'a'), ('t1', 't2'))
>>> user = history.snapshot(ts_ms=1_500, tab=2)
>>> user.session_items, user.session_length, user.tab
(('i1', 'i2', 'i3'), 3, 2)
>>> history.snapshot(ts_ms=5_000).session_length  # the session ended after a 1 s pause
0
>>> UserHistory.from_dict(history.to_dict(), history.config).to_dict() == history.to_dict()
True
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

from models.features import ItemFeatures, UserFeatures
from streams.training_samples import MAX_HISTORY

DAY_MS = 86_400_000
HOUR_MS = 3_600_000
STATE_VERSION = 1


@dataclass(frozen=True)
class HistoryConfig:
    """Bounds of a user's history and how sessions and local time are derived.

    ``utc_offset_hours`` turns epoch time into the local hour and weekday of the context
    (KuaiRand is logged in Beijing time, UTC+8).
    """

    max_items: int = 50
    max_authors: int = 20
    max_tags: int = 30
    max_session_items: int = 20
    session_gap_ms: int = 30 * 60_000
    utc_offset_hours: float = 8.0

    def __post_init__(self) -> None:
        for name in ("max_items", "max_authors", "max_tags", "max_session_items", "session_gap_ms"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0:
                raise ValueError(f"HistoryConfig.{name} must be a non-negative int, got {value!r}")
        for name in ("max_items", "max_authors", "max_tags", "max_session_items"):
            if getattr(self, name) > MAX_HISTORY:  # a snapshot must stay a valid wire record
                raise ValueError(f"HistoryConfig.{name} must be <= {MAX_HISTORY}, got {getattr(self, name)}")


def local_hour_and_weekday(ts_ms: int, utc_offset_hours: float) -> tuple[int, int]:
    """Local hour (0..23) and weekday (Monday = 0) of an epoch time.

    >>> local_hour_and_weekday(0, 0.0)  # 1970-01-01 00:00 UTC was a Thursday
    (0, 3)
    >>> local_hour_and_weekday(1_650_816_000_000 + 5 * 60_000, 8.0)  # Mon 2022-04-25 00:05 Beijing
    (0, 0)
    """
    local_ms = ts_ms + int(utc_offset_hours * HOUR_MS)
    return (local_ms % DAY_MS) // HOUR_MS, (local_ms // DAY_MS + 3) % 7


def _push_distinct(values: list[str], new: Iterable[str], bound: int) -> None:
    for value in new:
        if value in values:
            values.remove(value)
        values.append(value)
    del values[: max(0, len(values) - bound)]


def _newest(values: Iterable, bound: int) -> list[str]:
    values = [str(v) for v in values]
    return values[max(0, len(values) - bound) :]


class UserHistory:
    """One user's recent items, authors, tags and current session."""

    __slots__ = ("user_id", "config", "_items", "_authors", "_tags", "_session", "session_length", "last_ts_ms")

    def __init__(self, user_id: str, config: HistoryConfig = HistoryConfig()) -> None:
        self.user_id = user_id
        self.config = config
        self._items: list[str] = []
        self._authors: list[str] = []
        self._tags: list[str] = []
        self._session: list[str] = []
        self.session_length = 0
        self.last_ts_ms: int | None = None

    @property
    def items(self) -> tuple[str, ...]:
        return tuple(self._items)

    @property
    def authors(self) -> tuple[str, ...]:
        return tuple(self._authors)

    @property
    def tags(self) -> tuple[str, ...]:
        return tuple(self._tags)

    @classmethod
    def seeded(
        cls,
        user_id: str,
        item_ids: Iterable[str],
        last_ts_ms: int,
        catalog: Mapping[str, ItemFeatures],
        config: HistoryConfig = HistoryConfig(),
    ) -> UserHistory:
        """A history filled from the pre-period (oldest first); unknown items keep only their id.

        The seed's session is over: it is at least ``session_gap_ms`` in the past of any later event.
        """
        history = cls(user_id, config)
        for item_id in item_ids:
            history._remember(catalog.get(item_id) or ItemFeatures(item_id))
        history.last_ts_ms = last_ts_ms
        return history

    def observe(self, item: ItemFeatures, ts_ms: int) -> None:
        """Record an impression of ``item`` at ``ts_ms``.

        A late impression (older than the latest one) still enters the history but does not
        open or extend a session.
        """
        self._remember(item)
        if self.last_ts_ms is not None and ts_ms < self.last_ts_ms:
            return
        if self.last_ts_ms is None or ts_ms - self.last_ts_ms > self.config.session_gap_ms:
            self._session.clear()
            self.session_length = 0
        self._session.append(item.item_id)
        del self._session[: max(0, len(self._session) - self.config.max_session_items)]
        self.session_length += 1
        self.last_ts_ms = ts_ms

    def _remember(self, item: ItemFeatures) -> None:
        _push_distinct(self._items, (item.item_id,), self.config.max_items)
        if item.author_id:
            _push_distinct(self._authors, (item.author_id,), self.config.max_authors)
        _push_distinct(self._tags, item.tags, self.config.max_tags)

    def in_session(self, ts_ms: int) -> bool:
        """Whether a request at ``ts_ms`` continues the current session."""
        return (
            self.session_length > 0
            and self.last_ts_ms is not None
            and 0 <= ts_ms - self.last_ts_ms <= self.config.session_gap_ms
        )

    def snapshot(self, ts_ms: int, tab: int = 0, profile: Mapping[str, str] | None = None) -> UserFeatures:
        """The user as a ranker sees them for a request at ``ts_ms`` on ``tab``."""
        hour, weekday = local_hour_and_weekday(ts_ms, self.config.utc_offset_hours)
        in_session = self.in_session(ts_ms)
        return UserFeatures(
            user_id=self.user_id,
            profile=MappingProxyType(dict(profile or {})),
            tab=tab,
            hour=hour,
            weekday=weekday,
            history_items=tuple(self._items),
            history_authors=tuple(self._authors),
            history_tags=tuple(self._tags),
            session_items=tuple(self._session) if in_session else (),
            session_length=self.session_length if in_session else 0,
        )

    def to_dict(self) -> dict:
        """A JSON-able dict (lists, ints and strings only)."""
        return {
            "v": STATE_VERSION,
            "user_id": self.user_id,
            "items": list(self._items),
            "authors": list(self._authors),
            "tags": list(self._tags),
            "session": list(self._session),
            "session_length": self.session_length,
            "last_ts_ms": self.last_ts_ms,
        }

    @classmethod
    def from_dict(cls, state: Mapping, config: HistoryConfig = HistoryConfig()) -> UserHistory:
        """Rebuild from :meth:`to_dict`; lists longer than ``config`` allows are cut to the newest."""
        if state.get("v") != STATE_VERSION:
            raise ValueError(f"unsupported UserHistory state version {state.get('v')!r}, expected {STATE_VERSION}")
        history = cls(str(state["user_id"]), config)
        history._items = _newest(state["items"], config.max_items)
        history._authors = _newest(state["authors"], config.max_authors)
        history._tags = _newest(state["tags"], config.max_tags)
        history._session = _newest(state["session"], config.max_session_items)
        history.session_length = int(state["session_length"])
        last = state["last_ts_ms"]
        history.last_ts_ms = None if last is None else int(last)
        return history
