"""Training objectives of the student: ``cascade``, ``distill`` and ``impressions``.

* ``cascade``: BCE on the fine ranker's top-N labels (1 in the top-N, 0 for the other
  fine-ranked candidates and the sampled easy negatives).
* ``distill``: BCE on feedback + ``lambda(step) * MSE(student logit, teacher logit)``, plus the
  teacher's own loss when a local teacher is trained jointly (added by the learner).
* ``impressions``: BCE on feedback (click / long view) of exposed items only: the old way.

Feedback is a soft label ``sum_o w_o * y_o / sum_o w_o`` over the objectives of
``feedback_weights`` (default click and long view, equally weighted); BCE against it has the
same gradient as the weighted sum of per-objective BCEs. Labels of ``-1`` and teacher logits
of ``nan`` are masked out; every term is a mean over its valid pairs (0 when there are none).

>>> LinearLambda(end=1.0, steps=10)(5), SigmoidLambda(max_value=2.0, midpoint=100)(100)
(0.5, 1.0)
>>> combine({"click": np.array([1.0]), "like": np.array([3.0])}, {"click": 0.5, "like": 1.0})
array([3.5], dtype=float32)
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from itertools import chain
from types import MappingProxyType
from typing import Literal, Protocol

import numpy as np
import torch
import torch.nn.functional as F

from models.exceptions import ConfigError
from models.features import OBJECTIVES, RequestSample

LossMode = Literal["cascade", "distill", "impressions"]
LOSS_MODES: tuple[str, ...] = ("cascade", "distill", "impressions")

DEFAULT_FEEDBACK_WEIGHTS: Mapping[str, float] = MappingProxyType({"click": 1.0, "long_view": 1.0})
DEFAULT_TEACHER_WEIGHTS: Mapping[str, float] = MappingProxyType({"click": 1.0, "long_view": 1.0, "like": 0.5})


class LambdaSchedule(Protocol):
    def __call__(self, step: int) -> float: ...


@dataclass(frozen=True)
class ConstantLambda:
    """``lambda(step) = value``."""

    value: float = 1.0

    def __call__(self, step: int) -> float:
        return float(self.value)


@dataclass(frozen=True)
class LinearLambda:
    """Linear ramp from ``start`` to ``end`` over ``steps`` steps, then flat at ``end``."""

    start: float = 0.0
    end: float = 1.0
    steps: int = 10_000

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ConfigError(f"steps must be >= 1, got {self.steps}")

    def __call__(self, step: int) -> float:
        fraction = min(max(step, 0) / self.steps, 1.0)
        return float(self.start + (self.end - self.start) * fraction)


@dataclass(frozen=True)
class SigmoidLambda:
    """``max_value / (1 + exp(-(step - midpoint) / width))``: grows late in training."""

    max_value: float = 1.0
    midpoint: float = 5_000.0
    width: float = 1_000.0

    def __post_init__(self) -> None:
        if self.width <= 0:
            raise ConfigError(f"width must be > 0, got {self.width}")

    def __call__(self, step: int) -> float:
        x = (step - self.midpoint) / self.width
        if x < -700:  # exp overflow; the value is 0 to double precision
            return 0.0
        return float(self.max_value / (1.0 + math.exp(-x)))


SCHEDULES = {"constant": ConstantLambda, "linear": LinearLambda, "sigmoid": SigmoidLambda}


def combine(logits_by_objective: Mapping[str, np.ndarray], weights: Mapping[str, float]) -> np.ndarray:
    """Weighted sum of per-objective logits over the objectives present in both mappings.

    ``nan`` (unscored) propagates. Raises if no weighted objective is present.
    """
    present = [o for o in weights if o in logits_by_objective]
    if not present:
        raise ConfigError(f"none of the weighted objectives {list(weights)} is present")
    total = sum(weights[o] * np.asarray(logits_by_objective[o], dtype=np.float64) for o in present)
    return np.asarray(total, dtype=np.float32)


@dataclass(frozen=True)
class PairLabels:
    """Labels of a batch flattened to (request, item) pairs, all shape ``(n_pairs,)``.

    ``-1`` marks unknown labels; ``teacher`` holds ``nan`` where unscored.
    """

    cascade: torch.Tensor
    feedback: Mapping[str, torch.Tensor]
    teacher: Mapping[str, torch.Tensor]

    @classmethod
    def from_samples(cls, samples: Sequence[RequestSample]) -> PairLabels:
        """The labels of ``samples``' pairs in sample order; teacher logits of an objective that
        some samples lack are ``nan`` there."""
        n_pairs = sum(s.n_items for s in samples)

        def flat(per_sample) -> torch.Tensor:
            # One fromiter over the concatenated tuples, not a Python list of floats (every
            # sample has n_items labels per tuple: RequestSample checks it).
            values = np.fromiter(chain.from_iterable(per_sample), dtype=np.float32, count=n_pairs)
            return torch.from_numpy(values)

        teacher = {}
        for objective in OBJECTIVES:
            if any(objective in s.teacher_logits for s in samples):
                teacher[objective] = flat(
                    s.teacher_logits.get(objective, (math.nan,) * s.n_items) for s in samples
                )
        return cls(
            cascade=flat(s.cascade for s in samples),
            feedback={o: flat(getattr(s, o) for s in samples) for o in OBJECTIVES},
            teacher=teacher,
        )

    def soft_feedback(self, weights: Mapping[str, float]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(target, mask)``: weighted mean of the known feedback labels; mask = all known."""
        total = sum(weights.values())
        if total <= 0:
            raise ConfigError(f"feedback weights must sum to > 0, got {dict(weights)}")
        target = torch.zeros_like(self.cascade)
        mask = torch.ones_like(self.cascade, dtype=torch.bool)
        for objective, weight in weights.items():
            values = self.feedback[objective]
            mask &= values >= 0
            target += weight * values.clamp(min=0)
        return target / total, mask

    def teacher_logit(self, weights: Mapping[str, float]) -> torch.Tensor:
        """Combined teacher logit per pair (``nan`` where unscored or no teacher)."""
        present = {o: t for o, t in self.teacher.items() if o in weights}
        if not present:
            return torch.full_like(self.cascade, math.nan)
        return sum(weights[o] * t for o, t in present.items())


