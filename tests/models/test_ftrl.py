"""FTRL-Proximal against its closed form and the argmin it is defined by."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from models.embedding import EmbeddingTable
from models.exceptions import ConfigError, InputError
from models.ftrl import FTRLConfig, FTRLProximal, ftrl_update
from models.id_map import DynamicIdMap


def test_two_steps_equal_hand_computed_values():
    config = FTRLConfig(alpha=1.0, beta=0.0, l1=0.5, l2=0.0)
    z, n, w = torch.zeros(1), torch.zeros(1), torch.zeros(1)
    z, n, w = ftrl_update(z, n, w, torch.tensor([2.0]), config)
    # n = 4, sigma = 2, z = 2, w = -(2 - 0.5) / 2
    assert (float(z), float(n), float(w)) == (2.0, 4.0, -0.75)
    z, n, w = ftrl_update(z, n, w, torch.tensor([-1.0]), config)
    sigma = math.sqrt(5) - 2
    z_expected = 2 - 1 - sigma * (-0.75)
    assert float(n) == 5.0
    assert float(z) == pytest.approx(z_expected, rel=1e-6)
    assert float(w) == pytest.approx(-(z_expected - 0.5) / math.sqrt(5), rel=1e-6)


def test_weight_is_exactly_zero_while_z_within_l1():
    config = FTRLConfig(alpha=0.1, beta=1.0, l1=3.0, l2=1.0)
    z, n, w = ftrl_update(torch.zeros(4), torch.zeros(4), torch.zeros(4), torch.tensor([0.5, -2.9, 3.0, -3.5]), config)
    assert w.tolist()[:3] == [0.0, 0.0, 0.0]
    expected = -(-3.5 + 3.0) / ((1.0 + 3.5) / 0.1 + 1.0)
    assert float(w[3]) == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("seed", range(5))
def test_update_is_the_argmin_of_the_ftrl_objective(seed):
    """w_{t+1} = argmin_w g_{1:t} w + 1/2 sum_s sigma_s (w - w_s)^2 + l1 |w| + 1/2 (l2 + beta/alpha) w^2."""
    rng = np.random.default_rng(seed)
    config = FTRLConfig(alpha=0.3, beta=0.5, l1=0.4, l2=0.2)
    z, n, w = torch.zeros(1, dtype=torch.float64), torch.zeros(1, dtype=torch.float64), torch.zeros(1, dtype=torch.float64)
    grads, past_w, sigmas = [], [], []
    grid = np.linspace(-5, 5, 2_000_001)
    for _ in range(6):
        g = float(rng.normal() * 2)
        n_before = float(n)
        past_w.append(float(w))
        z, n, w = ftrl_update(z, n, w, torch.tensor([g], dtype=torch.float64), config)
        grads.append(g)
        sigmas.append((math.sqrt(n_before + g * g) - math.sqrt(n_before)) / config.alpha)
        objective = sum(grads) * grid + config.l1 * np.abs(grid)
        objective += 0.5 * (config.l2 + config.beta / config.alpha) * grid**2
        for sigma, w_s in zip(sigmas, past_w):
            objective += 0.5 * sigma * (grid - w_s) ** 2
        assert float(w) == pytest.approx(grid[np.argmin(objective)], abs=1e-5)


def test_step_touches_only_the_given_rows():
    table = EmbeddingTable(3, DynamicIdMap())
    table.lookup(["a", "b", "c"], now=0)
    optimizer = FTRLProximal(FTRLConfig(alpha=1.0, beta=0.0, l1=0.0, l2=0.0))
    optimizer.step(table, torch.tensor([2]), torch.full((1, 3), 2.0))
    assert table.weight[2].tolist() == [-1.0, -1.0, -1.0]  # w = -z / sqrt(n) = -2 / 2
    assert not table.weight[[0, 1, 3]].any()
    assert table.slot("ftrl_n")[2].tolist() == [4.0, 4.0, 4.0]


def test_bad_inputs_raise():
    with pytest.raises(ConfigError):
        FTRLConfig(alpha=0.0)
    with pytest.raises(ConfigError):
        FTRLConfig(l1=-1.0)
    table = EmbeddingTable(3, DynamicIdMap())
    with pytest.raises(InputError):
        FTRLProximal().step(table, torch.tensor([1]), torch.zeros(1, 2))
