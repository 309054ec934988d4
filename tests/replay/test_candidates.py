"""Candidate generation and the decayed popularity counter."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from models.features import ItemFeatures
from replay.candidates import CandidateConfig, CandidateGenerator
from replay.exceptions import ReplayConfigError
from replay.popularity import DecayedCounter


def make_catalog(n: int = 500) -> dict[str, ItemFeatures]:
    return {f"i{k}": ItemFeatures(f"i{k}", author_id=f"a{k % 50}", tags=(f"t{k % 13}", f"t{k % 17}"))
            for k in range(n)}


def test_counter_matches_closed_form():
    half_life = 1_000.0
    events = [(0, 0), (1, 300), (0, 900), (2, 2_500), (1, 2_600)]
    counter = DecayedCounter(3, half_life)
    for item, ts in events:
        counter.observe(item, ts)
    now = 3_000
    expected = [sum(0.5 ** ((now - ts) / half_life) for i, ts in events if i == item) for item in range(3)]
    assert counter.values(now) == pytest.approx(expected)
    assert counter.top(3, now).tolist() == sorted(range(3), key=lambda i: -expected[i])


def test_counter_rescales_without_losing_the_ranking():
    counter = DecayedCounter(2, half_life_ms=1.0)
    counter.observe(0, 0)
    counter.observe(1, 400)
    counter.observe(1, 800)  # 2**800 would overflow past the rescale threshold
    counter.observe(0, 801)
    values = counter.values(801)
    assert np.isfinite(values).all()
    assert values[0] == pytest.approx(1.0 + 0.0) and values[1] == pytest.approx(0.5)


def test_counter_rejects_bad_half_life():
    with pytest.raises(ReplayConfigError):
        DecayedCounter(2, 0)


@settings(max_examples=50, deadline=None)
@given(
    st.lists(st.sampled_from([f"i{k}" for k in range(500)]), max_size=5, unique=True),
    st.lists(st.sampled_from([f"a{k}" for k in range(60)]), max_size=6),
    st.lists(st.sampled_from([f"t{k}" for k in range(20)]), max_size=6),
    st.integers(1, 700),
)
def test_candidates_are_distinct_exposed_first_and_sized(exposed, authors, tags, n_candidates):
    generator = CandidateGenerator(make_catalog(), CandidateConfig(n_candidates=n_candidates, n_popular=20,
                                                                   n_author=30, n_tag=30))
    for k in range(40):
        generator.observe(f"i{k % 7}", k)
    picked = generator.build("r", exposed, authors, tags, ts_ms=50)
    ids = generator.item_ids(picked)
    assert len(ids) == len(set(ids)) == min(max(n_candidates, len(exposed)), 500)
    assert ids[: len(exposed)] == list(exposed)


def test_sources_fill_their_quotas_in_order():
    catalog = make_catalog()
    generator = CandidateGenerator(catalog, CandidateConfig(n_candidates=100, n_popular=3, n_author=10, n_tag=0))
    for ts, item in enumerate(["i1"] * 4 + ["i2"] * 3 + ["i3"] * 2 + ["i4"]):
        generator.observe(item, ts)
    ids = generator.item_ids(generator.build("r", ["i0"], authors=["a7"], tags=[], ts_ms=10))
    assert ids[:4] == ["i0", "i1", "i2", "i3"]  # exposed, then the three most popular
    author_items = [i for i, item in catalog.items() if item.author_id == "a7"]  # 10 items
    assert set(ids[4:14]) == set(author_items)


def test_same_request_same_candidates_other_request_other_randoms():
    generator = CandidateGenerator(make_catalog(), CandidateConfig(n_candidates=50, n_popular=0, n_author=0, n_tag=0))
    first = generator.build("r1", ["i0"]).tolist()
    assert first == generator.build("r1", ["i0"]).tolist()
    assert first != generator.build("r2", ["i0"]).tolist()


def test_random_fill_is_roughly_uniform():
    generator = CandidateGenerator(make_catalog(100), CandidateConfig(n_candidates=10, n_popular=0, n_author=0,
                                                                      n_tag=0))
    counts = np.zeros(100)
    for r in range(2_000):
        counts[generator.build(f"r{r}", [])] += 1
    expected = 2_000 * 10 / 100
    # binomial sd ~ 13.4; a biased truncation would push low indices far above 200
    assert np.abs(counts - expected).max() < 6 * math.sqrt(expected)


def test_unknown_exposed_item_and_bad_config_raise():
    generator = CandidateGenerator(make_catalog(10))
    with pytest.raises(ValueError, match="not in"):
        generator.build("r", ["nope"])
    with pytest.raises(ReplayConfigError):
        CandidateConfig(n_popular=-1)
