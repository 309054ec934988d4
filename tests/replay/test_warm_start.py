"""The warm-started student: trained on the pre-period, handed to the trainer as its checkpoint."""

from __future__ import annotations

import math

import numpy as np
import pytest

from core.settings import Settings
from funnel.checkpoint import CheckpointDir
from funnel.training import MODEL_FILE
from models.learner import StudentLearner
from replay.grouping import group_requests
from replay.synthetic import SyntheticConfig, generate
from replay.warm_start import install_as_first_checkpoint, pretrain_student

SMALL = Settings(model={"output_dim": 16, "hidden_dim": 16, "embedding_dim": 8})


@pytest.fixture(scope="module")
def pretrained():
    with pytest.warns(UserWarning, match="(?i)synthetic"):
        dataset = generate(SyntheticConfig(n_users=80, n_items=300, days=3))
    requests = group_requests(dataset.exposures)
    assert len(requests) > 200
    return pretrain_student(SMALL, dataset, requests)


def test_the_student_learns_the_pre_period(pretrained):
    learner, info = pretrained
    assert info["warm_start_requests"] > 200 and learner.step > 0
    assert not math.isnan(info["warm_start_auc_long_view"])
    assert learner.objective.mode == "impressions"


def test_each_mode_gets_the_weights_with_its_own_loss_from_step_zero(pretrained, tmp_path):
    learner, _ = pretrained
    weights = {k: v.clone() for k, v in learner.student.state_dict().items()}
    assert install_as_first_checkpoint(learner, "distill", tmp_path)
    latest = CheckpointDir(tmp_path).latest()
    assert latest.offsets == {} and latest.counters["records"] == 0
    loaded = StudentLearner.load(latest.folder / MODEL_FILE)
    assert loaded.objective.mode == "distill" and loaded.step == 0
    for name, tensor in loaded.student.state_dict().items():
        np.testing.assert_array_equal(tensor.numpy(), weights[name].numpy())


def test_a_resumed_run_keeps_the_trainers_own_checkpoint(pretrained, tmp_path):
    learner, _ = pretrained
    assert install_as_first_checkpoint(learner, "cascade", tmp_path)
    first = CheckpointDir(tmp_path).latest().folder
    assert not install_as_first_checkpoint(learner, "cascade", tmp_path)
    assert CheckpointDir(tmp_path).latest().folder == first
