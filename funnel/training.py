"""The trainer's pure parts: the worker's student built from the settings, and its progressive AUC.

``agents.trainer`` runs them against Kafka; the replay's warm start and the benchmarks use them
directly, so a model trained anywhere is the model the worker would train.
"""

from __future__ import annotations

from collections import deque

from core.settings import Settings
from funnel.metrics import auc
from models.ftrl import FTRLConfig
from models.learner import StudentLearner
from models.losses import StudentObjective
from models.two_tower import TwoTowerConfig

MODEL_FILE = "student.safetensors"


def new_learner(settings: Settings) -> StudentLearner:
    model = settings.model
    config = TwoTowerConfig(
        embedding_dim=model.embedding_dim, hidden_sizes=(model.hidden_dim, model.hidden_dim),
        output_dim=model.output_dim, min_count=model.min_count, seed=model.seed,
    )
    return StudentLearner(config, objective=StudentObjective(mode=model.mode), ftrl=FTRLConfig(l1=model.ftrl_l1))


class ProgressiveAUC:
    """Exact AUC of the student on exposed items, scored before it learns them, over a window."""

    LABELS = ("click", "long_view")

    def __init__(self, window: int = 5000) -> None:
        self.pairs = {label: deque(maxlen=window) for label in self.LABELS}

    def observe(self, samples, pair_logits) -> None:
        """``pair_logits``: the learner's pre-update logits, one per (sample, item), in order."""
        offset = 0
        for sample in samples:
            for i, shown in enumerate(sample.exposed()):
                if shown:
                    score = float(pair_logits[offset + i])
                    for label in self.LABELS:
                        self.pairs[label].append((getattr(sample, label)[i], score))
            offset += sample.n_items

    def aucs(self) -> dict[str, float]:
        out = {}
        for label, pairs in self.pairs.items():
            labels = [y for y, _ in pairs]
            if 0 < sum(labels) < len(labels):
                out[label] = auc(labels, [s for _, s in pairs])
        return out
