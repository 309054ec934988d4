"""The two-tower student: a user tower and an item tower, cosine x temperature + bias.

Each tower mean-pools its slots' embeddings (see :mod:`models.tokens`), concatenates them
(shape ``(batch, n_slots * embedding_dim)``) and applies ``len(hidden_sizes) + 1`` Linear
layers (ReLU between) to an ``output_dim`` vector, L2-normalised. The logit of a (user, item)
pair is ``temperature * cos(u, v) + bias``, plus, with ``user_bias=True``, the user's own offset:
one linear unit over the user tower's input. It is the same for every item of a request, so it
never changes an item's rank there; it carries how likely this user is to click or watch at
all, which the bounded cosine cannot, and so lifts an AUC taken across users. With
``head="interaction"`` a shallow network over ``u``, ``v`` and ``u * v`` replaces the cosine
(:mod:`models.interaction`); the towers and the vectors a cache holds stay the same.

:class:`TwoTowerStudent` is the trainable ``nn.Module``: :meth:`TwoTowerStudent.forward` maps
requests' users and their items to pair logits, and a learner back-propagates through it. It holds
no optimiser (see :class:`models.learner.StudentLearner`). Scoring for serving lives in
:class:`models.served.ServedStudent`: item vectors depend on item features only, so a scorer runs
the user tower once per request and reuses cached item vectors.

>>> from models.features import ItemFeatures, UserFeatures
>>> from models.served import ServedStudent
>>> student = TwoTowerStudent(TwoTowerConfig(embedding_dim=4, hidden_sizes=(8, 8), output_dim=6))
>>> users, items = [UserFeatures("u1"), UserFeatures("u2")], [ItemFeatures("i1"), ItemFeatures("i2", tags=("t",))]
>>> logits = student(users, items, torch.tensor([0, 0, 1]), torch.tensor([0, 1, 1]))
>>> tuple(logits.shape), logits.requires_grad
((3,), True)
>>> bool(torch.allclose(logits[:2], torch.from_numpy(ServedStudent(student).score(users[0], items))))
True
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from models.embedding import EmbeddingTable, zero_row_ratio
from models.exceptions import ConfigError
from models.features import ItemFeatures, UserFeatures
from models.id_map import DynamicIdMap
from models.interaction import InteractionHead
from models.sparse import SparseLookup
from models.tokens import (
    ITEM_SLOT_TABLES,
    TABLES,
    USER_SLOT_TABLES,
    item_slots,
    user_slots,
)

DAY_MS = 86_400_000
HEADS = ("cosine", "interaction")


@dataclass(frozen=True)
class TwoTowerConfig:
    """Sizes and embedding-table policy of the student.

    ``ttl_ms`` and ``capacity`` apply to each embedding table; time is event time in ms.
    """

    embedding_dim: int = 32
    hidden_sizes: tuple[int, ...] = (512, 512)
    output_dim: int = 512
    min_count: int = 2
    ttl_ms: int | None = 7 * DAY_MS
    capacity: int | None = 2_000_000
    init_temperature: float = 5.0
    user_bias: bool = False
    head: str = "cosine"  # or "interaction" (models.interaction)
    head_hidden: int = 32
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("embedding_dim", "output_dim", "min_count"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if any(size < 1 for size in self.hidden_sizes):
            raise ConfigError(f"hidden sizes must be >= 1, got {self.hidden_sizes}")
        if self.head not in HEADS:
            raise ConfigError(f"head must be one of {HEADS}, got {self.head!r}")
        if self.head_hidden < 1:
            raise ConfigError(f"head_hidden must be >= 1, got {self.head_hidden}")
        if self.init_temperature <= 0:
            raise ConfigError(f"init_temperature must be > 0, got {self.init_temperature}")
        object.__setattr__(self, "hidden_sizes", tuple(self.hidden_sizes))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TwoTowerConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ConfigError(f"unknown TwoTowerConfig fields: {sorted(unknown)}")
        return cls(**values)


def mlp(in_features: int, hidden_sizes: Sequence[int], out_features: int) -> nn.Sequential:
    """Linear layers with ReLU between them (none after the last)."""
    sizes = [in_features, *hidden_sizes, out_features]
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class TwoTowerStudent(nn.Module):
    """User tower, item tower and the dynamic embedding tables they read.

    Parameters
    ----------
    config
        Sizes and table policy; the dense weights are initialised from ``config.seed``
        without touching torch's global random state.
    tables
        Prebuilt tables (used by loaders); by default fresh empty tables.
    """

    def __init__(self, config: TwoTowerConfig, tables: dict[str, EmbeddingTable] | None = None) -> None:
        super().__init__()
        self.config = config
        self.tables = tables if tables is not None else {
            name: EmbeddingTable(config.embedding_dim, DynamicIdMap(config.min_count, config.capacity), config.ttl_ms)
            for name in TABLES
        }
        dim = config.embedding_dim
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            self.user_tower = mlp(len(USER_SLOT_TABLES) * dim, config.hidden_sizes, config.output_dim)
            self.item_tower = mlp(len(ITEM_SLOT_TABLES) * dim, config.hidden_sizes, config.output_dim)
            # Zero at the start: a new head leaves a model's scores where they were.
            self.user_offset = nn.Linear(len(USER_SLOT_TABLES) * dim, 1) if config.user_bias else None
            if self.user_offset is not None:
                nn.init.zeros_(self.user_offset.weight)
                nn.init.zeros_(self.user_offset.bias)
            self.interaction = (InteractionHead(config.output_dim, config.head_hidden)
                                if config.head == "interaction" else None)
        self.log_temperature = nn.Parameter(torch.tensor(math.log(config.init_temperature)))
        self.bias = nn.Parameter(torch.zeros(()))

    # ------------------------------------------------------------ torch side (training)
    def forward(
        self,
        users: Sequence[UserFeatures],
        items: Sequence[ItemFeatures],
        request_index: torch.Tensor,
        item_index: torch.Tensor,
        lookup: SparseLookup | None = None,
    ) -> torch.Tensor:
        """Logits of the pairs ``(users[request_index[p]], items[item_index[p]])``: shape ``(n_pairs,)``.

        ``users`` are the ``R`` requests' users and ``items`` the ``I`` distinct items; each tower
        runs once per user / item (``(R, output_dim)`` and ``(I, output_dim)`` unit vectors) and the
        vectors are broadcast to the pairs. ``request_index`` and ``item_index`` are int64
        ``(n_pairs,)``. ``lookup`` reads (and, if learning, admits and records) the embedding rows;
        by default a read-only lookup of :attr:`tables`.
        """
        if lookup is None:
            lookup = SparseLookup(self.tables, now=0, learn=False)
        # Both towers' slots in one lookup: the tables they share (item, author, tag, context)
        # are read once, user slots first, as encode_users then encode_items would.
        user_part, item_part = list(user_slots(users).values()), list(item_slots(items).values())
        pooled = lookup.pool_slots(user_part + item_part)
        user_input = torch.cat(pooled[: len(user_part)], dim=1)
        user_vectors = F.normalize(self.user_tower(user_input), dim=1)
        item_vectors = _unit_tower(self.item_tower, pooled[len(user_part) :])
        logits = self.pair_logits(user_vectors[request_index], item_vectors[item_index])
        if self.user_offset is None:
            return logits
        return logits + self.user_offset(user_input).squeeze(1)[request_index]

    def encode_users(self, users: Sequence[UserFeatures], lookup: SparseLookup) -> torch.Tensor:
        """Unit user vectors, shape ``(len(users), output_dim)``."""
        return _unit_tower(self.user_tower, lookup.pool_slots(list(user_slots(users).values())))

    def encode_items(self, items: Sequence[ItemFeatures], lookup: SparseLookup) -> torch.Tensor:
        """Unit item vectors, shape ``(len(items), output_dim)``."""
        return _unit_tower(self.item_tower, lookup.pool_slots(list(item_slots(items).values())))

    def pair_logits(self, user_vectors: torch.Tensor, item_vectors: torch.Tensor) -> torch.Tensor:
        """Row-wise ``temperature * <u, v> + bias`` (or the interaction head's logit, plus
        ``bias``) for aligned ``(n, d)`` inputs: shape ``(n,)``."""
        if self.interaction is not None:
            return self.interaction(user_vectors, item_vectors) + self.bias
        return self.log_temperature.exp() * (user_vectors * item_vectors).sum(dim=1) + self.bias

    def zero_row_ratio(self) -> float:
        """Share of admitted embedding rows (all tables, fallback rows excluded) that are all zero."""
        return zero_row_ratio(table.zero_rows_mask()[1] for table in self.tables.values())


def _unit_tower(tower: nn.Module, pooled: Sequence[torch.Tensor]) -> torch.Tensor:
    """``tower`` over the slots' pooled embeddings (each ``(n, embedding_dim)``), L2-normalised:
    shape ``(n, output_dim)``."""
    return F.normalize(tower(torch.cat(list(pooled), dim=1)), dim=1)
