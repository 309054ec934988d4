"""A shallow interaction head over the two towers' vectors, in place of the cosine.

The article's plan for the pre-ranker's head (IntTower, COLD): the cosine lets a user and an
item meet only in one dot product; a small network over ``u``, ``v`` and ``u * v`` lets them
interact, at a cost per candidate. :class:`InteractionHead` computes

    logit = w2 . relu(W_u u + W_v v + W_uv (u * v) + b1) + b2

for unit vectors ``u`` (user) and ``v`` (item) of ``dim`` floats and ``hidden`` units. The item
vectors stay what the item tower computes (the cache and Redis hold the same vectors), and a
scorer still runs the user tower once per request: :meth:`InteractionHead.score_items` folds the
user into one ``(hidden, dim)`` matrix, so 1000 candidates cost one ``(1000, dim) x (dim,
hidden)`` product, ``hidden`` times the cosine's.

>>> import torch
>>> head = InteractionHead(dim=4, hidden=3)
>>> u, v = torch.nn.functional.normalize(torch.randn(5, 4), dim=1), torch.nn.functional.normalize(torch.randn(5, 4), dim=1)
>>> tuple(head(u, v).shape)
(5,)
>>> bool(torch.allclose(head.score_items(u[0], v), head(u[:1].expand(5, 4), v), atol=1e-6))
True
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class InteractionHead(nn.Module):
    """``w2 . relu(W_u u + W_v v + W_uv (u * v) + b1) + b2``; see the module docstring.

    Parameters
    ----------
    dim
        Length of the user and item vectors.
    hidden
        Hidden units.
    """

    def __init__(self, dim: int, hidden: int = 32) -> None:
        super().__init__()
        if dim < 1 or hidden < 1:
            raise ValueError(f"dim and hidden must be >= 1, got {dim}, {hidden}")
        self.user = nn.Linear(dim, hidden)  # W_u and b1
        self.item = nn.Linear(dim, hidden, bias=False)  # W_v
        self.product = nn.Linear(dim, hidden, bias=False)  # W_uv
        self.out = nn.Linear(hidden, 1)  # w2 and b2

    def forward(self, user_vectors: torch.Tensor, item_vectors: torch.Tensor) -> torch.Tensor:
        """Logits of aligned pairs: ``(n, dim)`` and ``(n, dim)`` to ``(n,)``."""
        hidden = self.user(user_vectors) + self.item(item_vectors) + self.product(user_vectors * item_vectors)
        return self.out(F.relu(hidden)).squeeze(1)

    def score_items(self, user_vector: torch.Tensor, item_vectors: torch.Tensor) -> torch.Tensor:
        """Logits of one user ``(dim,)`` against ``(m, dim)`` items: ``(m,)``, as :meth:`forward`
        gives for the pairs, with the user's side computed once."""
        folded = self.item.weight + self.product.weight * user_vector  # (hidden, dim)
        hidden = torch.addmm(self.user(user_vector), item_vectors, folded.t())
        return self.out(F.relu(hidden)).squeeze(1)
