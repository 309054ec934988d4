"""Shared loop of the statistical baselines: features before labels, one river model per pair.

A baseline learns from exposed (request, item) pairs with a known ``label`` (an objective of
:data:`~models.features.OBJECTIVES`, or ``"cascade"`` for every candidate). Features are read
*before* the batch updates the statistics, so a label never leaks into its own features.
Persistence is JSON: ``{"kind", "params", "features", "model"}``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np

from models.baselines.stat_features import StatisticalFeatures
from models.exceptions import ConfigError, ExportError
from models.features import OBJECTIVES, ItemFeatures, RequestSample, UserFeatures


def logit(p: float, eps: float = 1e-6) -> float:
    p = min(max(p, eps), 1.0 - eps)
    return math.log(p / (1.0 - p))


class StatisticalBaseline:
    """Base class; subclasses implement ``_learn_pairs``, ``_score_pairs`` and model (de)serialisation."""

    kind = "base"

    def __init__(self, label: str = "click", group_field: str = "user_active_degree") -> None:
        if label not in (*OBJECTIVES, "cascade"):
            raise ConfigError(f"label must be one of {OBJECTIVES + ('cascade',)}, got {label!r}")
        self.label = label
        self.features = StatisticalFeatures(group_field)
        self.step = 0

    def params(self) -> dict[str, Any]:
        return {"label": self.label, "group_field": self.features.group_field}

    def learn_many(self, samples: Sequence[RequestSample]) -> dict[str, float]:
        losses: list[float] = []
        for sample in samples:
            labels = getattr(sample, self.label)
            known = [k for k, y in enumerate(labels) if y >= 0]
            if known:
                items = [sample.items[k] for k in known]
                xs = self.features.features(sample.user, items)
                ys = [int(labels[k]) for k in known]
                scores = self._score_pairs(xs)
                losses += [_bce(s, y) for s, y in zip(scores, ys)]
                self._learn_pairs(xs, ys)
            exposed = [k for k, c in enumerate(sample.click) if c >= 0]
            self.features.update(
                sample.user, [sample.items[k] for k in exposed],
                [sample.click[k] for k in exposed], [max(sample.long_view[k], 0) for k in exposed],
            )
        self.step += 1
        return {"loss": float(np.mean(losses)) if losses else 0.0, "n_pairs": float(len(losses))}

    def score(self, user: UserFeatures, items: Sequence[ItemFeatures]) -> np.ndarray:
        if not items:
            return np.zeros(0, dtype=np.float32)
        return np.asarray(self._score_pairs(self.features.features(user, items)), dtype=np.float32)

    def _learn_pairs(self, xs: list[dict[str, float]], ys: list[int]) -> None:
        raise NotImplementedError

    def _score_pairs(self, xs: list[dict[str, float]]) -> list[float]:
        raise NotImplementedError

    def _model_state(self) -> Any:
        return None

    def _restore_model(self, state: Any) -> None:
        return None

    def save(self, path: str | PathLike[str]) -> None:
        state = {
            "kind": self.kind, "params": self.params(), "step": self.step,
            "features": self.features.state(), "model": self._model_state(),
        }
        Path(path).write_text(json.dumps(state))

    @classmethod
    def load(cls, path: str | PathLike[str]) -> StatisticalBaseline:
        try:
            state = json.loads(Path(path).read_text())
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise ExportError(f"not a baseline file: {error}") from error
        if state.get("kind") != cls.kind:
            raise ExportError(f"expected a {cls.kind!r} baseline, got {state.get('kind')!r}")
        baseline = cls(**state["params"])
        baseline.features = StatisticalFeatures.from_state(state["features"])
        baseline.step = int(state["step"])
        baseline._restore_model(state["model"])
        return baseline


def _bce(logit_value: float, y: int) -> float:
    # log(1 + exp(-z)) for y = 1, log(1 + exp(z)) for y = 0, computed stably
    z = logit_value if y else -logit_value
    return math.log1p(math.exp(-abs(z))) + max(-z, 0.0)
