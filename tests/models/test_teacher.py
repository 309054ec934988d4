"""Teacher specifics: per-objective logits, combination, offline fit range, joint distillation."""

from __future__ import annotations

import numpy as np
import pytest

from models.exceptions import ConfigError
from models.features import OBJECTIVES
from models.learner import StudentLearner
from models.losses import ConstantLambda, StudentObjective
from models.teacher import TeacherConfig, TeacherLearner, combine
from models.two_tower import TwoTowerConfig

SMALL = TeacherConfig("mmoe", embedding_dim=4, expert_sizes=(8, 4), tower_hidden=4)


def test_score_is_the_weighted_combination_of_objective_logits(stream):
    teacher = TeacherLearner(SMALL, objective_weights={"click": 2.0, "like": -1.0})
    teacher.learn_many(stream.batch(8))
    sample = stream.batch(1)[0]
    by_objective = teacher.score_objectives(sample.user, sample.items)
    assert list(by_objective) == list(OBJECTIVES)
    expected = 2.0 * by_objective["click"].astype(np.float64) - by_objective["like"]
    np.testing.assert_allclose(teacher.score(sample.user, sample.items), expected, rtol=1e-6)
    np.testing.assert_array_equal(combine(by_objective, teacher.objective_weights), teacher.score(sample.user, sample.items))


def test_fit_uses_only_the_time_range(stream):
    samples = stream.batch(30)
    start, end = samples[10].ts_ms, samples[20].ts_ms
    teacher = TeacherLearner(SMALL)
    summary = teacher.fit(list(reversed(samples)), batch_size=4, start_ms=start, end_ms=end)
    assert summary["n_requests"] == 10
    assert teacher.step == 3
    with pytest.raises(ConfigError):
        teacher.fit(samples, batch_size=0)


def test_item_statistics_count_exposed_feedback(stream):
    teacher = TeacherLearner(SMALL)
    batch = stream.batch(5)
    teacher.learn_many(batch)
    item = batch[0].items[0].item_id
    exposures = sum(1 for s in batch for i, c in zip(s.items, s.click) if i.item_id == item and c >= 0)
    clicks = sum(c for s in batch for i, c in zip(s.items, s.click) if i.item_id == item and c >= 0)
    log_n, click_rate = teacher.item_statistics.features([item])[0, :2]
    stats = teacher.item_statistics
    assert log_n == pytest.approx(np.log1p(exposures))
    assert click_rate == pytest.approx((clicks + stats.prior_rates[0] * stats.prior_weight) / (exposures + stats.prior_weight))


def test_joint_teacher_gives_the_distillation_targets_and_its_loss(stream):
    teacher = TeacherLearner(SMALL)
    reference = TeacherLearner(SMALL)
    student = StudentLearner(
        TwoTowerConfig(embedding_dim=4, hidden_sizes=(8,), output_dim=8, min_count=1),
        StudentObjective("distill", distill_lambda=ConstantLambda(1.0)), teacher=teacher,
    )
    batch = stream.batch(4)
    reference_metrics, reference_logits = reference.learn_many_with_logits(batch)
    metrics = student.learn_many(batch)
    assert teacher.step == 1
    assert metrics["teacher_loss"] == pytest.approx(reference_metrics["loss"])
    assert metrics["loss"] == pytest.approx(metrics["feedback_bce"] + metrics["distill_mse"] + metrics["teacher_loss"], rel=1e-5)
    assert len(reference_logits["click"]) == sum(s.n_items for s in batch)


def test_unknown_architecture_raises():
    with pytest.raises(ConfigError):
        TeacherConfig(architecture="dcn")
