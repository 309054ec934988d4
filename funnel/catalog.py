"""The worker's item catalog: one bounded LRU of item features in front of the store's catalog.

The catalog agent writes it, and the history, the joiner, the scorer and the fine ranker read it:
one lookup per worker, so an item fetched by one is known to the others, and memory stays bounded
however many items the stream names. An item nobody has described is served as a bare id (its
features fall back to the id's own row) and is not cached, so it is looked up again once known.

>>> class Store:
...     def items(self, ids): return [ItemFeatures(i, "a1") if i == "v2" else None for i in ids]
>>> catalog = ItemCatalog(Store(), capacity=2)
>>> catalog.put(ItemFeatures("v1", "a0"))
>>> features, unknown = catalog.lookup(["v1", "v2", "v3"])
>>> [f.author_id for f in features], unknown
(['a0', 'a1', ''], 1)
>>> len(catalog)   # v3 is unknown: not cached; capacity 2 keeps v1 and v2
2
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Sequence

from core.redis import RedisUnavailable
from models.features import ItemFeatures

log = logging.getLogger(__name__)


class ItemCatalog:
    """Item features by id, at most ``capacity`` of them, least recently used evicted first.

    ``store`` has ``items(ids) -> list[ItemFeatures | None]`` (a :class:`funnel.store.ModelStore`).
    """

    def __init__(self, store, capacity: int = 200_000) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.store = store
        self.capacity = capacity
        self._items: OrderedDict[str, ItemFeatures] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, item_id: str) -> bool:
        return item_id in self._items

    def put(self, item: ItemFeatures) -> None:
        self._items[item.item_id] = item
        self._items.move_to_end(item.item_id)
        while len(self._items) > self.capacity:
            self._items.popitem(last=False)

    def remove(self, item_id: str) -> None:
        self._items.pop(item_id, None)

    def lookup(self, item_ids: Sequence[str], fetch: bool = True) -> tuple[list[ItemFeatures], int]:
        """Features of ``item_ids`` in order, and how many are unknown (served as bare ids).

        Items not held are read from the store when ``fetch``; a store outage raises
        :class:`core.redis.RedisUnavailable` (what was held stays held).
        """
        items = self._items
        missing = [item for item in dict.fromkeys(item_ids) if item not in items]
        if missing and fetch:
            for item_id, found in zip(missing, self.store.items(missing)):
                if found is not None:
                    self.put(found)
        features, unknown = [], 0
        for item_id in item_ids:
            found = items.get(item_id)
            if found is None:
                unknown += 1
                found = ItemFeatures(item_id)
            features.append(found)
        for item_id in dict.fromkeys(item_ids):
            if item_id in items:
                items.move_to_end(item_id)
        return features, unknown

    def features(self, item_ids: Sequence[str]) -> list[ItemFeatures]:
        """:meth:`lookup`'s features; during a store outage, what is held and bare ids for the rest."""
        try:
            return self.lookup(item_ids)[0]
        except RedisUnavailable as exc:
            log.warning("catalog lookup failed: %s", exc)
            return self.lookup(item_ids, fetch=False)[0]
