"""An exponentially decayed popularity counter over a fixed item index ("popular now").

Each observation adds ``2 ** (t / half_life)``; ranking is invariant to a common factor, so the
counter never decays the array, it only rescales it when the weights grow too large.

>>> counter = DecayedCounter(n_items=3, half_life_ms=1_000)
>>> for item, ts in [(0, 0), (0, 0), (0, 0), (1, 1_000)]:
...     counter.observe(item, ts)
>>> [float(v) for v in counter.values(ts_ms=1_000)]  # item 0: 3 views one half-life ago
[1.5, 1.0, 0.0]
>>> counter.top(3, ts_ms=1_000).tolist()  # item 2 was never seen, so it is not "popular"
[0, 1]
"""

from __future__ import annotations

import numpy as np

from funnel.metrics import top_k
from replay.exceptions import ReplayConfigError

_RESCALE_ABOVE = 2.0**500


class DecayedCounter:
    """Counts with half-life ``half_life_ms``; ``top`` is cached for ``refresh_ms`` of event time."""

    def __init__(self, n_items: int, half_life_ms: float, refresh_ms: int = 0) -> None:
        if half_life_ms <= 0:
            raise ReplayConfigError(f"half_life_ms must be > 0, got {half_life_ms}")
        self._counts = np.zeros(n_items, dtype=np.float64)
        self._half_life_ms = float(half_life_ms)
        self._origin_ms: int | None = None
        self._refresh_ms = refresh_ms
        self._cached: tuple[int, int, np.ndarray] | None = None

    def _weight(self, ts_ms: int) -> float:
        return 2.0 ** ((ts_ms - self._origin_ms) / self._half_life_ms)

    def observe(self, index: int, ts_ms: int) -> None:
        if self._origin_ms is None:
            self._origin_ms = ts_ms
        weight = self._weight(ts_ms)
        if weight > _RESCALE_ABOVE:
            self._counts /= weight
            self._origin_ms = ts_ms
            weight = 1.0
        self._counts[index] += weight

    def values(self, ts_ms: int) -> np.ndarray:
        """Decayed counts as of ``ts_ms`` (a copy)."""
        if self._origin_ms is None:
            return np.zeros_like(self._counts)
        return self._counts * 2.0 ** (-(ts_ms - self._origin_ms) / self._half_life_ms)

    def top(self, n: int, ts_ms: int) -> np.ndarray:
        """Indices of the ``n`` most popular items with a positive count, most popular first."""
        if self._cached is not None:
            cached_ts, cached_n, cached = self._cached
            if cached_n >= n and 0 <= ts_ms - cached_ts <= self._refresh_ms:
                return cached[:n]
        counts = self._counts
        n_positive = int(np.count_nonzero(counts))
        k = min(n, n_positive)
        if k == 0:
            top = np.empty(0, dtype=np.int64)
        else:
            top = top_k(counts, k)
            top = top[counts[top] > 0]
        self._cached = (ts_ms, n, top)
        return top
