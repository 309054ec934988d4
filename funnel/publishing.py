"""Making a model version: hot item vectors and the pruned model, written to Redis, then flipped.

The publisher returns a typed :class:`ModelVersion`; its fields are the version's ``meta`` in Redis.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, replace

import numpy as np

from models.embedding import zero_row_ratio
from models.export import export_bytes, export_size
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

    def admit(self, items: Iterable[ItemFeatures]) -> int:
        """Add items not held yet, below every sighted item (the first trimmed when over capacity);
        returns how many were added.

        >>> hot = HotItems(capacity=2)
        >>> hot.observe([ItemFeatures("a")], 5.0)
        >>> hot.admit([ItemFeatures("a"), ItemFeatures("b"), ItemFeatures("c")])
        2
        >>> [item.item_id for item in hot.top()][0]
        'a'
        """
        added = 0
        for item in items:
            if item.item_id not in self._score:
                self._score[item.item_id] = -np.inf  # logaddexp(-inf, bump) == bump: a later sighting counts whole
                self._features[item.item_id] = item
                added += 1
        return added

    def __contains__(self, item_id: str) -> bool:
        return item_id in self._score

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

    def room(self) -> int:
        return max(0, self.capacity - len(self._score))


@dataclass(frozen=True)
class ModelVersion:
    """One published version, as the publisher wrote it; :meth:`meta` is its ``meta`` key in Redis.

    Scorers switch on the store's ``current`` key (flipped last, atomically), so a version has one
    source of truth and no announcement that could disagree with it.
    """

    version: int
    created_at_ms: int
    n_items: int  # hot item vectors written
    dim: int
    dtype: str
    samples_learned: int
    records_learned: int
    weights_bytes: int  # the pruned export the scorers load
    weights_bytes_unpruned: int  # what the export would be without pruning all-zero rows (computed)
    zero_row_ratio: float
    zero_row_ratio_by_table: Mapping[str, float]
    deleted_items: int  # evicted items dropped from the published set
    publish_s: float = 0.0

    def meta(self) -> dict:
        meta = asdict(self)
        del meta["publish_s"]
        return meta


class Publisher:
    """Publishes a :class:`models.learner.StudentLearner` as a new version in the store.

    ``export`` turns the learner into the bytes the scorers load (default: the pruned export).

    The hot set is what training samples showed, plus, while it has room, the rest of the catalog
    (read every ``catalog_refresh_s``): an item no sample has shown yet is still a candidate, and
    without a published vector every request naming it computes one (the item tower, per version).
    """

    def __init__(
        self, store, export: Callable[[object], bytes] | None = None, *, hot_items: int, dtype: str, ttl_s: int,
        chunk: int = 2048, catalog_refresh_s: float = 30.0,
    ) -> None:
        self.store = store
        self.catalog_refresh_s = catalog_refresh_s
        self._catalog_read_at: float | None = None
        self.export = export or (lambda learner: export_bytes(learner, prune=True))
        self.hot = HotItems(hot_items)
        self.dtype = dtype
        self.ttl_s = ttl_s
        self.chunk = chunk
        self.version = 0

    def publish(self, learner, samples_learned: int, records_learned: int = 0, evicted: Iterable[str] = ()) -> ModelVersion:
        """Write a complete new version and flip ``current`` to it."""
        started = time.perf_counter()
        evicted = list(evicted)
        self.hot.forget(evicted)
        self._admit_catalog()
        items = self.hot.top()
        blocks = []
        for start in range(0, len(items), self.chunk):
            blocks.append(np.asarray(learner.served.item_vectors(items[start:start + self.chunk]), dtype=self.dtype))
        vectors = np.concatenate(blocks) if blocks else np.zeros((0, 0), dtype=self.dtype)
        weights = self.export(learner)
        # Each table's all-zero mask once: a scan of the table.
        masks = {name: table.zero_rows_mask()[1] for name, table in learner.student.tables.items()}
        self.version += 1
        record = ModelVersion(
            version=self.version, created_at_ms=int(time.time() * 1000), n_items=len(items),
            dim=int(vectors.shape[1]) if blocks else 0, dtype=self.dtype, samples_learned=samples_learned,
            records_learned=records_learned, weights_bytes=len(weights),
            weights_bytes_unpruned=export_size(learner, prune=False),
            zero_row_ratio=zero_row_ratio(masks.values()),
            zero_row_ratio_by_table={name: zero_row_ratio([mask]) for name, mask in masks.items()},
            deleted_items=len(evicted),
        )
        self.store.publish(self.version, weights, [item.item_id for item in items], vectors, record.meta(), self.ttl_s)
        record = replace(record, publish_s=time.perf_counter() - started)
        log.info("published version %d: %d items in %.3fs", record.version, record.n_items, record.publish_s)
        return record

    def _admit_catalog(self) -> None:
        """Fill the hot set's room with catalog items it lacks (at most every ``catalog_refresh_s``)."""
        now = time.monotonic()
        if self.hot.room() == 0 or (self._catalog_read_at is not None
                                    and now - self._catalog_read_at < self.catalog_refresh_s):
            return
        self._catalog_read_at = now
        missing = [item_id for item_id in self.store.catalog_ids() if item_id not in self.hot][: self.hot.room()]
        features = [item for item in self.store.items(missing) if item is not None]
        added = self.hot.admit(features)
        if added:
            log.info("hot set: %d catalog items admitted (%d held)", added, len(self.hot))
