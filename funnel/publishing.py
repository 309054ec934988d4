"""Making a model version: hot item vectors and the pruned model, written to Redis, then flipped."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable

import numpy as np

from models.features import ItemFeatures

log = logging.getLogger(__name__)


class HotItems:
    """The items worth caching: an exponentially decayed sighting count, bounded in size.

    >>> hot = HotItems(capacity=2, half_life_s=10.0)
    >>> for item, t in (("a", 0.0), ("b", 1.0), ("b", 2.0), ("c", 3.0)):
    ...     hot.observe([ItemFeatures(item)], t)
    >>> sorted(item.item_id for item in hot.top())
    ['b', 'c']
    """

    def __init__(self, capacity: int, half_life_s: float = 600.0) -> None:
        self.capacity = capacity
        self.rate = np.log(2) / half_life_s
        self._score: dict[str, float] = {}  # log-domain scores avoid rescaling every item
        self._features: dict[str, ItemFeatures] = {}

    def __len__(self) -> int:
        return len(self._score)

    def observe(self, items: Iterable[ItemFeatures], now_s: float) -> None:
        bump = self.rate * now_s
        for item in items:
            previous = self._score.get(item.item_id)
            self._score[item.item_id] = bump if previous is None else np.logaddexp(previous, bump)
            self._features[item.item_id] = item
        if len(self._score) > 2 * self.capacity:
            self._trim()

    def forget(self, item_ids: Iterable[str]) -> None:
        for item_id in item_ids:
            self._score.pop(item_id, None)
            self._features.pop(item_id, None)

    def _trim(self) -> None:
        keep = sorted(self._score, key=self._score.__getitem__, reverse=True)[: self.capacity]
        kept = set(keep)
        self.forget([item for item in list(self._score) if item not in kept])

    def top(self) -> list[ItemFeatures]:
        self._trim()
        return [self._features[item] for item in self._score]


class Publisher:
    """Publishes the learner as a new version in the store.

    ``export`` turns the learner into bytes the scorer loads (the pruned export).
    """

    def __init__(
        self, store, export: Callable[[object], bytes], *, hot_items: int, dtype: str, ttl_s: int,
        chunk: int = 2048,
    ) -> None:
        self.store = store
        self.export = export
        self.hot = HotItems(hot_items)
        self.dtype = dtype
        self.ttl_s = ttl_s
        self.chunk = chunk
        self.version = 0

    def resume_from_store(self) -> None:
        current = self.store.current_version()
        self.version = max(self.version, current or 0)

    def publish(self, learner, samples_learned: int, evicted: Iterable[str] = (), extra_meta: dict | None = None) -> dict:
        """Write a complete new version and flip to it; returns its metadata."""
        started = time.perf_counter()
        evicted = list(evicted)
        self.hot.forget(evicted)
        items = self.hot.top()
        dim = None
        blocks = []
        for start in range(0, len(items), self.chunk):
            blocks.append(np.asarray(learner.item_vectors(items[start:start + self.chunk]), dtype=self.dtype))
        vectors = np.concatenate(blocks) if blocks else np.zeros((0, 0), dtype=self.dtype)
        dim = int(vectors.shape[1]) if blocks else 0
        weights = self.export(learner)
        self.version += 1
        meta = {
            "version": self.version, "created_at_ms": int(time.time() * 1000), "n_items": len(items),
            "dtype": self.dtype, "dim": dim, "samples_learned": samples_learned,
            "weights_bytes": len(weights), **(extra_meta or {}),
        }
        self.store.publish(
            self.version, weights, [item.item_id for item in items], vectors, meta, self.ttl_s,
            deleted_ids=evicted,
        )
        meta["publish_s"] = time.perf_counter() - started
        meta["deleted"] = len(evicted)
        log.info("published version %(version)d: %(n_items)d items in %(publish_s).3fs", meta)
        return meta
