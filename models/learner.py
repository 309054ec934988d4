"""The student's trainer: module + FTRL (embedding rows) + AdaGrad (dense) + loss mode.

:class:`StudentLearner` implements :class:`~models.protocol.Ranker`. One ``learn_many`` call:

1. flattens the requests into (request, item) pairs and de-duplicates items by id;
2. runs the module's ``forward`` (:meth:`~models.two_tower.TwoTowerStudent.forward`): the user
   tower once per request and the item tower once per unique item (admitting ids, touching
   rows), broadcast to the pairs' logits;
3. computes the loss of the mode (:class:`~models.losses.StudentObjective`; the labels carry each
   request's segment of the pairs, which mode ``ranked`` groups its listwise softmax by), back-propagates,
   steps AdaGrad on dense parameters and FTRL on the touched embedding rows (one
   :class:`~models.optim.SparseDenseOptimizer` step, shared with the teacher's learner);
4. advances ``step``, evicts rows untouched for the TTL (event time = largest ``ts_ms`` seen).

Scoring goes through :attr:`StudentLearner.served`, a :class:`~models.served.ServedStudent` over
the live module (``score``, ``user_vector``, ``item_vectors``, ``logits_from_vectors`` delegate to it).

>>> from models.synthetic import SyntheticRequests
>>> samples = SyntheticRequests(seed=1).batch(4)
>>> learner = StudentLearner(TwoTowerConfig(embedding_dim=4, hidden_sizes=(8, 8), output_dim=8, min_count=1))
>>> metrics = learner.learn_many(samples)
>>> learner.step, metrics["loss"] > 0
(1, True)
>>> learner.score(samples[0].user, samples[0].items).shape == (samples[0].n_items,)
True
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from os import PathLike
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import safetensors.torch
import torch

from models.checkpoint import (
    dense_from_tensors,
    dense_to_tensors,
    dumps,
    schedule_from_dict,
    schedule_to_dict,
    tables_from_tensors,
    tables_to_tensors,
)
from models.collective import Collective
from models.exceptions import ConfigError, ExportError
from models.features import ItemFeatures, RequestSample, UserFeatures
from models.ftrl import FTRLConfig
from models.losses import PairLabels, StudentObjective, combine
from models.optim import SparseDenseOptimizer
from models.served import ServedStudent
from models.sparse import SparseLookup
from models.two_tower import TwoTowerConfig, TwoTowerStudent

CHECKPOINT_FORMAT = "prerank.student_learner/1"
RANKED_FIELDS = ("listwise_weight", "feedback_loss_weight", "listwise_temperature", "unscored_negatives")
"""The ``ranked`` mode's settings of :class:`~models.losses.StudentObjective`, kept in checkpoints."""


class JointTeacher(Protocol):
    """A local teacher trained in the same step (see :mod:`models.teacher`)."""

    def learn_many_with_logits(
        self, samples: Sequence[RequestSample]
    ) -> tuple[dict[str, float], dict[str, np.ndarray]]: ...


def flatten_pairs(samples: Sequence[RequestSample]) -> tuple[list[ItemFeatures], torch.Tensor, torch.Tensor]:
    """The micro-batch's distinct items and, per (request, item) pair, its request and item index.

    Returns ``(unique_items, request_index, item_index)``: the ``I`` distinct items by id, in
    order of first occurrence (the first occurrence's features win), and two int64 tensors of
    shape ``(n_pairs,)`` with pairs in sample order. The item tower runs once per distinct item
    and ``item_index`` broadcasts its vectors to the pairs, so an item several requests of the
    batch share costs one tower pass.
    """
    pair_items = [item for sample in samples for item in sample.items]
    index_of: dict[str, int] = {}
    # setdefault's default is evaluated first: a new id gets the next index, a known id its own.
    item_index = np.fromiter((index_of.setdefault(item.item_id, len(index_of)) for item in pair_items),
                             dtype=np.int64, count=len(pair_items))
    # Indices are handed out in order of first occurrence, so unique's first positions are sorted by index.
    _, first = np.unique(item_index, return_index=True)
    lengths = np.fromiter((sample.n_items for sample in samples), dtype=np.int64, count=len(samples))
    request_index = np.repeat(np.arange(len(samples), dtype=np.int64), lengths)
    return [pair_items[p] for p in first.tolist()], torch.from_numpy(request_index), torch.from_numpy(item_index)


