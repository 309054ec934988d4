"""The shared optimiser step: the learners' numbers equal the hand-written steps it replaced.

``_old_student_step`` and ``_old_teacher_step`` are the learners' training steps as they were
before :class:`~models.optim.SparseDenseOptimizer` (AdaGrad and FTRL written out in each learner),
kept here as references. The learners must reach bit-identical weights, FTRL slots, AdaGrad
state and scores after several batches.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.features import OBJECTIVES
from models.ftrl import FTRLConfig, FTRLProximal
from models.learner import StudentLearner, flatten_pairs
from models.losses import PairLabels, StudentObjective, masked_bce
from models.optim import SparseDenseOptimizer
from models.served import ServedStudent
from models.sparse import SparseLookup
from models.synthetic import SyntheticRequests
from models.teacher import TeacherConfig, TeacherLearner
from models.two_tower import TwoTowerConfig

FTRL = FTRLConfig(alpha=0.1, l1=0.3)
STUDENT = TwoTowerConfig(embedding_dim=4, hidden_sizes=(8, 8), output_dim=8, min_count=1)
TEACHERS = {
    "wide_deep": TeacherConfig("wide_deep", embedding_dim=4, hidden_sizes=(8,)),
    "mmoe": TeacherConfig("mmoe", embedding_dim=4, expert_sizes=(8, 4), tower_hidden=4),
}


def _batches(n: int = 5):
    generator = SyntheticRequests(seed=11, n_users=60, n_items=200, items_per_request=6)
    return [generator.batch(8) for _ in range(n)], generator


class _Reference:
    """A fresh model of a learner with the optimisers spelled out beside it (AdaGrad fused, as ``models.optim`` builds it)."""

    def __init__(self, model: torch.nn.Module, dense_lr: float) -> None:
        self.model, self.ftrl = model, FTRLProximal(FTRL)
        self.adagrad = torch.optim.Adagrad(model.parameters(), lr=dense_lr, fused=True)
        self.step, self.clock_ms = 0, 0


def _old_student_step(ref: _Reference, objective: StudentObjective, samples) -> float:
    student = ref.model
    samples = [s for s in samples if s.n_items > 0]
    ref.clock_ms = max(ref.clock_ms, max(int(s.ts_ms) for s in samples))
    unique_items, request_index, item_index = flatten_pairs(samples)
    lookup = SparseLookup(student.tables, now=ref.clock_ms, learn=True)
    logits = student([s.user for s in samples], unique_items, request_index, item_index, lookup)
    loss, metrics = objective(logits, PairLabels.from_samples(samples), ref.step, None)
    ref.adagrad.zero_grad(set_to_none=True)
    loss.backward()
    ref.adagrad.step()
    n_pairs = float(len(item_index))
    for name, (rows, grads) in lookup.row_grads().items():
        ref.ftrl.step(student.tables[name], rows, grads * n_pairs)
    ref.step += 1
    for table in student.tables.values():
        table.evict_expired(ref.clock_ms)
        table.drain_evicted_ids()
    return metrics["loss"]


def _old_teacher_step(ref: _Reference, item_statistics, samples) -> float:
    model = ref.model
    samples = [s for s in samples if s.n_items > 0]
    ref.clock_ms = max(ref.clock_ms, max(int(s.ts_ms) for s in samples))
    items, request_index, item_index = flatten_pairs(samples)
    lookup = SparseLookup(model.tables, now=ref.clock_ms, learn=True)
    statistics = item_statistics.features([i.item_id for i in items])
    logits = model([s.user for s in samples], items, request_index, item_index, statistics, lookup)
    labels = torch.tensor(
        [[getattr(s, o)[k] for o in OBJECTIVES] for s in samples for k in range(s.n_items)], dtype=torch.float32
    )
    parts = [masked_bce(logits[:, t], labels[:, t].clamp(min=0), labels[:, t] >= 0) for t in range(len(OBJECTIVES))]
    loss = torch.stack(parts).sum()
    ref.adagrad.zero_grad(set_to_none=True)
    loss.backward()
    ref.adagrad.step()
    n_pairs = float(len(item_index))
    for name, (rows, grads) in lookup.row_grads().items():
        ref.ftrl.step(model.tables[name], rows, grads * n_pairs)
    for table in model.tables.values():
        table.evict_expired(ref.clock_ms)
        table.drain_evicted_ids()
    exposed = labels[:, 0] >= 0
    pair_item_ids = [items[i].item_id for i in item_index[exposed].tolist()]
    item_statistics.update(pair_item_ids, labels[exposed].clamp(min=0).numpy())
    ref.step += 1
    return float(loss.detach())


def _assert_same_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer, ref: _Reference) -> None:
    for (name, a), b in zip(model.state_dict().items(), ref.model.state_dict().values()):
        assert torch.equal(a, b), name
    for (name, a), b in zip(model.named_parameters(), ref.model.parameters()):
        assert optimizer.state[a].keys() == ref.adagrad.state[b].keys(), name
        for key, value in optimizer.state[a].items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(ref.adagrad.state[b][key])), (name, key)
    assert model.tables.keys() == ref.model.tables.keys()
    for name, table in model.tables.items():
        other = ref.model.tables[name]
        assert torch.equal(table.weight, other.weight), name
        assert table.slots.keys() == other.slots.keys() == {"ftrl_z", "ftrl_n"}, name
        for slot, value in table.slots.items():
            assert torch.equal(value, other.slots[slot]), (name, slot)


@pytest.mark.parametrize("mode", ["cascade", "distill", "impressions"])
def test_student_learns_exactly_like_the_old_step(mode):
    learner = StudentLearner(STUDENT, StudentObjective(mode), ftrl=FTRL, dense_lr=0.05)
    ref = _Reference(StudentLearner(STUDENT, ftrl=FTRL, dense_lr=0.05).student, dense_lr=0.05)
    batches, generator = _batches()
    for batch in batches:
        assert learner.learn_many(batch)["loss"] == _old_student_step(ref, learner.objective, batch)
    assert ref.step == learner.step
    _assert_same_state(learner.student, learner.optimizer.dense, ref)
    user, items = generator.user(3), [generator.item(i) for i in range(20)]
    np.testing.assert_array_equal(learner.score(user, items), ServedStudent(ref.model).score(user, items))


@pytest.mark.parametrize("architecture", sorted(TEACHERS))
def test_teacher_learns_exactly_like_the_old_step(architecture):
    config = TEACHERS[architecture]
    teacher = TeacherLearner(config, ftrl=FTRL, dense_lr=0.05)
    shadow = TeacherLearner(config, ftrl=FTRL, dense_lr=0.05)  # lends its model and item statistics
    ref = _Reference(shadow.model, dense_lr=0.05)
    batches, generator = _batches()
    for batch in batches:
        assert teacher.learn_many(batch)["loss"] == _old_teacher_step(ref, shadow.item_statistics, batch)
    _assert_same_state(teacher.model, teacher.optimizer.dense, ref)
    user, items = generator.user(3), [generator.item(i) for i in range(20)]
    np.testing.assert_array_equal(teacher.score(user, items), shadow.score(user, items))


def test_both_learners_step_through_one_optimizer():
    learner = StudentLearner(STUDENT, ftrl=FTRL, dense_lr=0.05)
    teacher = TeacherLearner(TEACHERS["mmoe"], ftrl=FTRL, dense_lr=0.05)
    for owner in (learner, teacher):
        assert isinstance(owner.optimizer, SparseDenseOptimizer)
        assert owner.optimizer.ftrl.config == FTRL and owner.optimizer.dense_lr == 0.05
