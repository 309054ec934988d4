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


def test_parser_and_bad_modes():
    args = build_parser().parse_args(["--modes", "cascade", "--candidates", "300", "--quick"])
    assert args.modes == "cascade" and args.candidates == 300 and args.quick and args.data is None
    assert main(["--modes", "cascade,bogus"]) == 2
