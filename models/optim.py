"""The one optimiser step of the student's and the teacher's learners: FTRL rows + AdaGrad dense.

A learner's parameters come in two kinds. The embedding rows live in
:class:`~models.embedding.EmbeddingTable` tensors (not ``nn.Parameter``) and are trained by
FTRL-Proximal (:class:`~models.ftrl.FTRLProximal`) on the rows a batch touched, with the
gradients :meth:`~models.sparse.SparseLookup.row_grads` collected; the dense parameters of the
``nn.Module`` are trained by ``torch.optim.Adagrad``. :class:`SparseDenseOptimizer` does both
in one step::

    optimizer.zero_grad()
    loss.backward()
    optimizer.step(lookup, row_grad_scale=n_pairs)

State: the FTRL accumulators stay in the tables' slots ``"ftrl_z"`` / ``"ftrl_n"`` (so growing,
recycling and saving a table keep them aligned with its rows); the AdaGrad accumulators are the
state of :attr:`SparseDenseOptimizer.dense`, saved by :func:`models.checkpoint.dense_to_tensors`
as ``optim.<param>.<key>``. Neither changes format with this class.

>>> from torch import nn
>>> from models.embedding import EmbeddingTable
>>> from models.id_map import DynamicIdMap
>>> from models.sparse import SparseLookup
>>> table, layer = EmbeddingTable(2, DynamicIdMap()), nn.Linear(2, 1)
>>> optimizer = SparseDenseOptimizer(layer.parameters(), FTRLConfig(l1=0.0), dense_lr=0.1)
>>> lookup = SparseLookup({"tag": table}, now=0, learn=True)
>>> loss = layer(lookup.pool("tag", [("a",)])).sum() + lookup.pool("tag", [("a",)]).sum()
>>> optimizer.zero_grad()
>>> loss.backward()
>>> optimizer.step(lookup)
>>> bool(table.weight[1].ne(0).all()), len(optimizer.dense.state)   # row of "a" moved; 2 dense params
(True, 2)
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable
from typing import Any

import torch

from models.ftrl import FTRLConfig, FTRLProximal
from models.sparse import SparseLookup


class SparseDenseOptimizer:
    """FTRL-Proximal on the touched embedding rows and AdaGrad on the dense parameters.

    Parameters
    ----------
    parameters
        The dense parameters (``module.parameters()``), given to ``torch.optim.Adagrad``.
    ftrl
        FTRL-Proximal hyperparameters of the embedding rows.
    dense_lr
        AdaGrad learning rate of the dense parameters (its other settings are torch's defaults).
    """

    def __init__(
        self, parameters: Iterable[torch.nn.Parameter], ftrl: FTRLConfig = FTRLConfig(), dense_lr: float = 0.01
    ) -> None:
        self.ftrl = FTRLProximal(ftrl)
        self.dense_lr = dense_lr
        self.dense = adagrad(parameters, dense_lr)

    def zero_grad(self) -> None:
        """Clear the dense gradients (set to ``None``); the sparse ones live in each lookup."""
        self.dense.zero_grad(set_to_none=True)

    def step(self, lookup: SparseLookup, row_grad_scale: float = 1.0) -> None:
        """Step AdaGrad, then FTRL on every row ``lookup`` recorded a gradient for.

        Call after ``backward()``. The row gradients are multiplied by ``row_grad_scale``: the
        learners' losses are means over ``n_pairs`` pairs and FTRL wants the summed per-pair
        gradients (as in McMahan et al.), so they pass ``n_pairs`` and ``l1`` / ``l2`` stay in
        per-example units whatever the batch size. The rows are updated in ``lookup.tables``.
        """
        self.dense.step()
        for name, (rows, grads) in lookup.row_grads().items():
            self.ftrl.step(lookup.tables[name], rows, grads * row_grad_scale)

    def settings(self) -> dict[str, Any]:
        """``{"ftrl": {...}, "dense_lr": ...}``: the hyperparameters as the checkpoints store them."""
        return {"ftrl": dict(vars(self.ftrl.config)), "dense_lr": self.dense_lr}


def adagrad(parameters: Iterable[torch.nn.Parameter], lr: float) -> torch.optim.Adagrad:
    """``torch.optim.Adagrad`` with torch's defaults, fused where this torch has a fused CPU kernel.

    The fused kernel (torch >= 2.4) updates every parameter in one call instead of a Python loop
    of several tensor operations per parameter: measured ~5 ms less per learn step of the default
    student (32 requests x 20 items, ~45 ms), the same update up to float rounding, and the same
    state (``step``, ``sum``), so checkpoints load either way.
    """
    if "fused" in inspect.signature(torch.optim.Adagrad).parameters:
        return torch.optim.Adagrad(parameters, lr=lr, fused=True)
    return torch.optim.Adagrad(parameters, lr=lr)
