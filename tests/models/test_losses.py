"""Lambda schedules, teacher-logit combination and the three loss modes, against hand formulas."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from models.exceptions import ConfigError
from models.features import ItemFeatures, RequestSample, UserFeatures
from models.losses import (
    LOSS_MODES,
    ConstantLambda,
    LinearLambda,
    PairLabels,
    SigmoidLambda,
    StudentObjective,
    combine,
)


def test_constant_schedule():
    assert [ConstantLambda(0.3)(s) for s in (0, 10, 10**9)] == [0.3, 0.3, 0.3]


def test_linear_ramp_values():
    ramp = LinearLambda(start=0.2, end=1.0, steps=4)
    assert [ramp(s) for s in (-1, 0, 1, 2, 4, 100)] == pytest.approx([0.2, 0.2, 0.4, 0.6, 1.0, 1.0])


def test_sigmoid_ramp_values():
    ramp = SigmoidLambda(max_value=2.0, midpoint=10, width=5)
    assert ramp(10) == pytest.approx(1.0)
    assert ramp(15) == pytest.approx(2.0 / (1.0 + math.exp(-1.0)))
    assert ramp(-10**6) == 0.0
    values = [ramp(s) for s in range(0, 50, 5)]
    assert values == sorted(values), "lambda grows with the step"


def test_schedules_reject_bad_parameters():
    with pytest.raises(ConfigError):
        LinearLambda(steps=0)
    with pytest.raises(ConfigError):
        SigmoidLambda(width=0)


def test_combine_weights_present_objectives_and_propagates_nan():
    out = combine({"click": np.array([1.0, np.nan]), "long_view": np.array([2.0, 1.0])}, {"click": 2.0, "long_view": 0.5, "like": 9.0})
    assert out[0] == pytest.approx(3.0) and math.isnan(out[1])
    with pytest.raises(ConfigError):
        combine({"like": np.array([1.0])}, {"click": 1.0})


def _sample() -> RequestSample:
    items = tuple(ItemFeatures(f"i{k}") for k in range(3))
    return RequestSample(
        "r", 0, UserFeatures("u"), items, cascade=(1, 0, 0), click=(1, 0, -1), long_view=(0, 0, -1),
        like=(0, 0, -1), teacher_logits={"click": (2.0, math.nan, -1.0), "long_view": (1.0, 0.0, 0.0)},
    )


def _bce(logit: float, y: float) -> float:
    p = 1 / (1 + math.exp(-logit))
    return -(y * math.log(p) + (1 - y) * math.log(1 - p))


LOGITS = torch.tensor([0.5, -1.0, 2.0])


def test_cascade_loss_is_bce_on_cascade_labels_over_all_candidates():
    loss, parts = StudentObjective("cascade")(LOGITS, PairLabels.from_samples([_sample()]), step=0)
    expected = (_bce(0.5, 1) + _bce(-1.0, 0) + _bce(2.0, 0)) / 3
    assert float(loss) == pytest.approx(expected, rel=1e-6) and parts["loss"] == pytest.approx(expected, rel=1e-6)


def test_impressions_loss_uses_exposed_items_and_soft_feedback():
    objective = StudentObjective("impressions", feedback_weights={"click": 3.0, "long_view": 1.0})
    loss, _ = objective(LOGITS, PairLabels.from_samples([_sample()]), step=0)
    expected = (_bce(0.5, 0.75) + _bce(-1.0, 0.0)) / 2
    assert float(loss) == pytest.approx(expected, rel=1e-6)


def test_distill_adds_lambda_times_mse_on_scored_items():
    objective = StudentObjective(
        "distill", feedback_weights={"click": 1.0}, teacher_weights={"click": 1.0, "long_view": 0.5},
        distill_lambda=LinearLambda(0.0, 1.0, steps=10),
    )
    loss, parts = objective(LOGITS, PairLabels.from_samples([_sample()]), step=4)
    feedback = (_bce(0.5, 1.0) + _bce(-1.0, 0.0)) / 2
    teacher = [2.0 + 0.5 * 1.0, math.nan, -1.0 + 0.0]
    mse = ((0.5 - teacher[0]) ** 2 + (2.0 - teacher[2]) ** 2) / 2
    assert parts["lambda"] == pytest.approx(0.4)
    assert float(loss) == pytest.approx(feedback + 0.4 * mse, rel=1e-6)


def test_losses_are_zero_without_valid_labels():
    sample = RequestSample("r", 0, UserFeatures("u"), (ItemFeatures("i"),), (-1,), (-1,), (-1,), (-1,))
    for mode in LOSS_MODES:
        loss, _ = StudentObjective(mode)(torch.tensor([0.3], requires_grad=True), PairLabels.from_samples([sample]), 0)
        assert float(loss.detach()) == 0.0
        loss.backward()


def test_unknown_mode_or_objective_raises():
    with pytest.raises(ConfigError):
        StudentObjective("pointwise")
    with pytest.raises(ConfigError):
        StudentObjective(feedback_weights={"share": 1.0})
