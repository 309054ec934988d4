"""The trainer's pure parts: the worker's student built from the settings, and its progressive AUC.

``agents.trainer`` runs them against Kafka; the replay's warm start and the benchmarks use them
directly, so a model trained anywhere is the model the worker would train.
"""

from __future__ import annotations

from collections import deque
from itertools import chain

import numpy as np

from core.settings import Settings
from funnel.metrics import auc
from models.features import UNKNOWN_LABEL
from models.ftrl import FTRLConfig
from models.learner import StudentLearner
from models.losses import StudentObjective
from models.two_tower import TwoTowerConfig

MODEL_FILE = "student.safetensors"


def new_learner(settings: Settings) -> StudentLearner:
    model = settings.model
    config = TwoTowerConfig(
        embedding_dim=model.embedding_dim, hidden_sizes=(model.hidden_dim, model.hidden_dim),
        output_dim=model.output_dim, min_count=model.min_count, user_bias=model.user_bias, head=model.head,
        seed=model.seed,
    )
    return StudentLearner(config, objective=StudentObjective(mode=model.mode), ftrl=FTRLConfig(l1=model.trainer_ftrl_l1))


class ProgressiveAUC:
    """Exact AUC of the student on exposed items, scored before it learns them, over a window.

    >>> from models.synthetic import SyntheticRequests
    >>> samples = SyntheticRequests(seed=0, items_per_request=4).batch(3)
    >>> progressive = ProgressiveAUC(window=100)
    >>> progressive.observe(samples, np.arange(12, dtype=np.float32))
    >>> len(progressive.pairs["click"]) == sum(sum(s.exposed()) for s in samples)
    True
    """

    LABELS = ("click", "long_view")

    def __init__(self, window: int = 5000) -> None:
        self.pairs = {label: deque(maxlen=window) for label in self.LABELS}

    def observe(self, samples, pair_logits) -> None:
        """``pair_logits``: the learner's pre-update logits, one per (sample, item), in order
        (shape ``(n_pairs,)``). Exposed means a known click label, as ``RequestSample.exposed``."""
        n_pairs = sum(s.n_items for s in samples)
        scores = np.asarray(pair_logits, dtype=np.float64)[:n_pairs]
        click = _flat_labels(samples, "click", n_pairs)
        shown = click != UNKNOWN_LABEL
        shown_scores = scores[shown].tolist()
        for label in self.LABELS:
            values = click if label == "click" else _flat_labels(samples, label, n_pairs)
            self.pairs[label].extend(zip(values[shown].tolist(), shown_scores))

    def aucs(self) -> dict[str, float]:
        out = {}
        for label, pairs in self.pairs.items():
            labels = [y for y, _ in pairs]
            if 0 < sum(labels) < len(labels):
                out[label] = auc(labels, [s for _, s in pairs])
        return out


def _flat_labels(samples, label: str, n_pairs: int) -> np.ndarray:
    """Every pair's ``label`` (int64 ``(n_pairs,)``), in sample order."""
    return np.fromiter(chain.from_iterable(getattr(s, label) for s in samples), dtype=np.int64, count=n_pairs)
