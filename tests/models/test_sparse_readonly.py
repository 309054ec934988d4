"""Read-only pooling (no leaves) equals embedding_bag's own mean and sum, empty bags included."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from models.embedding import EmbeddingTable
from models.id_map import DynamicIdMap
from models.sparse import SparseLookup


def _table() -> EmbeddingTable:
    table = EmbeddingTable(6, DynamicIdMap(min_count=2))  # a learning lookup sees "unknown" once: not admitted
    table.lookup([f"id{k}" for k in range(40)] * 2, now=0)
    table.weight = torch.randn(table.weight.shape, generator=torch.Generator().manual_seed(0))
    return table


def test_read_only_pool_equals_embedding_bag_mean_and_sum():
    bags = [("id1", "id2", "id2"), (), ("unknown",), tuple(f"id{k}" for k in range(40)), ("id7",), ()]
    offsets = torch.tensor([0, *torch.cumsum(torch.tensor([len(b) for b in bags[:-1]]), 0).tolist()])
    for mode in ("mean", "sum"):
        table = _table()  # fresh: the learning lookup below counts sightings
        rows = torch.from_numpy(table.lookup([i for bag in bags for i in bag], now=0, learn=False))
        pooled = SparseLookup({"t": table}, now=0, learn=False).pool("t", bags, mode=mode)
        assert torch.equal(pooled, F.embedding_bag(rows, table.weight, offsets, mode=mode))
        learned = SparseLookup({"t": table}, now=0, learn=True).pool("t", bags, mode=mode)
        torch.testing.assert_close(pooled, learned.detach(), rtol=1e-6, atol=1e-7)
    assert torch.equal(pooled[1], torch.zeros(6)) and torch.equal(pooled[5], torch.zeros(6))
