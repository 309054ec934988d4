"""Exact ranking metrics for the replay: AUC, GAUC, funnel consistency and hit rate.

AUC is the Mann-Whitney statistic computed from average ranks, so tied scores count one half
(no thresholds, no approximation). GAUC averages per-user AUCs weighted by each user's number
of impressions; users whose impressions are all one class have no AUC and are skipped.

>>> auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])
0.75
>>> auc([0, 1], [0.5, 0.5])
0.5
>>> gauc(["a", "a", "b", "b", "c"], [0, 1, 1, 0, 1], [0.1, 0.9, 0.2, 0.8, 0.5])
0.5
>>> consistency_recall(teacher_scores=[5, 4, 3, 2, 1], student_scores=[1, 2, 3, 4, 5], n=2, k=3)
0.0
>>> hit_rate_at_k(relevant=[False, True, False], scores=[0.9, 0.5, 0.1], k=1)
0.0
>>> ndcg_at_k(teacher_gains([3.0, 2.0, 1.0], n=2), scores=[3.0, 2.0, 1.0], k=2)
1.0
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks; tied values share the mean of the ranks they span."""
    order = np.argsort(values, kind="mergesort")
    sorted_values = values[order]
    starts = np.flatnonzero(np.r_[True, sorted_values[1:] != sorted_values[:-1]])
    ends = np.r_[starts[1:], len(values)]
    mean_rank = (starts + ends + 1) / 2.0  # mean of the 1-based ranks starts+1 .. ends
    ranks = np.empty(len(values), dtype=np.float64)
    ranks[order] = np.repeat(mean_rank, ends - starts)
    return ranks


