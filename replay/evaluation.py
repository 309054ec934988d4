"""Progressive-evaluation accumulators of the offline funnel: feedback AUCs and consistency.

>>> log = FeedbackLog()
>>> log.add("u", click=1, long_view=0, click_score=0.9, long_view_score=0.2)
>>> log.add("u", click=0, long_view=1, click_score=0.1, long_view_score=0.8)
>>> log.summary()["auc_click"], log.summary()["gauc_long_view"], log.summary()["eval_exposures"]
(1.0, 1.0, 2)
>>> consistency = ConsistencyLog(n=1, ks=(1, 2))
>>> consistency.add(teacher_scores=[3.0, 2.0, 1.0], student_scores=[0.0, 2.0, 1.0])
>>> consistency.summary()
{'consistency_recall_at_1': 0.0, 'consistency_recall_at_2': 0.0, 'ndcg_at_10': 0.5, 'consistency_requests': 1}
>>> hits = HitRateLog("long_view", k=1)
>>> hits.add(relevant=[False, True], scores=[0.2, 0.9]); hits.add(relevant=[True, False], scores=[0.2, 0.9])
>>> hits.add(relevant=[False, False], scores=[0.2, 0.9])  # nothing relevant: not counted
>>> hits.summary()
{'hit_rate_long_view_at_1': 0.5}
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from funnel.metrics import auc, consistency_recall, gauc, hit_rate_at_k, ndcg_at_k, teacher_gains

NDCG_K = 10


class FeedbackLog:
    """Scores of exposed items with their feedback, for AUC and GAUC at the end."""

    def __init__(self) -> None:
        self._users: list[str] = []
        self._labels: list[tuple[int, int]] = []
        self._scores: list[tuple[float, float]] = []

    def add(self, user_id: str, click: int, long_view: int, click_score: float, long_view_score: float) -> None:
        self._users.append(user_id)
        self._labels.append((click, long_view))
        self._scores.append((click_score, long_view_score))

    def state(self) -> dict:
        """JSON-able contents, for resuming a replay."""
        return {"users": self._users, "labels": self._labels, "scores": self._scores}

    @classmethod
    def from_state(cls, state: dict) -> FeedbackLog:
        log = cls()
        log._users = list(state["users"])
        log._labels = [tuple(x) for x in state["labels"]]
        log._scores = [tuple(x) for x in state["scores"]]
        return log

    def summary(self) -> dict[str, float | int]:
        if not self._users:
            return {"eval_exposures": 0}
        labels = np.asarray(self._labels)
        scores = np.asarray(self._scores, dtype=np.float64)
        return {
            "auc_click": auc(labels[:, 0], scores[:, 0]),
            "auc_long_view": auc(labels[:, 1], scores[:, 1]),
            "gauc_click": gauc(self._users, labels[:, 0], scores[:, 0]),
            "gauc_long_view": gauc(self._users, labels[:, 1], scores[:, 1]),
            "eval_exposures": len(self._users),
        }


class ConsistencyLog:
    """Mean recall of the teacher's top-``n`` inside the pre-ranker's top-k, for each k, and the
    mean NDCG@10 of the pre-ranker's top-10 against the teacher's order (gains ``n .. 1`` for the
    teacher's top-``n``: :func:`funnel.metrics.teacher_gains`)."""

    def __init__(self, n: int = 10, ks: Sequence[int] = (10, 50, 100, 200)) -> None:
        self.n = n
        self.ks = tuple(ks)
        self._recalls: list[list[float]] = [[] for _ in self.ks]
        self._ndcgs: list[float] = []

    def add(self, teacher_scores: Sequence[float] | np.ndarray, student_scores: Sequence[float] | np.ndarray) -> None:
        for k, recalls in zip(self.ks, self._recalls):
            recalls.append(consistency_recall(teacher_scores, student_scores, self.n, k))
        self._ndcgs.append(ndcg_at_k(teacher_gains(teacher_scores, self.n), student_scores, NDCG_K))

    def state(self) -> dict:
        return {"n": self.n, "ks": list(self.ks), "recalls": self._recalls, "ndcgs": self._ndcgs}

    @classmethod
    def from_state(cls, state: dict) -> ConsistencyLog:
        log = cls(state["n"], state["ks"])
        log._recalls = [list(r) for r in state["recalls"]]
        log._ndcgs = list(state.get("ndcgs", []))  # a state saved before NDCG was logged has none
        return log

    def summary(self) -> dict[str, float | int]:
        out: dict[str, float | int] = {
            f"consistency_recall_at_{k}": float(np.mean(r)) if r else float("nan")
            for k, r in zip(self.ks, self._recalls)
        }
        ndcgs = [v for v in self._ndcgs if not np.isnan(v)]
        out[f"ndcg_at_{NDCG_K}"] = float(np.mean(ndcgs)) if ndcgs else float("nan")
        out["consistency_requests"] = len(self._recalls[0]) if self._recalls else 0
        return out


class HitRateLog:
    """Share of requests with a relevant exposed item (e.g. long-viewed) in the arm's top-``k``."""

    def __init__(self, label: str, k: int) -> None:
        self.label = label
        self.k = k
        self._hits: list[float] = []

    def add(self, relevant: Sequence[bool] | np.ndarray, scores: Sequence[float] | np.ndarray) -> None:
        value = hit_rate_at_k(relevant, scores, self.k)
        if not np.isnan(value):
            self._hits.append(value)

    def state(self) -> dict:
        return {"label": self.label, "k": self.k, "hits": self._hits}

    @classmethod
    def from_state(cls, state: dict) -> HitRateLog:
        log = cls(state["label"], state["k"])
        log._hits = list(state["hits"])
        return log

    def summary(self) -> dict[str, float]:
        return {f"hit_rate_{self.label}_at_{self.k}": float(np.mean(self._hits)) if self._hits else float("nan")}
