"""Global-CTR truncation: rank candidates by their running (smoothed) item rate.

The oldest pre-ranker of the article: no model, just the item's statistic of the label
(click by default), falling back to the global rate for unseen items. Scores are logits.

>>> from models.synthetic import SyntheticRequests
>>> baseline = GlobalCTR()
>>> samples = SyntheticRequests(seed=0, items_per_request=5).batch(20)
>>> _ = baseline.learn_many(samples)
>>> baseline.score(samples[0].user, samples[0].items).dtype
dtype('float32')
"""

from __future__ import annotations

from models.baselines.base import StatisticalBaseline, logit


class GlobalCTR(StatisticalBaseline):
    """Item click (or long-view) rate as the score; learning only updates the statistics."""

    kind = "global_ctr"

    def _learn_pairs(self, xs: list[dict[str, float]], ys: list[int]) -> None:
        return None

    def _score_pairs(self, xs: list[dict[str, float]]) -> list[float]:
        key = "item_lvr" if self.label == "long_view" else "item_ctr"
        return [logit(x[key]) for x in xs]
