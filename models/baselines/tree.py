"""An online tree standing in for GBDT: river's Hoeffding tree over the statistical features.

A Hoeffding tree's state (split statistics in every leaf) has no practical JSON form, so the
baseline keeps its training log (feature dicts and labels, in order) and :meth:`load` rebuilds
the tree by replaying it: the rebuild is exact because river's tree is deterministic. The log
grows with training (about 300 bytes per pair); ``max_log`` bounds it, and a model whose log
was truncated refuses to save rather than saving something it could not rebuild.

>>> from models.synthetic import SyntheticRequests
>>> baseline = OnlineTree()
>>> _ = baseline.learn_many(SyntheticRequests(seed=0, items_per_request=5).batch(20))
>>> baseline.score(UserFeatures("u"), [ItemFeatures("i1")]).shape
(1,)
"""

from __future__ import annotations

from typing import Any

from river import tree

from models.baselines.base import StatisticalBaseline, logit
from models.exceptions import ExportError
from models.features import ItemFeatures, UserFeatures  # noqa: F401 (doctest)


class OnlineTree(StatisticalBaseline):
    """``river.tree.HoeffdingTreeClassifier`` (``grace_period``, ``delta``) on statistical features."""

    kind = "online_tree"

    def __init__(
        self, label: str = "click", group_field: str = "user_active_degree",
        grace_period: int = 200, delta: float = 1e-5, max_log: int = 1_000_000,
    ) -> None:
        super().__init__(label, group_field)
        self.hyper = {"grace_period": grace_period, "delta": delta, "max_log": max_log}
        self.model = tree.HoeffdingTreeClassifier(grace_period=grace_period, delta=delta)
        self._log: list[tuple[dict[str, float], int]] = []
        self._log_truncated = False

    def params(self) -> dict[str, Any]:
        return super().params() | self.hyper

    def _learn_pairs(self, xs: list[dict[str, float]], ys: list[int]) -> None:
        for x, y in zip(xs, ys):
            self.model.learn_one(x, y)
            if len(self._log) < self.hyper["max_log"]:
                self._log.append((x, y))
            else:
                self._log_truncated = True

    def _score_pairs(self, xs: list[dict[str, float]]) -> list[float]:
        return [logit(self.model.predict_proba_one(x).get(1, 0.5)) for x in xs]

    def _model_state(self) -> dict[str, Any]:
        if self._log_truncated:
            raise ExportError(f"training log exceeded max_log={self.hyper['max_log']}: cannot rebuild the tree")
        return {"log": [[x, y] for x, y in self._log]}

    def _restore_model(self, state: dict[str, Any]) -> None:
        for x, y in state["log"]:
            self._learn_pairs([x], [y])
