from __future__ import annotations

import pytest

from models.synthetic import SyntheticRequests
from models.two_tower import TwoTowerConfig

SMALL = TwoTowerConfig(embedding_dim=8, hidden_sizes=(16, 16), output_dim=16, min_count=1)


@pytest.fixture
def small_config() -> TwoTowerConfig:
    return SMALL


@pytest.fixture
def stream() -> SyntheticRequests:
    return SyntheticRequests(seed=7, n_users=200, n_items=400, items_per_request=8)