def auc(labels: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray) -> float:
    """Exact ROC AUC of ``scores`` for binary ``labels`` (nan when only one class is present)."""
    y = np.asarray(labels)
    s = np.asarray(scores, dtype=np.float64)
    if y.shape != s.shape or y.ndim != 1:
        raise ValueError(f"labels and scores must be 1-d of the same length, got {y.shape} and {s.shape}")
    if np.isnan(s).any():
        raise ValueError("scores contain nan")
    positive = y == 1
    if not np.all(positive | (y == 0)):
        raise ValueError("labels must be 0 or 1")
    n_pos = int(positive.sum())
    n_neg = len(y) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    rank_sum = _average_ranks(s)[positive].sum()
    return float((rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def gauc(
    groups: Sequence[str] | np.ndarray,
    labels: Sequence[int] | np.ndarray,
    scores: Sequence[float] | np.ndarray,
) -> float:
    """Impression-weighted mean of per-group AUCs; groups with one class are skipped (nan if none)."""
    g = np.asarray(groups)
    y = np.asarray(labels)
    s = np.asarray(scores, dtype=np.float64)
    if not (len(g) == len(y) == len(s)):
        raise ValueError(f"groups, labels and scores differ in length: {len(g)}, {len(y)}, {len(s)}")
    if len(g) == 0:
        return float("nan")
    order = np.argsort(g, kind="mergesort")
    g, y, s = g[order], y[order], s[order]
    bounds = np.flatnonzero(np.r_[True, g[1:] != g[:-1], True])
    total = weight = 0.0
    for start, end in zip(bounds[:-1], bounds[1:]):
        n_pos = int(y[start:end].sum())
        if 0 < n_pos < end - start:
            total += (end - start) * auc(y[start:end], s[start:end])
            weight += end - start
    return float(total / weight) if weight else float("nan")


def top_k(scores: Sequence[float] | np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` highest scores, best first; ties go to the lower index.

    The one top-k of the project (scorer, replay, metrics, benchmarks): a partition, then a sort
    of the ``k`` kept, so 1000 candidates cost well under a sort of all of them.

    >>> top_k(np.array([0.1, 0.9, 0.5, 0.9]), 3).tolist()
    [1, 3, 2]
    """
    s = np.asarray(scores, dtype=np.float64)
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    k = min(k, s.shape[0])
    if k == 0:
        return np.zeros(0, dtype=np.int64)
    candidates = np.argpartition(-s, k - 1)[:k] if k < s.shape[0] else np.arange(s.shape[0])
    return candidates[np.lexsort((candidates, -s[candidates]))]


def consistency_recall(
    teacher_scores: Sequence[float] | np.ndarray,
    student_scores: Sequence[float] | np.ndarray,
    n: int = 10,
    k: int = 100,
) -> float:
    """Share of the teacher's top-``n`` that the student keeps in its top-``k`` (same candidates)."""
    if len(teacher_scores) != len(student_scores):
        raise ValueError(f"{len(teacher_scores)} teacher scores for {len(student_scores)} student scores")
    return recall_in_ranking(teacher_scores, top_k(student_scores, k), n)


def recall_in_ranking(teacher_scores: Sequence[float] | np.ndarray, ranking: Sequence[int] | np.ndarray, n: int) -> float:
    """Share of the teacher's top-``n`` (indices into ``teacher_scores``) found in ``ranking``
    (the pre-ranker's kept indices, e.g. its top-k or the items of a response); nan without any.

    >>> recall_in_ranking([5, 4, 3, 2, 1], [4, 0, 3], n=2)
    0.5
    """
    wanted = top_k(teacher_scores, n)
    if len(wanted) == 0:
        return float("nan")
    return float(np.isin(wanted, np.asarray(ranking, dtype=np.int64)).mean())


def hit_rate_at_k(relevant: Sequence[bool] | np.ndarray, scores: Sequence[float] | np.ndarray, k: int) -> float:
    """1.0 if any relevant item is in the top-``k`` of ``scores``, else 0.0 (nan if none is relevant)."""
    r = np.asarray(relevant, dtype=bool)
    if len(r) != len(scores):
        raise ValueError(f"{len(r)} relevance flags for {len(scores)} scores")
    if not r.any():
        return float("nan")
    return float(r[top_k(scores, k)].any())


def teacher_gains(teacher_scores: Sequence[float] | np.ndarray, n: int = 10) -> np.ndarray:
    """Graded relevance from the fine ranker's order: ``n`` for its best item, ``n - 1`` for the
    next, ... 1 for its ``n``-th, 0 for the rest (float64, shape ``(len(teacher_scores),)``).

    >>> teacher_gains([0.1, 0.9, 0.5, 0.3], n=2).tolist()
    [0.0, 2.0, 1.0, 0.0]
    """
    gains = np.zeros(len(teacher_scores), dtype=np.float64)
    best = top_k(teacher_scores, n)
    gains[best] = n - np.arange(len(best), dtype=np.float64)
    return gains


def ndcg_at_k(gains: Sequence[float] | np.ndarray, scores: Sequence[float] | np.ndarray, k: int = 10) -> float:
    """NDCG@``k`` of ``scores``' top-``k`` for graded relevance ``gains`` (linear gains,
    ``1 / log2(rank + 1)`` discounts); nan when no gain is positive.

    >>> round(ndcg_at_k([0.0, 2.0, 1.0], scores=[0.9, 0.5, 0.1], k=2), 4)  # (2 / log2 3) / (2 + 1 / log2 3)
    0.4796
    >>> ndcg_at_k([0.0, 0.0], scores=[1.0, 0.0], k=1)
    nan
    """
    g = np.asarray(gains, dtype=np.float64)
    if len(g) != len(scores):
        raise ValueError(f"{len(g)} gains for {len(scores)} scores")
    discounts = 1.0 / np.log2(np.arange(2, k + 2, dtype=np.float64))
    ideal = np.sort(g)[::-1][:k]
    ideal_dcg = float((ideal * discounts[: len(ideal)]).sum())
    if ideal_dcg <= 0:
        return float("nan")
    picked = g[top_k(scores, k)]
    return float((picked * discounts[: len(picked)]).sum() / ideal_dcg)
