"""A synthetic exposure log, the fallback when no data is given (it warns loudly).

Items have Zipf popularity, a Zipf-distributed author and one to three Zipf-distributed tags.
Users have sparse tag interests; they come back in sessions of short pages; an exposure is
either a popular item or an item carrying one of the user's tags. Click, long view and like
depend on the user-item affinity and an item quality, so a model can learn something.

>>> import warnings
>>> with warnings.catch_warnings(record=True) as caught:
...     warnings.simplefilter("always")
...     data = generate(SyntheticConfig(n_users=50, n_items=200, seed=1))
>>> data.report.synthetic, caught[0].category.__name__
(True, 'SyntheticDataWarning')
>>> all(a.ts_ms <= b.ts_ms for a, b in zip(data.exposures, data.exposures[1:]))
True
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from models.features import ItemFeatures
from replay.dataset import Dataset, HistorySeed, LoadReport
from replay.events import Exposure
from replay.exceptions import ReplayConfigError

DAY_MS = 86_400_000


class SyntheticDataWarning(UserWarning):
    """Emitted whenever synthetic data stands in for a real log."""


@dataclass(frozen=True)
class SyntheticConfig:
    n_users: int = 3_000
    n_items: int = 5_000
    n_authors: int = 800
    n_tags: int = 60
    n_tabs: int = 3
    days: int = 7
    start_ms: int = 1_650_816_000_000  # 2022-04-25 00:00 Beijing time, like KuaiRand
    sessions_per_user: float = 4.0
    pages_per_session: float = 2.0
    zipf_exponent: float = 1.1
    interest_share: float = 0.6
    history_seed_items: int = 20
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("n_users", "n_items", "n_authors", "n_tags", "n_tabs", "days"):
            if getattr(self, name) < 1:
                raise ReplayConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 <= self.interest_share <= 1.0:
            raise ReplayConfigError(f"interest_share must be in [0, 1], got {self.interest_share}")


def _zipf(n: int, exponent: float, rng: np.random.Generator) -> np.ndarray:
    """Zipf probabilities over ``n`` ids, assigned to ids in random order."""
    weights = 1.0 / np.arange(1, n + 1) ** exponent
    return (weights / weights.sum())[rng.permutation(n)]


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _pick(items: np.ndarray, cdf: np.ndarray, rng: np.random.Generator) -> int:
    """One of ``items`` drawn by its cumulative probabilities ``cdf``."""
    return int(items[min(int(np.searchsorted(cdf, rng.random())), len(items) - 1)])


def generate(config: SyntheticConfig = SyntheticConfig()) -> Dataset:
    """Generate a :class:`~replay.dataset.Dataset`; warns with :class:`SyntheticDataWarning`."""
    warnings.warn(
        "NO DATA GIVEN: replaying a SYNTHETIC log; its numbers say nothing about real traffic",
        SyntheticDataWarning,
        stacklevel=2,
    )
    rng = np.random.default_rng(config.seed)
    popularity = _zipf(config.n_items, config.zipf_exponent, rng)
    authors = rng.choice(config.n_authors, size=config.n_items, p=_zipf(config.n_authors, 1.0, rng))
    tag_p = _zipf(config.n_tags, 1.0, rng)
    item_tags = [
        np.unique(rng.choice(config.n_tags, size=rng.integers(1, 4), p=tag_p)) for _ in range(config.n_items)
    ]
    quality = rng.normal(0.0, 0.5, config.n_items)
    durations = np.exp(rng.normal(np.log(60_000), 0.8, config.n_items)).astype(np.int64)
    items_of_tag = [[] for _ in range(config.n_tags)]
    for item, tags in enumerate(item_tags):
        for tag in tags:
            items_of_tag[tag].append(item)
    tag_items = [np.asarray(items, dtype=np.int64) for items in items_of_tag]
    tag_cdf = [np.cumsum(popularity[items]) / popularity[items].sum() if len(items) else items for items in tag_items]
    popularity_cdf = np.cumsum(popularity)
    interests = rng.dirichlet(np.full(config.n_tags, 0.1), size=config.n_users)

    exposures: list[Exposure] = []
    span_ms = config.days * DAY_MS
    for user in range(config.n_users):
        interest = interests[user]
        for _ in range(max(1, rng.poisson(config.sessions_per_user))):
            ts = config.start_ms + int(rng.integers(0, span_ms))
            tab = int(rng.integers(0, config.n_tabs))
            for _ in range(1 + rng.poisson(config.pages_per_session - 1)):
                for _ in range(int(rng.integers(1, 3))):
                    if rng.random() < config.interest_share:
                        tag = rng.choice(config.n_tags, p=interest)
                        if not len(tag_items[tag]):
                            continue
                        item = _pick(tag_items[tag], tag_cdf[tag], rng)
                    else:
                        item = min(int(np.searchsorted(popularity_cdf, rng.random())), config.n_items - 1)
                    affinity = float(interest[item_tags[item]].sum())
                    click = int(rng.random() < _sigmoid(-0.5 + 2.5 * affinity + quality[item]))
                    long_view = int(rng.random() < _sigmoid(-1.5 + 3.0 * affinity + quality[item] + 0.8 * click))
                    like = int(click and rng.random() < _sigmoid(-3.0 + 2.0 * affinity + quality[item]))
                    play = int(durations[item] * (0.9 if long_view else rng.uniform(0.02, 0.4)))
                    exposures.append(
                        Exposure(str(user), str(item), ts, tab, click, long_view, like, play, int(durations[item]))
                    )
                    ts += int(rng.exponential(8_000)) + 1
                ts += int(rng.exponential(20_000)) + 1
    exposures.sort(key=lambda e: e.ts_ms)

    catalog = {
        str(i): ItemFeatures(str(i), f"a{authors[i]}", tuple(f"t{t}" for t in item_tags[i]), int(durations[i]))
        for i in range(config.n_items)
    }
    levels = ("low", "mid", "high")
    profiles = {
        str(u): {"activity": levels[int(rng.integers(0, 3))], "group": str(int(np.argmax(interests[u])) % 8)}
        for u in range(config.n_users)
    }
    seeds = {}
    for user in range(config.n_users):
        tags = rng.choice(config.n_tags, size=config.history_seed_items, p=interests[user])
        picks = [_pick(tag_items[t], tag_cdf[t], rng) for t in tags if len(tag_items[t])]
        seeds[str(user)] = HistorySeed(tuple(str(i) for i in picks), config.start_ms - DAY_MS)
    report = LoadReport(source=f"synthetic(seed={config.seed})", synthetic=True)
    report.rows_read["exposures"] = len(exposures)
    report.notes.append("synthetic data: no real log was given")
    return Dataset(catalog, profiles, tuple(exposures), seeds, report)
