"""bench.quality: argument handling, default dates and the comparisons it reports."""

from __future__ import annotations

import math

import pytest

from bench.quality import build_parser, comparisons, default_dates, main
from replay.dataset import Dataset, LoadReport
from replay.events import Exposure
from replay.offline import local_date_ms

DAY_MS = 86_400_000


def test_default_dates_are_local_midnights_at_the_shares():
    start = local_date_ms("2022-04-25")
    exposures = (Exposure("u", "i", start + 3_600_000), Exposure("u", "i", start + 10 * DAY_MS - 3_600_000))
    data = Dataset({}, {}, exposures, {}, LoadReport("t"))
    train_until, eval_from = default_dates(data, 0.35, 0.55)
    # 35% of ~10 days is ~3.5 days after the start: the nearest midnight is 04-28 or 04-29
    assert train_until in (local_date_ms("2022-04-28"), local_date_ms("2022-04-29"))
    assert eval_from == local_date_ms("2022-04-30")
    assert (train_until - start) % DAY_MS == 0


def test_comparisons_are_differences_and_ratios():
    arms = {
        "student_cascade": {"consistency_recall_at_50": 0.6, "consistency_recall_at_100": 0.8,
                            "consistency_recall_at_200": 0.9, "auc_long_view": 0.70},
        "student_impressions": {"consistency_recall_at_50": 0.3, "consistency_recall_at_100": 0.0,
                                "consistency_recall_at_200": 0.6, "auc_long_view": 0.72},
    }
    out = comparisons(arms, {"auc_long_view": 0.73})
    assert out["cascade_minus_impressions_consistency_recall_at_50"] == pytest.approx(0.3)
    assert out["cascade_over_impressions_consistency_recall_at_50"] == pytest.approx(2.0)
    assert math.isnan(out["cascade_over_impressions_consistency_recall_at_100"])
    assert out["teacher_minus_student_impressions_auc_long_view"] == pytest.approx(0.01)


def test_the_ranked_target_needs_both_consistency_and_auc():
    teacher = {"auc_long_view": 0.75}
    for recall, auc, met in ((0.96, 0.745, True), (0.94, 0.75, False), (0.99, 0.739, False)):
        arms = {"student_ranked": {"consistency_recall_at_100": recall, "auc_long_view": auc}}
        assert comparisons(arms, teacher)["student_ranked_meets_target"] is met
        swept = {"student_ranked_fw=3": arms["student_ranked"]}
        assert comparisons(swept, teacher)["student_ranked_fw=3_meets_target"] is met


def test_parser_and_bad_modes():
    args = build_parser().parse_args(["--modes", "cascade", "--candidates", "300", "--quick"])
    assert args.modes == "cascade" and args.candidates == 300 and args.quick and args.data is None
    assert main(["--modes", "cascade,bogus"]) == 2


def test_an_l1_sweep_makes_one_arm_per_mode_and_l1_with_its_ftrl():
    from bench.quality import student_arms
    from models.features import ItemFeatures

    arms = student_arms(["impressions", "ranked"], [ItemFeatures("i1")], quick=True, seed=0, l1_values=[0.0, 0.25])
    names = [arm.name for arm in arms]
    assert names == ["student_impressions_l1=0", "student_impressions_l1=0.25", "student_ranked_l1=0",
                     "student_ranked_l1=0.25"]
    assert [arm.learner.optimizer.ftrl.config.l1 for arm in arms] == [0.0, 0.25, 0.0, 0.25]
    swept = student_arms(["impressions", "ranked"], [ItemFeatures("i1")], quick=True, seed=0,
                         ranked={"listwise_weight": 2.0}, feedback_weights=[1.0, 3.0])
    assert [arm.name for arm in swept] == ["student_impressions", "student_ranked_fw=1", "student_ranked_fw=3"]
    assert [arm.learner.objective.feedback_loss_weight for arm in swept[1:]] == [1.0, 3.0]
    assert {arm.learner.objective.listwise_weight for arm in swept[1:]} == {2.0}
    (plain,) = student_arms(["impressions"], [ItemFeatures("i1")], quick=True, seed=0, user_bias=True)
    assert plain.name == "student_impressions" and plain.learner.config.user_bias


def test_the_l1_knee_is_the_largest_l1_within_the_auc_loss():
    arms = {f"student_impressions_l1={l1}": {"auc_long_view": auc, "zero_row_ratio": zeros}
            for l1, auc, zeros in ((0.5, 0.70, 0.8), (0, 0.74, 0.0), (0.1, 0.736, 0.4), (0.2, 0.7351, 0.6))}
    out = comparisons(arms, {"auc_long_view": 0.75})
    assert out["impressions_l1_knee"] == 0.2 and out["impressions_l1_knee_zero_row_ratio"] == 0.6
    assert out["impressions_l1=0.5_auc_loss"] == pytest.approx(0.04)
