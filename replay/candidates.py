"""Recall for the replay: each request's candidate set, the way a production recall layer mixes it.

The candidate set is the request's exposed items, then up to ``n_popular`` items popular now (a
decayed counter fed by :meth:`CandidateGenerator.observe`), ``n_author`` items by the user's recent
authors, ``n_tag`` items carrying the user's recent tags, and random items up to ``n_candidates``.
Every source skips what an earlier one already chose; a source's unused quota goes to random.
Sampling is seeded per request id, so a request gets the same candidates in every run.

>>> from models.features import ItemFeatures
>>> catalog = {str(i): ItemFeatures(str(i), author_id=f"a{i % 5}", tags=(f"t{i % 7}",)) for i in range(100)}
>>> generator = CandidateGenerator(catalog, CandidateConfig(n_candidates=20, n_popular=3, n_author=5, n_tag=5))
>>> for ts, item in enumerate(["1", "1", "2", "3"]):
...     generator.observe(item, ts)
>>> picked = generator.build("r1", exposed=["42"], authors=["a0"], tags=["t3"], ts_ms=10)
>>> ids = generator.item_ids(picked)
>>> len(ids), ids[:4], len(set(ids))  # "3" was seen after "2": a little more popular now
(20, ['42', '1', '3', '2'], 20)
>>> ids == generator.item_ids(generator.build("r1", exposed=["42"], authors=["a0"], tags=["t3"], ts_ms=10))
True
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from models.features import ItemFeatures
from replay.exceptions import ReplayConfigError
from replay.popularity import DecayedCounter

HOUR_MS = 3_600_000


@dataclass(frozen=True)
class CandidateConfig:
    """Sizes of each recall source; ``n_candidates`` is the total, exposed items included."""

    n_candidates: int = 1000
    n_popular: int = 300
    n_author: int = 150
    n_tag: int = 250
    popularity_half_life_ms: int = 6 * HOUR_MS
    popularity_refresh_ms: int = 60_000
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("n_candidates", "n_popular", "n_author", "n_tag"):
            if getattr(self, name) < 0:
                raise ReplayConfigError(f"CandidateConfig.{name} must be >= 0, got {getattr(self, name)}")
        if self.popularity_half_life_ms <= 0:
            raise ReplayConfigError(f"popularity_half_life_ms must be > 0, got {self.popularity_half_life_ms}")


class CandidateGenerator:
    """Builds candidate index arrays over a fixed catalog (index order = catalog order)."""

    def __init__(self, catalog: Mapping[str, ItemFeatures], config: CandidateConfig = CandidateConfig()) -> None:
        self.config = config
        self._ids = list(catalog)
        self._index = {item_id: i for i, item_id in enumerate(self._ids)}
        self.items: tuple[ItemFeatures, ...] = tuple(catalog.values())
        by_author: dict[str, list[int]] = {}
        by_tag: dict[str, list[int]] = {}
        for i, item in enumerate(self.items):
            if item.author_id:
                by_author.setdefault(item.author_id, []).append(i)
            for tag in item.tags:
                by_tag.setdefault(tag, []).append(i)
        self._by_author = {k: np.asarray(v, dtype=np.int64) for k, v in by_author.items()}
        self._by_tag = {k: np.asarray(v, dtype=np.int64) for k, v in by_tag.items()}
        self._popularity = DecayedCounter(len(self._ids), config.popularity_half_life_ms, config.popularity_refresh_ms)
        self._taken = np.zeros(len(self._ids), dtype=bool)

    def __len__(self) -> int:
        return len(self._ids)

    def index_of(self, item_id: str) -> int:
        try:
            return self._index[item_id]
        except KeyError:
            raise ValueError(f"item {item_id!r} is not in the candidate generator's catalog") from None

    def item_ids(self, indices: Sequence[int] | np.ndarray) -> list[str]:
        return [self._ids[i] for i in indices]

    def observe(self, item_id: str, ts_ms: int) -> None:
        """Count one impression of ``item_id`` towards "popular now"."""
        self._popularity.observe(self.index_of(item_id), ts_ms)

    def build(
        self,
        request_id: str,
        exposed: Sequence[str],
        authors: Sequence[str] = (),
        tags: Sequence[str] = (),
        ts_ms: int = 0,
    ) -> np.ndarray:
        """Candidate indices (int64, distinct): exposed items first, in their given order.

        ``authors`` and ``tags`` are the user's recent ones, oldest first (as in
        :class:`funnel.history.UserHistory`); the most recent ones are used first.
        """
        config = self.config
        rng = np.random.default_rng((config.seed, zlib.crc32(request_id.encode())))
        total = max(config.n_candidates, len(exposed))
        chosen: list[np.ndarray] = []
        taken = self._taken
        count = 0

        def take(indices: np.ndarray, quota: int) -> None:
            nonlocal count
            fresh = indices[~taken[indices]]
            if len(fresh) > 1:  # the sources may repeat an item (an item with two of the user's tags)
                fresh = fresh[np.sort(np.unique(fresh, return_index=True)[1])]
            fresh = fresh[: min(quota, total - count)]
            taken[fresh] = True
            chosen.append(fresh)
            count += len(fresh)

        try:
            take(np.fromiter((self.index_of(i) for i in exposed), dtype=np.int64, count=len(exposed)), total)
            take(self._popularity.top(config.n_popular, ts_ms), config.n_popular)
            take(self._related(self._by_author, authors, config.n_author, rng), config.n_author)
            take(self._related(self._by_tag, tags, config.n_tag, rng), config.n_tag)
            n_items = len(self._ids)
            while count < min(total, n_items):
                want = min(total, n_items) - count
                draw = rng.integers(0, n_items, size=2 * want + 8)
                take(draw, want)
            result = np.concatenate(chosen)
        finally:
            for part in chosen:
                taken[part] = False
        return result

    @staticmethod
    def _related(
        index: Mapping[str, np.ndarray], keys: Sequence[str], quota: int, rng: np.random.Generator
    ) -> np.ndarray:
        """About ``quota`` items drawn from the lists of ``keys``, most recent key first."""
        lists = [index[k] for k in reversed(keys) if k in index]
        if quota == 0 or not lists:
            return np.empty(0, dtype=np.int64)
        per_key = -(-2 * quota // len(lists))  # oversample: duplicates and taken items get dropped
        parts = [items if len(items) <= per_key else items[rng.integers(0, len(items), per_key)] for items in lists]
        return np.concatenate(parts)
