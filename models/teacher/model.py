"""The teacher (reference fine ranker) module: richer features than the student.

Per (user, item) pair the deep input concatenates

* the student's user slots and item slots (pooled embeddings, see :mod:`models.tokens`);
* cross embeddings: user x author and user x tag (pooled over the item's tags);
* dense pair features: how often the item's author / tags occur in the user's history, and the
  running item statistics (:class:`~models.teacher.item_stats.ItemStatistics`);

and the wide part sums ``n_tasks``-dimensional rows of the item, author and cross tokens.
Shape: ``deep (n_pairs, n_deep)``, ``wide (n_pairs, n_tasks)``, logits ``(n_pairs, n_tasks)``.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from models.embedding import EmbeddingTable
from models.exceptions import ConfigError
from models.features import OBJECTIVES, ItemFeatures, UserFeatures
from models.id_map import DynamicIdMap
from models.sparse import SparseLookup
from models.teacher.item_rows import ItemRows, user_part
from models.teacher.item_stats import N_FEATURES
from models.teacher.networks import MMoE, WideAndDeep
from models.tokens import (
    ITEM_SLOT_TABLES,
    TABLES,
    USER_SLOT_TABLES,
    item_slots,
    user_slots,
)
from models.two_tower import DAY_MS

N_PAIR_FEATURES = 2
N_TASKS = len(OBJECTIVES)


@dataclass(frozen=True)
class TeacherConfig:
    """Architecture and sizes of the teacher."""

    architecture: Literal["wide_deep", "mmoe"] = "mmoe"
    embedding_dim: int = 16
    hidden_sizes: tuple[int, ...] = (256, 128)
    n_experts: int = 4
    expert_sizes: tuple[int, ...] = (128, 64)
    tower_hidden: int = 32
    min_count: int = 1
    ttl_ms: int | None = 14 * DAY_MS
    capacity: int | None = 2_000_000
    seed: int = 0

    def __post_init__(self) -> None:
        if self.architecture not in ("wide_deep", "mmoe"):
            raise ConfigError(f"architecture must be 'wide_deep' or 'mmoe', got {self.architecture!r}")
        if self.embedding_dim < 1 or self.n_experts < 1 or not self.expert_sizes:
            raise ConfigError("embedding_dim and n_experts must be >= 1 and expert_sizes non-empty")
        object.__setattr__(self, "hidden_sizes", tuple(self.hidden_sizes))
        object.__setattr__(self, "expert_sizes", tuple(self.expert_sizes))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TeacherConfig:
        return cls(**values)


class TeacherModel(nn.Module):
    """Tables + network of the teacher; no optimiser inside."""

    def __init__(self, config: TeacherConfig) -> None:
        super().__init__()
        self.config = config
        dim = config.embedding_dim

        def table(width: int) -> EmbeddingTable:
            return EmbeddingTable(width, DynamicIdMap(config.min_count, config.capacity), config.ttl_ms)

        self.tables = {name: table(dim) for name in (*TABLES, "cross")}
        self.tables["wide"] = table(N_TASKS)
        n_deep = (len(USER_SLOT_TABLES) + len(ITEM_SLOT_TABLES) + 2) * dim + N_PAIR_FEATURES + N_FEATURES
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            if config.architecture == "wide_deep":
                self.network: nn.Module = WideAndDeep(n_deep, N_TASKS, config.hidden_sizes)
            else:
                self.network = MMoE(n_deep, N_TASKS, config.n_experts, config.expert_sizes, config.tower_hidden)
        self.item_rows = ItemRows()

    def forward(
        self,
        users: Sequence[UserFeatures],
        items: Sequence[ItemFeatures],
        request_index: torch.Tensor,
        item_index: torch.Tensor,
        item_statistics: np.ndarray,
        lookup: SparseLookup,
    ) -> torch.Tensor:
        """Logits ``(n_pairs, n_tasks)`` for pairs ``(users[request_index[p]], items[item_index[p]])``.

        ``item_statistics`` is float32 ``(len(items), 4)``.
        """
        user_part = torch.cat([lookup.pool(t, ids) for t, ids in user_slots(users).values()], dim=1)
        item_part = torch.cat([lookup.pool(t, ids) for t, ids in item_slots(items).values()], dim=1)
        pair_users = [users[r] for r in request_index.tolist()]
        pair_items = [items[i] for i in item_index.tolist()]
        user_author = [(f"{u.user_id}|{i.author_id}",) if i.author_id else () for u, i in zip(pair_users, pair_items)]
        user_tags = [tuple(f"{u.user_id}|{t}" for t in i.tags) for u, i in zip(pair_users, pair_items)]
        wide_tokens = [
            (f"i={i.item_id}", *(f"a={i.author_id}",)[: bool(i.author_id)], *(f"u{t}" for t in ua), *(f"u{t}" for t in ut))
            for i, ua, ut in zip(pair_items, user_author, user_tags)
        ]
        deep = torch.cat(
            [
                user_part[request_index],
                item_part[item_index],
                lookup.pool("cross", user_author),
                lookup.pool("cross", user_tags),
                torch.from_numpy(_history_overlap(users, items, request_index, item_index)),
                torch.from_numpy(item_statistics)[item_index],
            ],
            dim=1,
        )
        return self.network(deep, lookup.pool("wide", wide_tokens, mode="sum"))

    def score_one_user(self, user: UserFeatures, items: Sequence[ItemFeatures], item_statistics: np.ndarray) -> torch.Tensor:
        """Read-only logits ``(len(items), n_tasks)`` of ``user`` paired with each item.

        Equal to :meth:`forward` with one user and ``learn=False`` (tested), but the item-side
        rows come from :attr:`item_rows` and the crosses are built per distinct author / tag, so
        the cost per item is a few numpy gathers instead of ~20 Python strings and dict lookups.
        ``item_statistics`` is float32 ``(len(items), 4)``. Call under ``torch.no_grad()``.
        """
        bags = self.item_rows.bags(user, items, self.tables)
        item_part = torch.cat(
            [bags.item[slot].pool(self.tables[table]) for slot, table in ITEM_SLOT_TABLES.items()], dim=1
        )
        cross = self.tables["cross"]
        deep = torch.cat(
            [
                user_part(user, self.tables).expand(len(items), -1),
                item_part,
                bags.cross_author.pool(cross),
                bags.cross_tags.pool(cross),
                torch.from_numpy(bags.overlap),
                torch.from_numpy(item_statistics),
            ],
            dim=1,
        )
        return self.network(deep, bags.wide.pool(self.tables["wide"], mode="sum"))


def _history_overlap(
    users: Sequence[UserFeatures], items: Sequence[ItemFeatures], request_index: torch.Tensor, item_index: torch.Tensor
) -> np.ndarray:
    """Float32 ``(n_pairs, 2)``: share of the user's history by the item's author and by its tags."""
    authors = [Counter(u.history_authors) for u in users]
    tags = [Counter(u.history_tags) for u in users]
    out = np.zeros((len(request_index), N_PAIR_FEATURES), dtype=np.float32)
    for p, (r, i) in enumerate(zip(request_index.tolist(), item_index.tolist())):
        item = items[i]
        user = users[r]
        if user.history_authors and item.author_id:
            out[p, 0] = authors[r][item.author_id] / len(user.history_authors)
        if user.history_tags and item.tags:
            out[p, 1] = sum(tags[r][t] for t in item.tags) / len(user.history_tags)
    return out
