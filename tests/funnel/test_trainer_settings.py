"""The trainer's learner follows the settings."""

from __future__ import annotations

from core.settings import Settings
from funnel.training import new_learner


def test_ftrl_l1_comes_from_the_settings():
    settings = Settings(model={"ftrl_l1": 0.1, "mode": "distill", "output_dim": 16, "hidden_dim": 16})
    learner = new_learner(settings)
    assert learner.optimizer.ftrl.config.l1 == 0.1 and learner.objective.mode == "distill"
    assert new_learner(Settings()).optimizer.ftrl.config.l1 == Settings().model.ftrl_l1
