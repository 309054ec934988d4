"""Teacher networks over a per-pair dense input: Wide&Deep and MMoE, one logit per objective.

Both take ``deep`` of shape ``(n_pairs, in_features)`` and ``wide`` of shape
``(n_pairs, n_tasks)`` (the summed wide-table rows; MMoE adds it too, so the two
architectures see the same features) and return logits ``(n_pairs, n_tasks)``.

>>> net = MMoE(in_features=6, n_tasks=3, n_experts=2, expert_sizes=(8, 4), tower_hidden=4)
>>> tuple(net(torch.zeros(5, 6), torch.zeros(5, 3)).shape)
(5, 3)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from models.two_tower import mlp


class WideAndDeep(nn.Module):
    """``wide + MLP(deep)`` (Cheng et al. 2016); the MLP has ``len(hidden_sizes) + 1`` layers."""

    def __init__(self, in_features: int, n_tasks: int, hidden_sizes: Sequence[int] = (256, 128)) -> None:
        super().__init__()
        self.deep = mlp(in_features, hidden_sizes, n_tasks)

    def forward(self, deep: torch.Tensor, wide: torch.Tensor) -> torch.Tensor:
        return self.deep(deep) + wide


class MMoE(nn.Module):
    """Multi-gate mixture of experts (Ma et al. 2018): shared experts, a softmax gate and a tower per task."""

    def __init__(
        self, in_features: int, n_tasks: int, n_experts: int = 4,
        expert_sizes: Sequence[int] = (128, 64), tower_hidden: int = 32,
    ) -> None:
        super().__init__()
        expert_out = expert_sizes[-1]
        self.experts = nn.ModuleList(
            nn.Sequential(mlp(in_features, expert_sizes[:-1], expert_out), nn.ReLU()) for _ in range(n_experts)
        )
        self.gates = nn.Linear(in_features, n_tasks * n_experts)
        self.towers = nn.ModuleList(mlp(expert_out, (tower_hidden,), 1) for _ in range(n_tasks))
        self.n_tasks, self.n_experts = n_tasks, n_experts

    def forward(self, deep: torch.Tensor, wide: torch.Tensor) -> torch.Tensor:
        experts = torch.stack([expert(deep) for expert in self.experts], dim=1)  # (n, E, H)
        gates = self.gates(deep).view(-1, self.n_tasks, self.n_experts).softmax(dim=2)  # (n, T, E)
        mixed = gates @ experts  # (n, T, H)
        logits = torch.cat([tower(mixed[:, t]) for t, tower in enumerate(self.towers)], dim=1)
        return logits + wide
