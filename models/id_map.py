"""Collision-free mapping of raw ids to embedding rows, with admission and eviction.

Ids arrive forever, so the map:

* admits an id to its own row only after ``min_count`` sightings; until then the id reads the
  shared fallback row ``0`` of its feature;
* evicts rows untouched for ``ttl`` time units and, when ``capacity`` is exceeded, the least
  recently touched rows; evicted rows are recycled and the evicted ids are reported so a cache
  can delete them.

Time is whatever monotone integer the caller passes as ``now`` (the learners use event time in
milliseconds). Ids are strings; other hashables are converted with ``str``.

>>> ids = DynamicIdMap(min_count=2)
>>> ids.lookup(["a", "b", "a"], now=0).tolist()   # "a" reaches 2 sightings on its 2nd use
[0, 0, 1]
>>> ids.lookup(["a", "b"], now=1, learn=False).tolist()
[1, 0]
>>> ids.evict_expired(now=10, ttl=5)
['a']
>>> ids.take_evicted()
([1], ['a'])
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from itertools import repeat
from typing import Any

import numpy as np

from models.exceptions import ConfigError

FALLBACK_ROW = 0


class DynamicIdMap:
    """Raw id -> row index; row 0 is the fallback row shared by ids not (yet) admitted.

    Parameters
    ----------
    min_count
        Sightings (in learning lookups) before an id gets its own row; 1 admits at first sight.
    capacity
        Maximum number of admitted rows, or ``None`` for unbounded. When an admission exceeds
        it, the least recently touched rows are evicted, except rows touched at the current
        time (they may belong to the batch being looked up).
    """

    def __init__(self, min_count: int = 1, capacity: int | None = None) -> None:
        if min_count < 1:
            raise ConfigError(f"min_count must be >= 1, got {min_count}")
        if capacity is not None and capacity < 1:
            raise ConfigError(f"capacity must be >= 1 or None, got {capacity}")
        self.min_count = min_count
        self.capacity = capacity
        self._row_of: dict[str, int] = {}
        self._id_of: list[str | None] = [None]
        self._free: list[int] = []
        self._pending: dict[str, list[int]] = {}  # id -> [sightings, last seen]
        self._pending_swept_at = -(2**62)
        self._last_seen = np.zeros(16, dtype=np.int64)
        self._evicted_rows: list[int] = []
        self._evicted_ids: list[str] = []
        # Bumped whenever an id gains or loses a row, so callers may cache rows of raw ids as long
        # as (this map, version) is unchanged. Sightings of pending ids do not change any row.
        self.version = 0

    # ------------------------------------------------------------------ queries
    def __len__(self) -> int:
        """Number of admitted ids (the fallback row is not counted)."""
        return len(self._row_of)

    def __contains__(self, raw_id: Hashable) -> bool:
        return _key(raw_id) in self._row_of

    @property
    def n_rows(self) -> int:
        """Rows in use or free, including the fallback row: the size a weight table needs."""
        return len(self._id_of)

    def items(self) -> list[tuple[str, int]]:
        """``(id, row)`` for every admitted id, in row order."""
        return sorted(self._row_of.items(), key=lambda pair: pair[1])

    def row(self, raw_id: Hashable) -> int:
        """The row of ``raw_id`` without counting a sighting (fallback if not admitted)."""
        return self._row_of.get(_key(raw_id), FALLBACK_ROW)

    def rows(self, raw_ids: Sequence[str]) -> np.ndarray:
        """Read-only rows of string ids (fallback row where not admitted), int64 ``(len(raw_ids),)``.

        ``lookup(raw_ids, now, learn=False)`` for ids known to be ``str``, in one C-level pass:
        no second lookup of the misses through :func:`_key`.

        >>> ids = DynamicIdMap()
        >>> _ = ids.lookup(["a"], now=0)
        >>> ids.rows(["b", "a"]).tolist()
        [0, 1]
        """
        return np.fromiter(map(self._row_of.get, raw_ids, repeat(FALLBACK_ROW)), dtype=np.int64, count=len(raw_ids))

    # ------------------------------------------------------------------ lookups
    def lookup(self, raw_ids: Sequence[Hashable], now: int, learn: bool = True) -> np.ndarray:
        """Rows of ``raw_ids`` (int64 array of the same length).

        With ``learn=True`` every occurrence counts as a sighting, admits ids that reach
        ``min_count`` and marks the rows as touched at ``now``; with ``learn=False`` the map is
        read only and unknown ids read the fallback row.
        """
        get = self._row_of.get
        rows = [get(raw_id) for raw_id in raw_ids]
        if not learn:
            if None in rows:
                rows = [
                    get(_key(raw_ids[p]), FALLBACK_ROW) if r is None else r
                    for p, r in enumerate(rows)
                ]
            return np.asarray(rows, dtype=np.int64).reshape(-1)
        if None in rows:
            for position, row in enumerate(rows):
                if row is None:
                    rows[position] = self._sight(_key(raw_ids[position]), now)
        out = np.asarray(rows, dtype=np.int64).reshape(-1)
        self._last_seen[out] = now
        if self.capacity is not None and len(self._row_of) > self.capacity:
            self._evict_over_capacity(now)
        return out

    def _sight(self, key: str, now: int) -> int:
        row = self._row_of.get(key)
        if row is not None:
            return row
        seen = self._pending.get(key)
        count = 1 if seen is None else seen[0] + 1
        if count < self.min_count:
            self._pending[key] = [count, now]
            return FALLBACK_ROW
        self._pending.pop(key, None)
        return self._admit(key)

    def _admit(self, key: str) -> int:
        if self._free:
            row = self._free.pop()
            self._id_of[row] = key
        else:
            row = len(self._id_of)
            self._id_of.append(key)
            if row >= len(self._last_seen):
                self._last_seen = np.concatenate([self._last_seen, np.zeros_like(self._last_seen)])
        self._row_of[key] = row
        self.version += 1
        return row

    # ------------------------------------------------------------------ eviction
    def evict_expired(self, now: int, ttl: int | None) -> list[str]:
        """Evict admitted ids (and forget pending ones) untouched since ``now - ttl``.

        Returns the evicted ids (they are also queued for :meth:`take_evicted`).
        """
        if ttl is None:
            return []
        cutoff = now - ttl
        # Forgetting pending ids is a Python loop: do it once per eighth of a TTL, not per call.
        if self._pending and now - self._pending_swept_at >= max(1, ttl // 8):
            self._pending = {k: v for k, v in self._pending.items() if v[1] >= cutoff}
            self._pending_swept_at = now
        live = self._live_rows()
        return self._evict_rows(live[self._last_seen[live] < cutoff])

    def _evict_over_capacity(self, now: int) -> None:
        # Rows touched at ``now`` may belong to the batch being looked up: never evict them,
        # so the capacity bound may be exceeded until the next lookup at a later time.
        live = self._live_rows()
        candidates = live[self._last_seen[live] < now]
        excess = min(len(self._row_of) - (self.capacity or 0), candidates.size)
        if excess <= 0:
            return
        oldest = np.argpartition(self._last_seen[candidates], excess - 1)[:excess]
        self._evict_rows(candidates[oldest])

    def _live_rows(self) -> np.ndarray:
        return np.fromiter(self._row_of.values(), dtype=np.int64, count=len(self._row_of))

    def _evict_rows(self, rows: np.ndarray) -> list[str]:
        evicted = []
        for row in sorted(int(r) for r in rows):
            key = self._id_of[row]
            if key is None:
                continue
            del self._row_of[key]
            self._id_of[row] = None
            self._free.append(row)
            evicted.append(key)
            self._evicted_rows.append(row)
        self._evicted_ids.extend(evicted)
        if evicted:
            self.version += 1
        return evicted

    def take_evicted(self) -> tuple[list[int], list[str]]:
        """Rows and ids evicted since the last call (rows may already be reused)."""
        rows, ids = self._evicted_rows, self._evicted_ids
        self._evicted_rows, self._evicted_ids = [], []
        return rows, ids

    # ------------------------------------------------------------------ state
    def last_seen(self, rows: np.ndarray) -> np.ndarray:
        return self._last_seen[rows]

    def state(self) -> tuple[dict[str, Any], np.ndarray]:
        """JSON-able state and the ``last_seen`` array (saved as a tensor)."""
        meta = {
            "min_count": self.min_count,
            "capacity": self.capacity,
            "id_of": self._id_of,
            "free": self._free,
            "pending": self._pending,
        }
        return meta, self._last_seen[: self.n_rows].copy()

    @classmethod
    def from_state(cls, meta: dict[str, Any], last_seen: np.ndarray) -> DynamicIdMap:
        id_map = cls(min_count=int(meta["min_count"]), capacity=meta["capacity"])
        id_map._id_of = list(meta["id_of"])
        id_map._row_of = {key: row for row, key in enumerate(id_map._id_of) if key is not None}
        id_map._free = [int(r) for r in meta["free"]]
        id_map._pending = {k: [int(v[0]), int(v[1])] for k, v in meta["pending"].items()}
        id_map._last_seen = np.zeros(max(16, len(id_map._id_of)), dtype=np.int64)
        id_map._last_seen[: len(last_seen)] = last_seen
        return id_map

    @classmethod
    def frozen(cls, rows_by_id: dict[str, int], n_rows: int) -> DynamicIdMap:
        """A read-only-in-spirit map with given rows (used by exported models)."""
        id_map = cls()
        id_of: list[str | None] = [None] * n_rows
        for key, row in rows_by_id.items():
            if row < n_rows:
                id_of[row] = key
        id_map._row_of = dict(rows_by_id)
        id_map._id_of = id_of
        id_map._last_seen = np.zeros(max(16, n_rows), dtype=np.int64)
        return id_map


def _key(raw_id: Hashable) -> str:
    return raw_id if isinstance(raw_id, str) else str(raw_id)
