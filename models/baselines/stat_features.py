"""Streaming statistical features of the article's older pre-rankers, built with ``river.stats``.

Running means (``river.stats.Mean``) of click and long view per item, author, tag and
(user group x tag), plus the user's history counts and the overlap of the item with that
history. Rates of keys never seen fall back to the global rate. Play-time quantiles need
play time per impression, which :class:`~models.features.RequestSample` does not carry yet;
the long-view rate stands in for them.

>>> from models.features import ItemFeatures, UserFeatures
>>> features = StatisticalFeatures()
>>> user, item = UserFeatures("u", profile={"user_active_degree": "high"}), ItemFeatures("i", "a", ("t",))
>>> features.update(user, [item], clicks=[1], long_views=[0])
>>> x = features.features(user, [item, ItemFeatures("new")])
>>> x[0]["item_ctr"], x[0]["group_tag_ctr"], x[1]["item_ctr"]   # unseen -> global rate
(1.0, 1.0, 1.0)
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from typing import Any

from river import stats

from models.features import ItemFeatures, UserFeatures

FEATURE_NAMES: tuple[str, ...] = (
    "item_ctr", "item_lvr", "item_log_n", "author_ctr", "author_lvr", "tag_ctr", "tag_lvr",
    "group_tag_ctr", "history_length", "session_length", "history_author_share", "history_tag_share",
)


class StatisticalFeatures:
    """Running click / long-view means per key, read as a dict of floats per candidate.

    Parameters
    ----------
    group_field
        Profile field that defines the user group for the group x tag rates.
    """

    def __init__(self, group_field: str = "user_active_degree") -> None:
        self.group_field = group_field
        self.means: dict[str, dict[str, stats.Mean]] = {}  # "<kind>:<key>" -> {"click": Mean, "lv": Mean}
        self.global_means = {"click": stats.Mean(), "lv": stats.Mean()}

    def _keys(self, user: UserFeatures, item: ItemFeatures) -> list[str]:
        group = user.profile.get(self.group_field, "")
        keys = [f"item:{item.item_id}"]
        if item.author_id:
            keys.append(f"author:{item.author_id}")
        keys += [f"tag:{t}" for t in item.tags] + [f"group_tag:{group}|{t}" for t in item.tags]
        return keys

    def update(self, user: UserFeatures, items: Sequence[ItemFeatures], clicks: Sequence[int], long_views: Sequence[int]) -> None:
        """Count one exposure per item with its click and long-view labels (0/1)."""
        for item, click, long_view in zip(items, clicks, long_views):
            self.global_means["click"].update(click)
            self.global_means["lv"].update(long_view)
            for key in self._keys(user, item):
                means = self.means.setdefault(key, {"click": stats.Mean(), "lv": stats.Mean()})
                means["click"].update(click)
                means["lv"].update(long_view)

    def _rate(self, key: str, label: str) -> float:
        means = self.means.get(key)
        if means is None or means[label].n == 0:
            return self.global_means[label].get()
        return means[label].get()

    def _mean_rate(self, keys: list[str], label: str) -> float:
        if not keys:
            return self.global_means[label].get()
        return sum(self._rate(k, label) for k in keys) / len(keys)

    def features(self, user: UserFeatures, items: Sequence[ItemFeatures]) -> list[dict[str, float]]:
        """One feature dict (keys :data:`FEATURE_NAMES`) per item; reading never updates."""
        group = user.profile.get(self.group_field, "")
        authors, tags = Counter(user.history_authors), Counter(user.history_tags)
        out = []
        for item in items:
            item_key = f"item:{item.item_id}"
            item_means = self.means.get(item_key)
            tag_keys = [f"tag:{t}" for t in item.tags]
            group_keys = [f"group_tag:{group}|{t}" for t in item.tags]
            author_key = f"author:{item.author_id}"
            out.append({
                "item_ctr": self._rate(item_key, "click"),
                "item_lvr": self._rate(item_key, "lv"),
                "item_log_n": math.log1p(item_means["click"].n if item_means else 0.0),
                "author_ctr": self._rate(author_key, "click"),
                "author_lvr": self._rate(author_key, "lv"),
                "tag_ctr": self._mean_rate(tag_keys, "click"),
                "tag_lvr": self._mean_rate(tag_keys, "lv"),
                "group_tag_ctr": self._mean_rate(group_keys, "click"),
                "history_length": math.log1p(len(user.history_items)),
                "session_length": math.log1p(user.session_length),
                "history_author_share": authors[item.author_id] / len(user.history_authors) if user.history_authors else 0.0,
                "history_tag_share": sum(tags[t] for t in item.tags) / len(user.history_tags) if user.history_tags else 0.0,
            })
        return out

    def state(self) -> dict[str, Any]:
        """JSON state: ``[n, mean]`` of every running mean (restored exactly by :meth:`from_state`)."""
        def pair(mean: stats.Mean) -> list[float]:
            return [mean.n, mean.get()]

        return {
            "group_field": self.group_field,
            "global": {label: pair(m) for label, m in self.global_means.items()},
            "means": {key: {label: pair(m) for label, m in means.items()} for key, means in self.means.items()},
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> StatisticalFeatures:
        def mean(values: list[float]) -> stats.Mean:
            restored = stats.Mean()
            if values[0] > 0:
                restored.update(values[1], w=values[0])  # from empty: n = w, mean = x exactly
            return restored

        features = cls(state["group_field"])
        features.global_means = {label: mean(v) for label, v in state["global"].items()}
        features.means = {key: {label: mean(v) for label, v in m.items()} for key, m in state["means"].items()}
        return features
