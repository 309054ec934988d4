"""Pooled lookups of variable-length id lists for one batch, with row gradients for FTRL.

Each call to :meth:`SparseLookup.pool` maps ids to rows (one dict lookup per id), gathers the
unique rows into a small leaf tensor and mean-pools every example's rows with
``embedding_bag``. After ``backward()``, :meth:`SparseLookup.row_grads` sums the leaves'
gradients per table and row, ready for :class:`~models.ftrl.FTRLProximal`.

An empty id list pools to the zero vector, which is how missing optional features are read.

>>> from models.embedding import EmbeddingTable
>>> from models.id_map import DynamicIdMap
>>> tables = {"tag": EmbeddingTable(2, DynamicIdMap())}
>>> lookup = SparseLookup(tables, now=0, learn=True)
>>> pooled = lookup.pool("tag", [("a", "b"), (), ("a",)])
>>> tuple(pooled.shape)
(3, 2)
>>> pooled.sum().backward()
>>> rows, grads = lookup.row_grads()["tag"]
>>> rows.tolist(), grads[:, 0].tolist()   # "a" is used by two bags with weights 1/2 and 1
([1, 2], [1.5, 0.5])
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from models.embedding import EmbeddingTable
from models.exceptions import InputError


class SparseLookup:
    """One batch's lookups into a set of tables.

    Parameters
    ----------
    tables
        Tables by name.
    now
        Time of the batch (for admission counting and TTL).
    learn
        Count sightings, admit ids and record leaves for gradients; ``False`` is read-only.
    """

    def __init__(self, tables: Mapping[str, EmbeddingTable], now: int, learn: bool) -> None:
        self.tables = tables
        self.now = now
        self.learn = learn
        self._leaves: list[tuple[str, torch.Tensor, torch.Tensor]] = []

    def pool(self, table_name: str, id_lists: Sequence[Sequence[str]], mode: str = "mean") -> torch.Tensor:
        """Mean (or ``mode="sum"``) of each list's rows: shape ``(len(id_lists), dim)``."""
        table = self.tables.get(table_name)
        if table is None:
            raise InputError(f"unknown embedding table {table_name!r}")
        flat = [raw_id for ids in id_lists for raw_id in ids]
        offsets = torch.from_numpy(_offsets(id_lists))
        if not flat:
            return torch.zeros(len(id_lists), table.dim)
        rows = torch.from_numpy(table.lookup(flat, now=self.now, learn=self.learn))
        if not self.learn:
            return _pool_rows(rows, table.weight, offsets, len(flat), mode)
        unique_rows, inverse = torch.unique(rows, return_inverse=True)
        leaf = table.weight.index_select(0, unique_rows)
        if self.learn:
            leaf.requires_grad_(True)
            self._leaves.append((table_name, unique_rows, leaf))
        return F.embedding_bag(inverse, leaf, offsets, mode=mode)

    def pool_slots(self, slots: Sequence[tuple[str, Sequence[Sequence[str]]]]) -> list[torch.Tensor]:
        """Mean of each list's rows for every ``(table_name, id_lists)`` slot: one
        ``(len(id_lists), dim)`` tensor per slot, in order.

        The values of one :meth:`pool` per slot, but one lookup, one leaf and one ``embedding_bag``
        per *table*: a tower reads the same table from several slots (five read ``context``), and
        each call costs a fixed few torch operations forward and backward. A table's slots are
        looked up together in slot order, so ids are sighted and admitted as one call per slot
        would do it.
        """
        positions: dict[str, list[int]] = {}
        for position, (table_name, _) in enumerate(slots):
            positions.setdefault(table_name, []).append(position)
        out: list[torch.Tensor] = [torch.empty(0)] * len(slots)
        for table_name, members in positions.items():
            bags = [ids for member in members for ids in slots[member][1]]
            pooled = self.pool(table_name, bags)
            for member, part in zip(members, pooled.split([len(slots[m][1]) for m in members])):
                out[member] = part
        return out

    def row_grads(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Per table, unique rows ``(k,)`` and summed gradients ``(k, dim)`` of all leaves.

        Leaves that received no gradient are skipped.
        """
        by_table: dict[str, tuple[list[torch.Tensor], list[torch.Tensor]]] = {}
        for name, rows, leaf in self._leaves:
            if leaf.grad is None:
                continue
            row_parts, grad_parts = by_table.setdefault(name, ([], []))
            row_parts.append(rows)
            grad_parts.append(leaf.grad)
        out = {}
        for name, (row_parts, grad_parts) in by_table.items():
            if len(row_parts) == 1:
                out[name] = (row_parts[0], grad_parts[0])
                continue
            rows, inverse = torch.unique(torch.cat(row_parts), return_inverse=True)
            grads = torch.zeros(rows.shape[0], grad_parts[0].shape[1])
            grads.index_add_(0, inverse, torch.cat(grad_parts))
            out[name] = (rows, grads)
        return out


def _offsets(id_lists: Sequence[Sequence[str]]) -> np.ndarray:
    """Where each list starts in the concatenation: int64 ``(len(id_lists),)``, starting at 0."""
    offsets = np.zeros(len(id_lists), dtype=np.int64)
    if len(id_lists) > 1:
        np.cumsum(np.fromiter(map(len, id_lists[:-1]), dtype=np.int64, count=len(id_lists) - 1), out=offsets[1:])
    return offsets


def _pool_rows(rows: torch.Tensor, weight: torch.Tensor, offsets: torch.Tensor, total: int, mode: str) -> torch.Tensor:
    """Read-only pooling of ``rows`` (int64 ``(total,)``) straight from ``weight``: ``(len(offsets), dim)``.

    No leaf to record, so no ``unique`` + ``index_select`` copy; and the mean is the sum divided by
    the bag length, which is how ``embedding_bag`` computes it (bit-equal, tested) but ~3x cheaper
    per call than its ``mode="mean"`` on small batches. Empty bags pool to zero either way.
    """
    summed = F.embedding_bag(rows, weight, offsets, mode="sum")
    if mode == "sum":
        return summed
    if mode != "mean":
        raise InputError(f"unknown pooling mode {mode!r}")
    lengths = torch.diff(offsets, append=torch.tensor([total], dtype=torch.int64))
    return summed / lengths.clamp(min=1).to(summed.dtype).unsqueeze(1)
