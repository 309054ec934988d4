"""Running per-item feedback statistics, a teacher-only feature (the student never sees them).

Counts of exposures, clicks, long views and likes per item id, turned into dense features:
``log1p(exposures)`` and the three rates smoothed toward a prior with ``prior_weight`` pseudo
exposures. Updated after each training step (score before learning, so no label leaks into
the logits of the batch that carries it).

>>> stats = ItemStatistics(prior_weight=2.0, prior_rates=(0.5, 0.5, 0.5))
>>> stats.update(["a", "a"], np.array([[1, 1, 0], [0, 0, 0]]))
>>> stats.features(["a", "new"]).astype(np.float64).round(3).tolist()  # rates (1 + 1) / (2 + 2)...
[[1.099, 0.5, 0.5, 0.25], [0.0, 0.5, 0.5, 0.5]]
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

N_FEATURES = 4


class ItemStatistics:
    """Exposure and feedback counts per item id (unbounded; ids are few compared to events)."""

    def __init__(self, prior_weight: float = 10.0, prior_rates: Sequence[float] = (0.44, 0.31, 0.02)) -> None:
        self.prior_weight = float(prior_weight)
        self.prior_rates = tuple(float(r) for r in prior_rates)
        self._index: dict[str, int] = {}
        self._counts = np.zeros((64, 4), dtype=np.float64)  # exposures, click, long_view, like

    def update(self, item_ids: Sequence[str], labels: np.ndarray) -> None:
        """Count exposures; ``labels`` is ``(n, 3)`` of 0/1 for click, long view and like."""
        rows = np.fromiter((self._row(i) for i in item_ids), dtype=np.int64, count=len(item_ids))
        np.add.at(self._counts[:, 0], rows, 1.0)
        for k in range(3):
            np.add.at(self._counts[:, k + 1], rows, labels[:, k])

    def features(self, item_ids: Sequence[str]) -> np.ndarray:
        """Float32 ``(n, 4)``: log1p(exposures) and the smoothed click, long-view and like rates."""
        get = self._index.get
        rows = np.fromiter((get(i, -1) for i in item_ids), dtype=np.int64, count=len(item_ids))
        counts = np.where(rows[:, None] >= 0, self._counts[np.maximum(rows, 0)], 0.0)
        prior = np.asarray(self.prior_rates) * self.prior_weight
        rates = (counts[:, 1:] + prior) / (counts[:, :1] + self.prior_weight)
        return np.concatenate([np.log1p(counts[:, :1]), rates], axis=1).astype(np.float32)

    def _row(self, item_id: str) -> int:
        row = self._index.get(item_id)
        if row is None:
            row = self._index[item_id] = len(self._index)
            if row >= len(self._counts):
                self._counts = np.concatenate([self._counts, np.zeros_like(self._counts)])
        return row

    def state(self) -> tuple[dict[str, Any], np.ndarray]:
        ids = sorted(self._index, key=self._index.__getitem__)
        meta = {"prior_weight": self.prior_weight, "prior_rates": list(self.prior_rates), "ids": ids}
        return meta, self._counts[: len(ids)].copy()

    @classmethod
    def from_state(cls, meta: dict[str, Any], counts: np.ndarray) -> ItemStatistics:
        stats = cls(meta["prior_weight"], meta["prior_rates"])
        stats._index = {item_id: row for row, item_id in enumerate(meta["ids"])}
        stats._counts = np.zeros((max(64, len(counts)), 4))
        stats._counts[: len(counts)] = counts
        return stats
