"""The pre-rankers the offline funnel compares ("arms"), behind one small interface.

An arm scores a request's candidates (given as catalog indices), learns from micro-batches of
:class:`~models.features.RequestSample` and reports its own numbers at the end.

* :class:`StudentArm` scores like the production scorer: the user tower once per request, item
  vectors of the whole catalog from a cache refreshed every ``refresh_every`` learning steps
  (the publisher's interval), so scoring 1000 candidates is a matrix-vector product.
* :class:`RankerArm` wraps any :class:`~models.protocol.Ranker` (the baselines).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Protocol

import numpy as np

from models.features import ItemFeatures, RequestSample, UserFeatures


class Arm(Protocol):
    name: str

    def score(self, user: UserFeatures, indices: np.ndarray) -> np.ndarray:
        """One logit per candidate index, float ``(len(indices),)``. Never learns."""
        ...

    def learn(self, samples: Sequence[RequestSample]) -> None: ...

    def learn_logged(self, samples: Sequence[RequestSample]) -> None:
        """Learn logged exposures of requests the arm did not serve (the pre-fit period, users
        outside the sample): feedback only, no cascade labels."""
        ...

    def report(self) -> dict[str, float | int]: ...


class _Timed:
    """Wall time and call counts of an arm's scoring and learning."""

    def __init__(self) -> None:
        self.score_s = 0.0
        self.learn_s = 0.0
        self.samples_learned = 0
        self.logged_samples_learned = 0
        self.requests_scored = 0

    def timing(self) -> dict[str, float | int]:
        return {
            "requests_scored": self.requests_scored,
            "samples_learned": self.samples_learned,
            "logged_samples_learned": self.logged_samples_learned,
            "score_ms_per_request": 1e3 * self.score_s / max(1, self.requests_scored),
            "learn_ms_per_sample": 1e3 * self.learn_s / max(1, self.samples_learned + self.logged_samples_learned),
        }


class StudentArm(_Timed):
    """A two-tower student learner (``models.learner.StudentLearner``-like) with a catalog vector cache.

    ``extra_report`` adds numbers computed from the learner at the end (e.g. export sizes).
    """

    def __init__(
        self,
        name: str,
        learner,
        catalog: Sequence[ItemFeatures],
        refresh_every: int = 8,
        extra_report: Callable[[object], dict[str, float | int]] | None = None,
    ) -> None:
        super().__init__()
        if refresh_every < 1:
            raise ValueError(f"refresh_every must be >= 1, got {refresh_every}")
        self.name = name
        self.learner = learner
        self._catalog = tuple(catalog)
        self._refresh_every = refresh_every
        self._extra_report = extra_report
        self._vectors: np.ndarray | None = None
        self._steps = 0
        self.refreshes = 0

    def score(self, user: UserFeatures, indices: np.ndarray) -> np.ndarray:
        start = time.perf_counter()
        if self._vectors is None:
            self._vectors = self.learner.served.item_vectors(self._catalog)
            self.refreshes += 1
        served = self.learner.served
        (vector,), (offset,) = served.user_vectors_and_offsets([user])
        logits = served.logits_from_vectors(vector, self._vectors[indices], float(offset))
        self.score_s += time.perf_counter() - start
        self.requests_scored += 1
        return logits

    def learn(self, samples: Sequence[RequestSample]) -> None:
        self._learn(samples)
        self.samples_learned += len(samples)

    def _learn(self, samples: Sequence[RequestSample]) -> None:
        start = time.perf_counter()
        self.learner.learn_many(samples)
        self._steps += 1
        if self._steps % self._refresh_every == 0:
            self._vectors = None
        self.learn_s += time.perf_counter() - start

    def learn_logged(self, samples: Sequence[RequestSample]) -> None:
        """Logged exposures learned with the ``impressions`` objective (cascade labels need the
        arm to have served the request), as :mod:`replay.warm_start` does before a stream. The
        learner's own objective and step come back after, so a distillation lambda grows with
        the funnel's steps only."""
        from models.losses import StudentObjective

        objective, step = self.learner.objective, self.learner.step
        self.learner.objective = StudentObjective(mode="impressions", feedback_weights=objective.feedback_weights)
        try:
            self._learn(samples)
        finally:
            self.learner.objective, self.learner.step = objective, step
        self.logged_samples_learned += len(samples)

    def report(self) -> dict[str, float | int]:
        out = self.timing()
        out["zero_row_ratio"] = float(self.learner.zero_row_ratio())
        out["item_vector_refreshes"] = self.refreshes
        if self._extra_report is not None:
            out.update(self._extra_report(self.learner))
        return out


class RankerArm(_Timed):
    """Any ranker with ``score(user, items)`` and ``learn_many(samples)``."""

    def __init__(self, name: str, ranker, catalog: Sequence[ItemFeatures]) -> None:
        super().__init__()
        self.name = name
        self.ranker = ranker
        self._catalog = tuple(catalog)

    def score(self, user: UserFeatures, indices: np.ndarray) -> np.ndarray:
        start = time.perf_counter()
        logits = np.asarray(self.ranker.score(user, [self._catalog[i] for i in indices]), dtype=np.float64)
        self.score_s += time.perf_counter() - start
        self.requests_scored += 1
        return logits

    def learn(self, samples: Sequence[RequestSample]) -> None:
        self._learn(samples)
        self.samples_learned += len(samples)

    def learn_logged(self, samples: Sequence[RequestSample]) -> None:
        self._learn(samples)  # the baselines learn feedback only anyway
        self.logged_samples_learned += len(samples)

    def _learn(self, samples: Sequence[RequestSample]) -> None:
        start = time.perf_counter()
        self.ranker.learn_many(samples)
        self.learn_s += time.perf_counter() - start

    def report(self) -> dict[str, float | int]:
        return self.timing()
