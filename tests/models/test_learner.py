"""The student learner: modes, sparsity, eviction reporting, checkpoints."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.ftrl import FTRLConfig
from models.learner import StudentLearner
from models.losses import LOSS_MODES, StudentObjective
from models.two_tower import TwoTowerConfig


def test_zero_row_ratio_rises_with_l1(small_config, stream):
    batches = [stream.batch(16) for _ in range(8)]
    ratios = []
    for l1 in (0.0, 0.3, 1.0, 5.0):
        learner = StudentLearner(small_config, ftrl=FTRLConfig(l1=l1))
        for batch in batches:
            learner.learn_many(batch)
        ratios.append(learner.zero_row_ratio())
    assert ratios == sorted(ratios)
    assert ratios[0] < 0.05 and ratios[-1] > 0.9


@pytest.mark.parametrize("mode", LOSS_MODES)
def test_each_mode_reduces_its_loss_on_a_repeated_batch(small_config, stream, mode):
    learner = StudentLearner(small_config, StudentObjective(mode), dense_lr=0.05, ftrl=FTRLConfig(l1=0.0, alpha=0.5))
    batch = stream.batch(16)
    first = learner.learn_many(batch)["loss"]
    for _ in range(30):
        last = learner.learn_many(batch)["loss"]
    assert last < 0.8 * first
    assert learner.step == 31


def test_empty_batches_do_not_step(small_config):
    learner = StudentLearner(small_config)
    assert learner.learn_many([])["loss"] == 0.0
    assert learner.step == 0


def test_evicted_item_ids_are_reported_once(stream):
    config = TwoTowerConfig(embedding_dim=4, hidden_sizes=(8,), output_dim=8, min_count=1, ttl_ms=1)
    learner = StudentLearner(config)
    first = stream.batch(1)
    learner.learn_many(first)
    later = stream.batch(1)
    learner.learn_many(later)
    evicted = set(learner.drain_evicted_item_ids())
    kept = {i.item_id for i in later[0].items} | set(later[0].user.history_items) | set(later[0].user.session_items)
    expected = ({i.item_id for i in first[0].items} | set(first[0].user.history_items)) - kept
    assert evicted == expected
    assert learner.drain_evicted_item_ids() == []


def test_checkpoint_round_trip_continues_identically(small_config, stream, tmp_path):
    learner = StudentLearner(small_config, StudentObjective("distill"))
    for _ in range(3):
        learner.learn_many(stream.batch(8))
    learner.save(tmp_path / "ckpt.safetensors")
    restored = StudentLearner.load(tmp_path / "ckpt.safetensors")
    assert restored.step == learner.step and restored.objective == learner.objective
    probe = stream.batch(1)[0]
    np.testing.assert_array_equal(restored.score(probe.user, probe.items), learner.score(probe.user, probe.items))
    batch = stream.batch(8)
    assert restored.learn_many(batch) == learner.learn_many(batch)
    np.testing.assert_array_equal(restored.score(probe.user, probe.items), learner.score(probe.user, probe.items))
    for (name, a), b in zip(learner.student.tables.items(), restored.student.tables.values()):
        n = a.id_map.n_rows
        assert torch.equal(a.weight[:n], b.weight[:n]), name


def test_ranked_settings_survive_a_checkpoint(small_config, stream, tmp_path):
    objective = StudentObjective("ranked", listwise_weight=0.3, feedback_loss_weight=2.0, listwise_temperature=1.5,
                                 unscored_negatives=False)
    learner = StudentLearner(small_config, objective)
    learner.learn_many(stream.batch(4))
    learner.save(tmp_path / "ckpt.safetensors")
    assert StudentLearner.load(tmp_path / "ckpt.safetensors").objective == objective
