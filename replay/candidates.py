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
from itertools import chain

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
        # Object arrays, so that turning 1000 candidate indices into ids or items is one numpy take.
        self._id_array = np.array(self._ids, dtype=object)
        self._item_array = np.empty(len(self.items), dtype=object)
        self._item_array[:] = self.items
        by_author: dict[str, list[int]] = {}
        by_tag: dict[str, list[int]] = {}
        for i, item in enumerate(self.items):
            if item.author_id:
                by_author.setdefault(item.author_id, []).append(i)
            for tag in item.tags:
                by_tag.setdefault(tag, []).append(i)
        self._by_author = Groups(by_author)
        self._by_tag = Groups(by_tag)
        self._popularity = DecayedCounter(len(self._ids), config.popularity_half_life_ms, config.popularity_refresh_ms)
        self._taken = np.zeros(len(self._ids), dtype=bool)
        self._scratch = np.zeros(len(self._ids), dtype=np.int64)  # positions, for first_occurrences

    def __len__(self) -> int:
        return len(self._ids)

    def index_of(self, item_id: str) -> int:
        try:
            return self._index[item_id]
        except KeyError:
            raise ValueError(f"item {item_id!r} is not in the candidate generator's catalog") from None

    def indices_of(self, item_ids: Sequence[str]) -> np.ndarray:
        """Catalog indices (int64) of ``item_ids``; an id outside the catalog is an error."""
        return np.fromiter((self.index_of(i) for i in item_ids), dtype=np.int64, count=len(item_ids))

    def item_ids(self, indices: Sequence[int] | np.ndarray) -> list[str]:
        return self._id_array[np.asarray(indices, dtype=np.int64)].tolist()

    def items_of(self, indices: Sequence[int] | np.ndarray) -> list[ItemFeatures]:
        return self._item_array[np.asarray(indices, dtype=np.int64)].tolist()

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
                fresh = fresh[first_occurrences(fresh, self._scratch)]
            fresh = fresh[: min(quota, total - count)]
            taken[fresh] = True
            chosen.append(fresh)
            count += len(fresh)

        try:
            take(self.indices_of(exposed), total)
            take(self._popularity.top(config.n_popular, ts_ms), config.n_popular)
            take(self._by_author.draw(authors, config.n_author, rng), config.n_author)
            take(self._by_tag.draw(tags, config.n_tag, rng), config.n_tag)
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


def first_occurrences(indices: np.ndarray, scratch: np.ndarray) -> np.ndarray:
    """A mask of the first occurrence of each value in ``indices`` (order kept, no sort);
    ``scratch`` is an int array with a slot for every value, its contents do not matter.

    >>> first_occurrences(np.array([4, 2, 4, 0, 2]), np.zeros(5, dtype=np.int64)).tolist()
    [True, True, False, True, False]
    """
    positions = np.arange(len(indices))
    scratch[indices] = len(indices)  # the same value for every copy: the order of writes cannot matter
    np.minimum.at(scratch, indices, positions)  # unbuffered: each value ends at its first position
    return scratch[indices] == positions


class Groups:
    """Item indices grouped by a key (an author, a tag), all in one flat array, so that drawing
    from a user's twenty recent tags is a few numpy operations rather than one per tag.

    >>> groups = Groups({"a": [0, 1], "b": [5, 6, 7, 8, 9, 10]})
    >>> groups.draw(["b", "a"], quota=2, rng=np.random.default_rng(0)).tolist()[:2]  # "a", the last, first
    [0, 1]
    >>> len(groups.draw(["a", "b", "zzz"], quota=2, rng=np.random.default_rng(0)))  # 2 of "b", all of "a"
    4
    """

    def __init__(self, groups: Mapping[str, Sequence[int]]) -> None:
        self._slot = {key: slot for slot, key in enumerate(groups)}
        self._lengths = np.fromiter((len(members) for members in groups.values()), dtype=np.int64, count=len(groups))
        self._starts = np.cumsum(self._lengths) - self._lengths
        self._flat = np.fromiter(chain.from_iterable(groups.values()), dtype=np.int64, count=int(self._lengths.sum()))

    def draw(self, keys: Sequence[str], quota: int, rng: np.random.Generator) -> np.ndarray:
        """About ``quota`` items from the groups of ``keys``, the most recent key (the last) first:
        each group of at most ``per_key`` items whole, a larger one ``per_key`` draws with
        replacement, where ``per_key`` oversamples (duplicates and taken items get dropped)."""
        slots = np.fromiter((self._slot[k] for k in reversed(keys) if k in self._slot), dtype=np.int64)
        if quota == 0 or len(slots) == 0:
            return np.empty(0, dtype=np.int64)
        per_key = -(-2 * quota // len(slots))
        lengths = self._lengths[slots]
        counts = np.minimum(lengths, per_key)
        first = np.cumsum(counts) - counts
        within = np.arange(int(counts.sum())) - np.repeat(first, counts)  # 0 .. count-1 in each group
        drawn = (rng.random(len(within)) * np.repeat(lengths, counts)).astype(np.int64)
        offsets = np.where(np.repeat(lengths <= per_key, counts), within, drawn)
        return self._flat[np.repeat(self._starts[slots], counts) + offsets]
