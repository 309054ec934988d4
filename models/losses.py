"""Training objectives of the student: ``cascade``, ``distill``, ``impressions`` and ``ranked``.

* ``cascade``: BCE on the fine ranker's top-N labels (1 in the top-N, 0 for the other
  fine-ranked candidates and the sampled easy negatives).
* ``distill``: BCE on feedback + ``lambda(step) * MSE(student logit, teacher logit)``, plus the
  teacher's own loss when a local teacher is trained jointly (added by the learner).
* ``impressions``: BCE on feedback (click / long view) of exposed items only: the old way.
* ``ranked``: ``listwise_weight * KL(softmax(teacher / T) || softmax(student))`` per request over
  the items the fine ranker scored (its *order*, :func:`models.listwise.listwise_kl`; unscored easy
  negatives take no target mass) ``+ feedback_loss_weight * BCE`` on feedback of exposed items: a
  student that agrees with the fine ranker and predicts feedback (RankFlow / COPR style).

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

from models.exceptions import ConfigError, InputError
from models.features import OBJECTIVES, RequestSample
from models.listwise import listwise_kl

LossMode = Literal["cascade", "distill", "impressions", "ranked"]
LOSS_MODES: tuple[str, ...] = ("cascade", "distill", "impressions", "ranked")

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

    ``-1`` marks unknown labels; ``teacher`` holds ``nan`` where unscored. ``offsets`` (int64,
    shape ``(n_requests + 1,)``) groups the pairs by request: request ``r`` owns pairs
    ``offsets[r]:offsets[r + 1]`` (``None`` when the grouping is unknown; mode ``ranked`` needs it).
    """

    cascade: torch.Tensor
    feedback: Mapping[str, torch.Tensor]
    teacher: Mapping[str, torch.Tensor]
    offsets: torch.Tensor | None = None

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
        lengths = np.fromiter((s.n_items for s in samples), dtype=np.int64, count=len(samples))
        return cls(
            cascade=flat(s.cascade for s in samples),
            feedback={o: flat(getattr(s, o) for s in samples) for o in OBJECTIVES},
            teacher=teacher,
            offsets=torch.from_numpy(np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)),
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

    Parameters
    ----------
    mode
        One of :data:`LOSS_MODES` (see the module docstring).
    feedback_weights, teacher_weights
        Objectives' weights in the soft feedback label and in the combined teacher logit.
    distill_lambda
        ``distill``: weight of the MSE to the teacher's logit by step.
    listwise_weight, feedback_loss_weight
        ``ranked``: weights of the listwise term and of the feedback BCE.
    listwise_temperature
        ``ranked``: divides the teacher's logits in the target softmax.
    unscored_negatives
        ``ranked``: items the fine ranker did not score stay in the student's softmax (target 0).
    """

    mode: LossMode = "cascade"
    feedback_weights: Mapping[str, float] = field(default_factory=lambda: DEFAULT_FEEDBACK_WEIGHTS)
    teacher_weights: Mapping[str, float] = field(default_factory=lambda: DEFAULT_TEACHER_WEIGHTS)
    distill_lambda: LambdaSchedule = LinearLambda()
    listwise_weight: float = 1.0
    # 10: the smallest weight measured to keep the ranked student within 0.01 long-view AUC of the
    # fine ranker at every-user volume with recall@100 0.97 (bench/results/quality-ranked-feedback-sweep*.json)
    feedback_loss_weight: float = 10.0
    listwise_temperature: float = 1.0
    unscored_negatives: bool = True

    def __post_init__(self) -> None:
        if self.mode not in LOSS_MODES:
            raise ConfigError(f"mode must be one of {LOSS_MODES}, got {self.mode!r}")
        for name in ("listwise_weight", "feedback_loss_weight"):
            if not getattr(self, name) >= 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not self.listwise_temperature > 0:
            raise ConfigError(f"listwise_temperature must be > 0, got {self.listwise_temperature}")
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
        if self.mode == "ranked":
            return self._ranked(logits, labels, feedback, teacher_logit)
        weight = self.distill_lambda(step)
        distill = masked_mse(logits, teacher_logit.detach())
        loss = feedback + weight * distill
        return loss, {
            "loss": float(loss.detach()), "feedback_bce": float(feedback.detach()),
            "distill_mse": float(distill.detach()), "lambda": weight,
        }

    def _ranked(
        self, logits: torch.Tensor, labels: PairLabels, feedback: torch.Tensor, teacher_logit: torch.Tensor,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        if labels.offsets is None:
            raise InputError("mode 'ranked' needs the pairs grouped by request (PairLabels.offsets)")
        listwise = listwise_kl(logits, teacher_logit.detach(), labels.offsets, self.listwise_temperature,
                               self.unscored_negatives)
        loss = self.feedback_loss_weight * feedback + self.listwise_weight * listwise
        return loss, {
            "loss": float(loss.detach()), "feedback_bce": float(feedback.detach()),
            "listwise_kl": float(listwise.detach()),
        }