class StudentLearner:
    """Trainer-side owner of a :class:`TwoTowerStudent`.

    Parameters
    ----------
    config
        Student sizes and embedding-table policy.
    objective
        Loss mode and its weights / lambda schedule.
    ftrl
        FTRL-Proximal hyperparameters for the embedding rows.
    dense_lr
        AdaGrad learning rate of the dense parameters.
    teacher
        Optional local teacher trained jointly in ``distill`` mode: its pre-update logits are the
        distillation targets and its loss is added to the reported ``loss``.
    """

    def __init__(
        self,
        config: TwoTowerConfig = TwoTowerConfig(),
        objective: StudentObjective | None = None,
        ftrl: FTRLConfig = FTRLConfig(),
        dense_lr: float = 0.01,
        teacher: JointTeacher | None = None,
    ) -> None:
        self.config = config
        self.objective = objective if objective is not None else StudentObjective()
        self.teacher = teacher
        self.student = TwoTowerStudent(config)
        self.optimizer = SparseDenseOptimizer(self.student.parameters(), ftrl, dense_lr)
        self._served = ServedStudent(self.student)
        self.step = 0
        self.clock_ms = 0
        self._evicted_item_ids: list[str] = []
        self.last_pair_logits = np.zeros(0, dtype=np.float32)
        self.collective = Collective.solo()

    def join(self, collective: Collective) -> StudentLearner:
        """Learn as one shard of a data-parallel group from now on (see :mod:`models.sharded`).

        Every ``learn_many`` is then a collective step of the group (call it on every rank, with
        this rank's micro-batch, possibly empty); the tables hold only the rows this rank owns.
        """
        if self.teacher is not None and collective.world_size > 1:
            raise ConfigError("a jointly trained local teacher cannot be sharded")
        self.collective = collective
        return self

    # ------------------------------------------------------------------ learning
    def learn_many(self, samples: Sequence[RequestSample]) -> dict[str, float]:
        """One training step on a micro-batch of requests; returns the loss and its parts."""
        if self.collective.world_size > 1:
            from models.sharded import learn_sharded

            return learn_sharded(self, samples)
        samples = [s for s in samples if s.n_items > 0]
        if not samples:
            return {"loss": 0.0, "n_pairs": 0.0}
        self.clock_ms = max(self.clock_ms, max(int(s.ts_ms) for s in samples))
        teacher_metrics: dict[str, float] = {}
        teacher_logit = None
        if self.teacher is not None and self.objective.mode == "distill":
            teacher_metrics, by_objective = self.teacher.learn_many_with_logits(samples)
            teacher_logit = torch.from_numpy(combine(by_objective, self.objective.teacher_weights))

        unique_items, request_index, item_index = flatten_pairs(samples)
        lookup = SparseLookup(self.student.tables, now=self.clock_ms, learn=True)
        logits = self.student([s.user for s in samples], unique_items, request_index, item_index, lookup)
        # Pre-update logits of every (request, item) pair, in sample order: progressive
        # evaluation (score before learn) costs nothing extra.
        self.last_pair_logits = logits.detach().numpy().copy()
        labels = PairLabels.from_samples(samples)
        loss, metrics = self.objective(logits, labels, self.step, teacher_logit)

        # The loss is a mean over pairs; FTRL gets the summed per-pair gradients.
        n_pairs = float(len(item_index))
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step(lookup, row_grad_scale=n_pairs)
        self.end_step()

        metrics["n_pairs"] = n_pairs
        if teacher_metrics:
            metrics["teacher_loss"] = teacher_metrics["loss"]
            metrics["loss"] += teacher_metrics["loss"]
        return metrics

    def end_step(self) -> None:
        """Advance ``step`` and evict the rows untouched for the TTL (at ``clock_ms``)."""
        self.step += 1
        for table in self.student.tables.values():
            table.evict_expired(self.clock_ms)
        self._evicted_item_ids.extend(self.student.tables["item"].drain_evicted_ids())
        for name, table in self.student.tables.items():
            if name != "item":
                table.drain_evicted_ids()

    # ------------------------------------------------------------------ scoring
    @property
    def served(self) -> ServedStudent:
        """The scoring path over the live module (its current weights; read-only)."""
        if self._served.student is not self.student:
            self._served = ServedStudent(self.student)
        return self._served

    def score(self, user: UserFeatures, items: Sequence[ItemFeatures]) -> np.ndarray:
        return self.served.score(user, items)

    def zero_row_ratio(self) -> float:
        return self.student.zero_row_ratio()

    def drain_evicted_item_ids(self) -> list[str]:
        """Item ids whose rows were evicted since the last call (their cached vectors are stale)."""
        ids, self._evicted_item_ids = self._evicted_item_ids, []
        return ids

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | PathLike[str]) -> None:
        """Full checkpoint (weights, FTRL and AdaGrad state, id maps, step) as safetensors.

        A joint teacher is not included: save it separately.
        """
        Path(path).write_bytes(self.to_bytes())

    def to_bytes(self) -> bytes:
        tensors, tables_meta = tables_to_tensors(self.student.tables)
        tensors.update(dense_to_tensors(self.student, self.optimizer.dense))
        metadata = {
            "format": CHECKPOINT_FORMAT,
            "config": dumps(self.config.to_dict()),
            "learner": dumps(self._learner_meta()),
            "tables": dumps(tables_meta),
        }
        return safetensors.torch.save(tensors, metadata=metadata)

    def _learner_meta(self) -> dict[str, Any]:
        objective = self.objective
        return {
            "mode": objective.mode,
            "feedback_weights": dict(objective.feedback_weights),
            "teacher_weights": dict(objective.teacher_weights),
            "distill_lambda": schedule_to_dict(objective.distill_lambda),
            **{name: getattr(objective, name) for name in RANKED_FIELDS},
            **self.optimizer.settings(),  # "ftrl", "dense_lr"
            "step": self.step,
            "clock_ms": self.clock_ms,
            "evicted_item_ids": self._evicted_item_ids,
        }

    @classmethod
    def load(cls, path: str | PathLike[str]) -> StudentLearner:
        return cls.from_bytes(Path(path).read_bytes())

    @classmethod
    def from_bytes(cls, data: bytes) -> StudentLearner:
        metadata = _read_metadata(data, CHECKPOINT_FORMAT)
        tensors = safetensors.torch.load(data)
        info = json.loads(metadata["learner"])
        objective = StudentObjective(
            mode=info["mode"], feedback_weights=info["feedback_weights"],
            teacher_weights=info["teacher_weights"],
            distill_lambda=schedule_from_dict(info["distill_lambda"]),
            **{name: info[name] for name in RANKED_FIELDS if name in info},  # older checkpoints: defaults
        )
        learner = cls(
            TwoTowerConfig.from_dict(json.loads(metadata["config"])), objective,
            FTRLConfig(**info["ftrl"]), float(info["dense_lr"]),
        )
        learner.student.tables = tables_from_tensors(tensors, json.loads(metadata["tables"]))
        dense_from_tensors(learner.student, learner.optimizer.dense, tensors)
        learner.step = int(info["step"])
        learner.clock_ms = int(info["clock_ms"])
        learner._evicted_item_ids = list(info["evicted_item_ids"])
        return learner


def _read_metadata(data: bytes, expected_format: str) -> dict[str, str]:
    """The JSON metadata of a safetensors blob, checked for ``expected_format``."""
    if len(data) < 8:
        raise ExportError("not a safetensors blob: too short")
    header_size = int.from_bytes(data[:8], "little")
    if header_size <= 0 or 8 + header_size > len(data):
        raise ExportError("not a safetensors blob: bad header size")
    try:
        header = json.loads(data[8 : 8 + header_size])
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ExportError(f"not a safetensors blob: {error}") from error
    metadata = header.get("__metadata__") or {}
    if metadata.get("format") != expected_format:
        raise ExportError(f"expected format {expected_format!r}, got {metadata.get('format')!r}")
    return metadata

