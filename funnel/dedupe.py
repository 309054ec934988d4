"""The request ids a trainer learned most recently, so a second copy of a record is dropped.

The joiner emits into ``training-samples`` at least once (a crash or a rebalance can repeat a
record it had already sent); a repeat arrives within the joiner's recovery time of the first copy,
so remembering the last ``capacity`` ids is enough, in bounded memory. The ids are saved with the
model and the offsets in the trainer's checkpoint, so the three always agree.

>>> recent = RecentIds(capacity=2)
>>> [recent.add(rid) for rid in ("a", "b", "a", "c", "a")]
[True, True, False, True, True]
>>> RecentIds.from_list(recent.to_list(), capacity=2).to_list()
['c', 'a']
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Iterable
from pathlib import Path


class RecentIds:
    """A set of the last ``capacity`` ids added, oldest forgotten first."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self._order: deque[str] = deque()
        self._ids: set[str] = set()

    def __contains__(self, request_id: object) -> bool:
        return request_id in self._ids

    def __len__(self) -> int:
        return len(self._ids)

    def add(self, request_id: str) -> bool:
        """Remember ``request_id``; False when it is already remembered (a duplicate)."""
        if request_id in self._ids:
            return False
        self._order.append(request_id)
        self._ids.add(request_id)
        while len(self._order) > self.capacity:
            self._ids.discard(self._order.popleft())
        return True

    def to_list(self) -> list[str]:
        return list(self._order)

    @classmethod
    def from_list(cls, request_ids: Iterable[str], capacity: int) -> RecentIds:
        recent = cls(capacity)
        for request_id in request_ids:
            recent.add(request_id)
        return recent

    def save(self, path: Path) -> None:
        Path(path).write_text(json.dumps(self.to_list()))

    @classmethod
    def load(cls, path: Path, capacity: int) -> RecentIds:
        """The ids saved at ``path``; none when a checkpoint predates them."""
        path = Path(path)
        return cls.from_list(json.loads(path.read_text()) if path.exists() else (), capacity)
