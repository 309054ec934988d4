"""The teacher's trainer: FTRL on its embedding rows, AdaGrad on its network, BCE per objective.

The optimiser step is the student's (:class:`~models.optim.SparseDenseOptimizer`).

:class:`TeacherLearner` implements :class:`~models.protocol.Ranker`; ``score`` is the combined
logit (:func:`~models.losses.combine` with ``objective_weights``), ``score_objectives`` the
per-objective logits. It fits offline on a time range (:meth:`TeacherLearner.fit`) and keeps
updating online (:meth:`TeacherLearner.learn_many`).

>>> from models.synthetic import SyntheticRequests
>>> teacher = TeacherLearner(TeacherConfig(architecture="wide_deep", embedding_dim=4, hidden_sizes=(8,)))
>>> samples = SyntheticRequests(seed=0, items_per_request=4).batch(3)
>>> teacher.learn_many(samples)["loss"] > 0
True
>>> sorted(teacher.score_objectives(samples[0].user, samples[0].items))
['click', 'like', 'long_view']
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from os import PathLike
from pathlib import Path
from types import MappingProxyType

import numpy as np
import safetensors.torch
import torch

from models.checkpoint import (
    dense_from_tensors,
    dense_to_tensors,
    dumps,
    tables_from_tensors,
    tables_to_tensors,
)
from models.exceptions import ConfigError
from models.features import OBJECTIVES, ItemFeatures, RequestSample, UserFeatures
from models.ftrl import FTRLConfig
from models.learner import _read_metadata, flatten_pairs
from models.losses import DEFAULT_TEACHER_WEIGHTS, combine, masked_bce
from models.optim import SparseDenseOptimizer
from models.sparse import SparseLookup
from models.teacher.item_stats import ItemStatistics
from models.teacher.model import TeacherConfig, TeacherModel

CHECKPOINT_FORMAT = "prerank.teacher_learner/1"


class TeacherLearner:
    """Trainer-side owner of a :class:`TeacherModel`.

    Parameters
    ----------
    config
        Architecture and sizes.
    objective_weights
        Weights of the per-objective logits in the combined score.
    ftrl, dense_lr
        Optimiser settings (FTRL on embedding rows, AdaGrad on the network).
    """

    def __init__(
        self,
        config: TeacherConfig = TeacherConfig(),
        objective_weights: Mapping[str, float] = DEFAULT_TEACHER_WEIGHTS,
        ftrl: FTRLConfig = FTRLConfig(l1=0.1),
        dense_lr: float = 0.01,
    ) -> None:
        unknown = set(objective_weights) - set(OBJECTIVES)
        if unknown:
            raise ConfigError(f"unknown objectives {sorted(unknown)}")
        self.config = config
        self.objective_weights = MappingProxyType(dict(objective_weights))
        self.model = TeacherModel(config)
        self.optimizer = SparseDenseOptimizer(self.model.parameters(), ftrl, dense_lr)
        self.item_statistics = ItemStatistics()
        self.step = 0
        self.clock_ms = 0

    # ------------------------------------------------------------------ learning
    def learn_many(self, samples: Sequence[RequestSample]) -> dict[str, float]:
        return self.learn_many_with_logits(samples)[0]

    def learn_many_with_logits(
        self, samples: Sequence[RequestSample]
    ) -> tuple[dict[str, float], dict[str, np.ndarray]]:
        """Train on a batch; also return the pre-update logits per objective, shape ``(n_pairs,)``."""
        samples = [s for s in samples if s.n_items > 0]
        if not samples:
            return {"loss": 0.0, "n_pairs": 0.0}, {o: np.zeros(0, dtype=np.float32) for o in OBJECTIVES}
        self.clock_ms = max(self.clock_ms, max(int(s.ts_ms) for s in samples))
        items, request_index, item_index = flatten_pairs(samples)
        lookup = SparseLookup(self.model.tables, now=self.clock_ms, learn=True)
        statistics = self.item_statistics.features([i.item_id for i in items])
        logits = self.model([s.user for s in samples], items, request_index, item_index, statistics, lookup)
        labels = torch.tensor(
            [[getattr(s, o)[k] for o in OBJECTIVES] for s in samples for k in range(s.n_items)], dtype=torch.float32
        )
        parts = [masked_bce(logits[:, t], labels[:, t].clamp(min=0), labels[:, t] >= 0) for t in range(len(OBJECTIVES))]
        loss = torch.stack(parts).sum()
        n_pairs = float(len(item_index))
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step(lookup, row_grad_scale=n_pairs)
        for table in self.model.tables.values():
            table.evict_expired(self.clock_ms)
            table.drain_evicted_ids()
        exposed = labels[:, 0] >= 0
        pair_item_ids = [items[i].item_id for i in item_index[exposed].tolist()]
        self.item_statistics.update(pair_item_ids, labels[exposed].clamp(min=0).numpy())
        self.step += 1
        metrics = {"loss": float(loss.detach()), "n_pairs": n_pairs}
        metrics.update({f"{o}_bce": float(p.detach()) for o, p in zip(OBJECTIVES, parts)})
        detached = logits.detach().numpy()
        return metrics, {o: detached[:, t].copy() for t, o in enumerate(OBJECTIVES)}

    def fit(
        self, samples: Sequence[RequestSample], batch_size: int = 32, epochs: int = 1,
        start_ms: int | None = None, end_ms: int | None = None,
    ) -> dict[str, float]:
        """Offline fit on the samples with ``start_ms <= ts_ms < end_ms``, in time order.

        Returns the mean loss of the last epoch and the number of requests used.
        """
        if batch_size < 1 or epochs < 1:
            raise ConfigError("batch_size and epochs must be >= 1")
        chosen = sorted(
            (s for s in samples if (start_ms is None or s.ts_ms >= start_ms) and (end_ms is None or s.ts_ms < end_ms)),
            key=lambda s: s.ts_ms,
        )
        losses: list[float] = []
        for _ in range(epochs):
            losses = [self.learn_many(chosen[i : i + batch_size])["loss"] for i in range(0, len(chosen), batch_size)]
        return {"loss": float(np.mean(losses)) if losses else 0.0, "n_requests": float(len(chosen))}

    # ------------------------------------------------------------------ scoring
    def score_objectives(self, user: UserFeatures, items: Sequence[ItemFeatures]) -> dict[str, np.ndarray]:
        """Float32 logits per objective of :data:`~models.features.OBJECTIVES`, each ``(n,)``."""
        if not items:
            return {o: np.zeros(0, dtype=np.float32) for o in OBJECTIVES}
        with torch.no_grad():
            logits = self.model.score_one_user(
                user, items, self.item_statistics.features([i.item_id for i in items])
            ).numpy()
        return {o: logits[:, t].copy() for t, o in enumerate(OBJECTIVES)}

    def score(self, user: UserFeatures, items: Sequence[ItemFeatures]) -> np.ndarray:
        """The combined logit (weighted sum of per-objective logits), float32 ``(n,)``."""
        return combine(self.score_objectives(user, items), self.objective_weights)

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | PathLike[str]) -> None:
        tensors, tables_meta = tables_to_tensors(self.model.tables)
        tensors.update(dense_to_tensors(self.model, self.optimizer.dense))
        stats_meta, counts = self.item_statistics.state()
        tensors["item_statistics.counts"] = torch.from_numpy(counts)
        metadata = {
            "format": CHECKPOINT_FORMAT,
            "config": dumps(self.config.to_dict()),
            "tables": dumps(tables_meta),
            "learner": dumps({
                "objective_weights": dict(self.objective_weights), **self.optimizer.settings(),
                "step": self.step, "clock_ms": self.clock_ms,
                "item_statistics": stats_meta,
            }),
        }
        Path(path).write_bytes(safetensors.torch.save(tensors, metadata=metadata))

    @classmethod
    def load(cls, path: str | PathLike[str]) -> TeacherLearner:
        data = Path(path).read_bytes()
        metadata = _read_metadata(data, CHECKPOINT_FORMAT)
        tensors = safetensors.torch.load(data)
        info = json.loads(metadata["learner"])
        learner = cls(
            TeacherConfig.from_dict(json.loads(metadata["config"])), info["objective_weights"],
            FTRLConfig(**info["ftrl"]), float(info["dense_lr"]),
        )
        learner.model.tables = tables_from_tensors(tensors, json.loads(metadata["tables"]))
        dense_from_tensors(learner.model, learner.optimizer.dense, tensors)
        learner.item_statistics = ItemStatistics.from_state(
            info["item_statistics"], tensors["item_statistics.counts"].numpy()
        )
        learner.step, learner.clock_ms = int(info["step"]), int(info["clock_ms"])
        return learner
