"""A dynamic embedding table: a :class:`~models.id_map.DynamicIdMap` plus its weight rows.

The weights are a plain tensor, not an ``nn.Parameter``: they are trained by
:class:`~models.ftrl.FTRLProximal` on the rows a batch touched, never by a torch optimiser.
Optimiser state lives beside the weights as named *slots* (same shape) so that growing the
table, recycling an evicted row or saving the table keeps everything aligned.

Rows start at zero and are materialised lazily: the table grows (doubling) as ids are admitted.

>>> table = EmbeddingTable(dim=4, id_map=DynamicIdMap(min_count=1))
>>> rows = table.lookup(["x", "y", "x"], now=0)
>>> rows.tolist(), tuple(table.weight.shape)[1]
([1, 2, 1], 4)
>>> table.zero_row_ratio()   # both admitted rows are still all zero
1.0
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Sequence

import numpy as np
import torch

from models.id_map import DynamicIdMap


class EmbeddingTable:
    """Rows of dimension ``dim`` addressed by raw ids; row 0 is the feature's fallback row.

    Parameters
    ----------
    dim
        Embedding dimension.
    id_map
        The id -> row mapping (admission, eviction).
    ttl
        Evict rows untouched for this many time units (see :meth:`evict_expired`); ``None``
        never expires rows.
    """

    def __init__(self, dim: int, id_map: DynamicIdMap, ttl: int | None = None) -> None:
        self.dim = dim
        self.id_map = id_map
        self.ttl = ttl
        self.weight = torch.zeros(max(16, id_map.n_rows), dim)
        self.slots: dict[str, torch.Tensor] = {}
        self._evicted_ids: list[str] = []

    def slot(self, name: str) -> torch.Tensor:
        """Optimiser state shaped like :attr:`weight`, created as zeros on first use."""
        if name not in self.slots:
            self.slots[name] = torch.zeros_like(self.weight)
        return self.slots[name]

    def lookup(self, raw_ids: Sequence[Hashable], now: int, learn: bool = True) -> np.ndarray:
        """Rows for ``raw_ids``; in learning mode counts sightings and admits (see the id map)."""
        rows = self.id_map.lookup(raw_ids, now=now, learn=learn)
        if learn:
            self._grow(self.id_map.n_rows)
            self._reset_evicted()
        return rows

    def evict_expired(self, now: int) -> list[str]:
        """Evict rows untouched for :attr:`ttl`; returns the evicted ids."""
        evicted = self.id_map.evict_expired(now, self.ttl)
        self._reset_evicted()
        return evicted

    def drain_evicted_ids(self) -> list[str]:
        """Ids evicted (by TTL or capacity) since the last call."""
        ids, self._evicted_ids = self._evicted_ids, []
        return ids

    def zero_rows_mask(self) -> tuple[np.ndarray, np.ndarray]:
        """``(rows, is_zero)`` over admitted rows (fallback row excluded)."""
        rows = np.asarray([row for _, row in self.id_map.items()], dtype=np.int64)
        if rows.size == 0:
            return rows, np.zeros(0, dtype=bool)
        is_zero = ~self.weight[torch.from_numpy(rows)].ne(0).any(dim=1)
        return rows, is_zero.numpy()

    def zero_row_ratio(self) -> float:
        """Share of admitted rows whose weights are exactly zero (0.0 for an empty table)."""
        return zero_row_ratio([self.zero_rows_mask()[1]])

    def _grow(self, n_rows: int) -> None:
        if n_rows <= self.weight.shape[0]:
            return
        size = self.weight.shape[0]
        while size < n_rows:
            size *= 2
        self.weight = _grown(self.weight, size)
        self.slots = {name: _grown(value, size) for name, value in self.slots.items()}

    def _reset_evicted(self) -> None:
        rows, ids = self.id_map.take_evicted()
        if not rows:
            return
        index = torch.as_tensor(rows, dtype=torch.int64)
        self.weight[index] = 0.0
        for value in self.slots.values():
            value[index] = 0.0
        self._evicted_ids.extend(ids)


def _grown(tensor: torch.Tensor, size: int) -> torch.Tensor:
    out = torch.zeros(size, *tensor.shape[1:], dtype=tensor.dtype)
    out[: tensor.shape[0]] = tensor
    return out


def zero_row_ratio(masks: Iterable[np.ndarray]) -> float:
    """Share of all-zero rows over the given tables' ``is_zero`` masks (0.0 when they are empty).

    The one implementation: a table's, a student's (all tables) and the trainer's gauges use it.

    >>> zero_row_ratio([np.array([True, False]), np.array([True])]), zero_row_ratio([np.zeros(0, dtype=bool)])
    (0.6666666666666666, 0.0)
    """
    masks = list(masks)
    total = sum(mask.size for mask in masks)
    return sum(int(mask.sum()) for mask in masks) / total if total else 0.0
