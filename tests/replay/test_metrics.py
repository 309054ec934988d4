"""Metrics against hand-computed values and brute-force pair counting."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from funnel.metrics import auc, consistency_recall, gauc, hit_rate_at_k, top_k


def brute_auc(labels, scores) -> float:
    pos = [s for y, s in zip(labels, scores) if y == 1]
    neg = [s for y, s in zip(labels, scores) if y == 0]
    if not pos or not neg:
        return math.nan
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def test_auc_hand_computed():
    # positives 0.9, 0.7, 0.5 against negatives 0.8, 0.6: 2 + 1 + 0 wins of 6 pairs
    assert auc([1, 0, 1, 0, 1], [0.9, 0.8, 0.7, 0.6, 0.5]) == pytest.approx(3 / 6)
    assert auc([0, 1], [0.0, 1.0]) == 1.0
    assert auc([1, 0], [0.0, 1.0]) == 0.0


def test_auc_ties_count_half():
    # one pair of four is tied (0.5 vs 0.5): 3 wins + 0.5
    assert auc([0, 0, 1, 1], [0.1, 0.5, 0.5, 0.9]) == pytest.approx(3.5 / 4)


def test_auc_single_class_is_nan_and_bad_input_raises():
    assert math.isnan(auc([1, 1], [0.2, 0.3]))
    with pytest.raises(ValueError):
        auc([0, 2], [0.1, 0.2])
    with pytest.raises(ValueError):
        auc([0, 1], [0.1])
    with pytest.raises(ValueError):
        auc([0, 1], [0.1, float("nan")])


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 1), st.integers(0, 5)), min_size=1, max_size=40))
def test_auc_equals_pair_counting(pairs):
    labels = [y for y, _ in pairs]
    scores = [float(s) for _, s in pairs]
    expected = brute_auc(labels, scores)
    got = auc(labels, scores)
    assert (math.isnan(expected) and math.isnan(got)) or got == pytest.approx(expected)


def test_gauc_hand_computed():
    users = ["a", "a", "a", "b", "b", "c", "c"]
    labels = [0, 1, 1, 1, 0, 1, 1]
    scores = [0.1, 0.5, 0.6, 0.2, 0.8, 0.3, 0.4]
    # a: AUC 1 over 3 impressions, b: AUC 0 over 2, c: one class, skipped
    assert gauc(users, labels, scores) == pytest.approx((3 * 1.0 + 2 * 0.0) / 5)


def test_gauc_without_any_two_class_user_is_nan():
    assert math.isnan(gauc(["a", "b"], [1, 0], [0.3, 0.2]))
    assert math.isnan(gauc([], [], []))


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.sampled_from("uvw"), st.integers(0, 1), st.integers(0, 3)), min_size=1, max_size=40))
def test_gauc_equals_weighted_brute_force(rows):
    total = weight = 0.0
    for user in "uvw":
        mine = [(y, float(s)) for u, y, s in rows if u == user]
        value = brute_auc([y for y, _ in mine], [s for _, s in mine])
        if not math.isnan(value):
            total += len(mine) * value
            weight += len(mine)
    expected = total / weight if weight else math.nan
    got = gauc([u for u, _, _ in rows], [y for _, y, _ in rows], [float(s) for _, _, s in rows])
    assert (math.isnan(expected) and math.isnan(got)) or got == pytest.approx(expected)


def test_consistency_recall_hand_computed():
    teacher = [9, 8, 7, 1, 0]
    student = [0.9, 0.1, 0.8, 0.7, 0.6]  # student top-2 = items 0 and 2
    assert consistency_recall(teacher, student, n=3, k=2) == pytest.approx(2 / 3)
    assert consistency_recall(teacher, student, n=3, k=5) == 1.0
    with pytest.raises(ValueError):
        consistency_recall([1, 2], [1], n=1, k=1)


@settings(max_examples=100, deadline=None)
@given(st.integers(2, 30).flatmap(lambda m: st.tuples(
    st.permutations(range(m)), st.permutations(range(m)), st.integers(1, m), st.integers(1, m))))
def test_consistency_recall_equals_set_overlap(case):
    teacher, student, n, k = case
    teacher_top = {i for i, s in enumerate(teacher) if s >= len(teacher) - n}
    student_top = {i for i, s in enumerate(student) if s >= len(student) - k}
    assert consistency_recall(teacher, student, n, k) == pytest.approx(len(teacher_top & student_top) / n)


def test_top_k_breaks_ties_by_index():
    assert top_k([1.0, 3.0, 3.0, 2.0], 3).tolist() == [1, 2, 3]


def test_hit_rate_hand_computed():
    assert hit_rate_at_k([False, True, False], [0.9, 0.5, 0.1], k=2) == 1.0
    assert hit_rate_at_k([False, True, False], [0.9, 0.5, 0.1], k=1) == 0.0
    assert math.isnan(hit_rate_at_k([False, False], [0.1, 0.2], k=1))
    assert hit_rate_at_k(np.array([1, 0], dtype=bool), np.array([0.0, 1.0]), k=1) == 0.0