def masked_bce(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean BCE-with-logits over ``mask`` (0 if the mask is empty)."""
    if not bool(mask.any()):
        return logits.sum() * 0.0
    return F.binary_cross_entropy_with_logits(logits[mask], targets[mask])


def masked_mse(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Mean squared error over pairs where ``teacher`` is not ``nan`` (0 if none)."""
    mask = ~torch.isnan(teacher)
    if not bool(mask.any()):
        return student.sum() * 0.0
    return F.mse_loss(student[mask], teacher[mask])


@dataclass(frozen=True)
class StudentObjective:
    """The student's loss for a ``mode``; call it with logits, labels and the step.

    Returns the total loss and its parts (floats) for logging.
    """

    mode: LossMode = "cascade"
    feedback_weights: Mapping[str, float] = field(default_factory=lambda: DEFAULT_FEEDBACK_WEIGHTS)
    teacher_weights: Mapping[str, float] = field(default_factory=lambda: DEFAULT_TEACHER_WEIGHTS)
    distill_lambda: LambdaSchedule = LinearLambda()

    def __post_init__(self) -> None:
        if self.mode not in LOSS_MODES:
            raise ConfigError(f"mode must be one of {LOSS_MODES}, got {self.mode!r}")
        for name in ("feedback_weights", "teacher_weights"):
            unknown = set(getattr(self, name)) - set(OBJECTIVES)
            if unknown:
                raise ConfigError(f"{name} has unknown objectives {sorted(unknown)}")
            object.__setattr__(self, name, MappingProxyType(dict(getattr(self, name))))

    def __call__(
        self, logits: torch.Tensor, labels: PairLabels, step: int,
        teacher_logit: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        if self.mode == "cascade":
            loss = masked_bce(logits, labels.cascade.clamp(min=0), labels.cascade >= 0)
            return loss, {"loss": float(loss.detach()), "cascade_bce": float(loss.detach())}
        target, mask = labels.soft_feedback(self.feedback_weights)
        feedback = masked_bce(logits, target, mask)
        if self.mode == "impressions":
            return feedback, {"loss": float(feedback.detach()), "feedback_bce": float(feedback.detach())}
        if teacher_logit is None:
            teacher_logit = labels.teacher_logit(self.teacher_weights)
        weight = self.distill_lambda(step)
        distill = masked_mse(logits, teacher_logit.detach())
        loss = feedback + weight * distill
        return loss, {
            "loss": float(loss.detach()), "feedback_bce": float(feedback.detach()),
            "distill_mse": float(distill.detach()), "lambda": weight,
        }
