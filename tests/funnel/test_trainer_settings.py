"""The trainer's learner follows the settings."""

from __future__ import annotations

from core.settings import Settings
from funnel.training import new_learner


def test_ftrl_l1_comes_from_the_settings():
    settings = Settings(model={"ftrl_l1": 0.1, "mode": "distill", "output_dim": 16, "hidden_dim": 16})
    learner = new_learner(settings)
    assert learner.optimizer.ftrl.config.l1 == 0.1 and learner.objective.mode == "distill"
    assert new_learner(Settings()).optimizer.ftrl.config.l1 == Settings().model.trainer_ftrl_l1


def test_the_default_l1_is_the_modes_knee_at_full_volume():
    from core.settings import DEFAULT_FTRL_L1, FTRL_L1_KNEES

    assert Settings(model={"mode": "impressions"}).model.trainer_ftrl_l1 == FTRL_L1_KNEES["impressions"] > DEFAULT_FTRL_L1
    assert Settings(model={"mode": "ranked"}).model.trainer_ftrl_l1 == DEFAULT_FTRL_L1
    assert Settings(model={"mode": "impressions", "ftrl_l1": 0.1}).model.trainer_ftrl_l1 == 0.1


def test_every_list_of_loss_modes_is_the_models_list():
    from bench.quality import MODES as BENCH_MODES
    from models.losses import LOSS_MODES
    from monitoring.metrics import LOSS_MODES as METRIC_MODES
    from replay.command import MODES as REPLAY_MODES

    assert BENCH_MODES == METRIC_MODES == REPLAY_MODES == LOSS_MODES


def test_every_loss_mode_is_a_setting():
    from typing import get_args

    from core.settings import ModelSettings
    from models.losses import LOSS_MODES

    assert set(get_args(ModelSettings.model_fields["mode"].annotation)) == set(LOSS_MODES)
