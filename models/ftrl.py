"""FTRL-Proximal (McMahan et al., KDD 2013, Algorithm 1) for sparse embedding rows.

torch has no FTRL, so this is ours. Per coordinate, with accumulators ``z`` and ``n``::

    sigma = (sqrt(n + g^2) - sqrt(n)) / alpha
    z    += g - sigma * w
    n    += g^2
    w     = 0                                                  if |z| <= l1
          = -(z - sign(z) * l1) / ((beta + sqrt(n)) / alpha + l2)   otherwise

Only the rows a batch touched are read and written (``index_select`` / ``index_copy_``), so a
step costs O(touched rows), whatever the table size. Because ``w`` is exactly zero while
``|z| <= l1``, rows of rarely or weakly useful ids stay all-zero and can be pruned at export.

>>> z, n, w = ftrl_update(torch.zeros(1), torch.zeros(1), torch.zeros(1), torch.tensor([2.0]),
...                       FTRLConfig(alpha=1.0, beta=0.0, l1=0.5, l2=0.0))
>>> float(z), float(n), float(w)     # sigma = 2, z = 2, w = -(2 - 0.5) / 2
(2.0, 4.0, -0.75)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from models.embedding import EmbeddingTable
from models.exceptions import ConfigError, InputError


@dataclass(frozen=True)
class FTRLConfig:
    """FTRL-Proximal hyperparameters (learning rate ``alpha``, ``beta``, ``l1``, ``l2``).

    The student's learner feeds per-example summed gradients, so ``l1`` and ``l2`` are in
    per-example units and ``z`` grows with the volume a row sees: the knee on KuaiRand's full
    volume is ``l1=28`` (53% all-zero rows at a long-view AUC loss of 0.0047, the trainer's
    default ``model.ftrl_l1``), while on a user-sampled or small stream ``l1=0.5`` (this default)
    already zeroes 72-91% of the rows.
    """

    alpha: float = 0.05
    beta: float = 1.0
    l1: float = 0.5
    l2: float = 0.0

    def __post_init__(self) -> None:
        if self.alpha <= 0:
            raise ConfigError(f"alpha must be > 0, got {self.alpha}")
        for name in ("beta", "l1", "l2"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")


def ftrl_update(
    z: torch.Tensor, n: torch.Tensor, w: torch.Tensor, grad: torch.Tensor, config: FTRLConfig
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One FTRL-Proximal step on dense tensors of equal shape; returns new ``(z, n, w)``."""
    n_new = n + grad * grad
    sigma = (n_new.sqrt() - n.sqrt()) / config.alpha
    z_new = z + grad - sigma * w
    shrunk = z_new - torch.sign(z_new) * config.l1
    denominator = (config.beta + n_new.sqrt()) / config.alpha + config.l2
    w_new = torch.where(z_new.abs() <= config.l1, torch.zeros_like(z_new), -shrunk / denominator)
    return z_new, n_new, w_new


class FTRLProximal:
    """Applies :func:`ftrl_update` to the touched rows of an :class:`EmbeddingTable`.

    The accumulators live in the table's slots ``"ftrl_z"`` and ``"ftrl_n"``.
    """

    def __init__(self, config: FTRLConfig = FTRLConfig()) -> None:
        self.config = config

    def step(self, table: EmbeddingTable, rows: torch.Tensor, grads: torch.Tensor) -> None:
        """Update ``rows`` (unique int64, shape ``(k,)``) with ``grads`` (shape ``(k, dim)``)."""
        if rows.ndim != 1 or grads.shape != (rows.shape[0], table.dim):
            raise InputError(
                f"rows {tuple(rows.shape)} and grads {tuple(grads.shape)} do not match dim {table.dim}"
            )
        if rows.numel() == 0:
            return
        z, n = table.slot("ftrl_z"), table.slot("ftrl_n")
        z_new, n_new, w_new = ftrl_update(
            z.index_select(0, rows), n.index_select(0, rows), table.weight.index_select(0, rows),
            grads, self.config,
        )
        z.index_copy_(0, rows, z_new)
        n.index_copy_(0, rows, n_new)
        table.weight.index_copy_(0, rows, w_new)
