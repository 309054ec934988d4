"""Logistic regression with FTRL-Proximal (river) over the statistical features.

``river.linear_model.LogisticRegression(optimizer=river.optim.FTRLProximal(...))``. The state
(weights, intercept and the optimiser's ``z``/``n``) is saved as JSON and restored exactly.
river's FTRL never sets a weight back to exactly zero: it is a baseline, not our sparsity
reference (see :mod:`models.ftrl`).

>>> from models.synthetic import SyntheticRequests
>>> baseline = LogisticFTRL()
>>> _ = baseline.learn_many(SyntheticRequests(seed=0, items_per_request=5).batch(20))
>>> sorted(baseline.model.weights)[:2]
['author_ctr', 'author_lvr']
"""

from __future__ import annotations

from typing import Any

from river import linear_model, optim

from models.baselines.base import StatisticalBaseline, logit


class LogisticFTRL(StatisticalBaseline):
    """river logistic regression trained with ``optim.FTRLProximal``."""

    kind = "logistic_ftrl"

    def __init__(
        self, label: str = "click", group_field: str = "user_active_degree",
        alpha: float = 0.05, beta: float = 1.0, l1: float = 0.0, l2: float = 1.0,
    ) -> None:
        super().__init__(label, group_field)
        self.hyper = {"alpha": alpha, "beta": beta, "l1": l1, "l2": l2}
        self.model = linear_model.LogisticRegression(optimizer=optim.FTRLProximal(**self.hyper))

    def params(self) -> dict[str, Any]:
        return super().params() | self.hyper

    def _learn_pairs(self, xs: list[dict[str, float]], ys: list[int]) -> None:
        for x, y in zip(xs, ys):
            self.model.learn_one(x, bool(y))

    def _score_pairs(self, xs: list[dict[str, float]]) -> list[float]:
        return [logit(self.model.predict_proba_one(x).get(True, 0.5)) for x in xs]

    def _model_state(self) -> dict[str, Any]:
        optimizer = self.model.optimizer
        return {
            "weights": dict(self.model._weights),
            "intercept": self.model.intercept,
            "z": dict(optimizer.z), "n": dict(optimizer.n), "n_iterations": optimizer.n_iterations,
        }

    def _restore_model(self, state: dict[str, Any]) -> None:
        for key, value in state["weights"].items():
            self.model._weights[key] = value
        self.model.intercept = state["intercept"]
        self.model.optimizer.z.update(state["z"])
        self.model.optimizer.n.update(state["n"])
        self.model.optimizer.n_iterations = state["n_iterations"]
