"""Statistical features against hand counts; baselines rank as their statistics say."""

from __future__ import annotations

import math

import pytest

from models.baselines import GlobalCTR, LogisticFTRL, StatisticalFeatures
from models.exceptions import ConfigError
from models.features import ItemFeatures, RequestSample, UserFeatures

USER = UserFeatures("u", profile={"user_active_degree": "low"}, history_authors=("a1", "a2"), history_tags=("t1", "t1", "t3"))
A = ItemFeatures("A", "a1", ("t1", "t2"))
B = ItemFeatures("B", "a2", ("t2",))


def test_features_match_hand_counts():
    features = StatisticalFeatures()
    features.update(USER, [A, A, B, B], clicks=[1, 1, 0, 1], long_views=[1, 0, 0, 0])
    x = features.features(USER, [A, ItemFeatures("new", "", ("t9",))])
    assert x[0]["item_ctr"] == 1.0 and x[0]["item_lvr"] == 0.5
    assert x[0]["item_log_n"] == pytest.approx(math.log1p(2))
    assert x[0]["tag_ctr"] == pytest.approx((2 / 2 + 3 / 4) / 2)  # t1: 2 of 2, t2: 3 of 4
    assert x[0]["group_tag_ctr"] == pytest.approx((2 / 2 + 3 / 4) / 2)
    assert x[0]["history_author_share"] == 0.5 and x[0]["history_tag_share"] == pytest.approx(2 / 3)
    assert x[1]["item_ctr"] == 0.75 and x[1]["tag_ctr"] == 0.75, "unseen keys read the global rate"


def test_feature_state_round_trip_is_exact():
    features = StatisticalFeatures()
    features.update(USER, [A, B, A], clicks=[1, 0, 0], long_views=[0, 1, 1])
    restored = StatisticalFeatures.from_state(features.state())
    assert restored.features(USER, [A, B]) == features.features(USER, [A, B])


def _sample(items, clicks) -> RequestSample:
    n = len(items)
    return RequestSample("r", 0, USER, tuple(items), (0,) * n, tuple(clicks), (0,) * n, (0,) * n)


def test_global_ctr_ranks_by_item_click_rate():
    baseline = GlobalCTR()
    baseline.learn_many([_sample([A, B, A, B], [1, 0, 1, 1])])
    a, b = baseline.score(USER, [A, B])
    assert a > b
    assert a == pytest.approx(math.log(1e6 - 1), rel=1e-3)  # rate 1.0 clipped at 1 - 1e-6


def test_logistic_ftrl_learns_the_direction_of_item_ctr():
    baseline = LogisticFTRL(alpha=0.5)
    for _ in range(30):
        baseline.learn_many([_sample([A, B], [1, 0])])
    assert baseline.model.weights["item_ctr"] > 0
    a, b = baseline.score(USER, [A, B])
    assert a > b


def test_unknown_label_raises():
    with pytest.raises(ConfigError):
        GlobalCTR(label="share")
