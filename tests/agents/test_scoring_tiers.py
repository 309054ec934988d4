"""The scorer's vector tiers: the LRU keeps the last vector put per id, Redis rows decode in order."""

from __future__ import annotations

import random

import numpy as np

from agents.scoring import Scorer, VectorLRU
from agents.store import ModelStore
from models.features import ItemFeatures, UserFeatures
from models.two_tower import TwoTowerConfig, TwoTowerStudent
from streams.score_requests import ScoreRequest


def test_lru_holds_the_last_vector_of_each_cached_id_and_respects_capacity():
    rng = random.Random(0)
    lru, last = VectorLRU(capacity=7), {}
    for step in range(400):
        ids = [f"i{rng.randrange(12)}" for _ in range(rng.randrange(1, 10))]
        if rng.random() < 0.5:
            lru.slots(ids)
            continue
        vectors = np.zeros((len(ids), 3), dtype=np.float32)
        for k, item in enumerate(ids):  # a repeated id carries the same vector within a call
            vectors[k] = [step, int(item[1:]), 1.0]
            last[item] = vectors[k]
        lru.put_many(ids, vectors)
        assert len(lru) <= 7
        if len(set(ids)) <= 7:  # a call that fits is fully cached afterwards
            assert (lru.slots(ids) >= 0).all()
        cached = [item for item in last if lru.slots([item])[0] >= 0]
        slots = lru.slots(cached)
        np.testing.assert_array_equal(lru.gather(slots), np.stack([last[i] for i in cached]))


class FakeRedis:
    """The two reads the scorer makes of vectors and the catalog."""

    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}

    def get(self, key):
        return self.data.get(key)

    def mget(self, keys):
        return [self.data.get(k) for k in keys]


def test_scorer_tiers_give_the_stored_and_the_computed_vectors():
    student = TwoTowerStudent(TwoTowerConfig(embedding_dim=4, hidden_sizes=(8,), output_dim=6, min_count=1))
    items = [ItemFeatures(f"i{k}", author_id=f"a{k % 3}", tags=("t",)) for k in range(10)]
    store = ModelStore(FakeRedis(), "p")
    published = student.item_vectors(items[:6]).astype(np.float16)
    store.client.data["p:current"] = b"1"
    for item, vector in zip(items[:6], published):
        store.client.data[store.vector_key(1, item.item_id)] = vector.tobytes()
    scorer = Scorer(store, lambda _: student, lru_items=4, audit_every=0)
    scorer.model, scorer.version, scorer.catalog = student, 1, {i.item_id: i for i in items}
    ids = ["i0", "i7", "i1", "i9", "i1", "zz"]
    vectors, tiers, unknown = scorer._item_vectors(ids)
    assert tiers == {"local": 0, "redis": 3, "computed": 3} and unknown == 1
    expected = {i.item_id: v.astype(np.float32) for i, v in zip(items[:6], published)}
    computed = student.item_vectors([items[7], items[9], ItemFeatures("zz")])
    expected.update({"i7": computed[0], "i9": computed[1], "zz": computed[2]})
    np.testing.assert_array_equal(vectors, np.stack([expected[i] for i in ids]))
    again, tiers, _ = scorer._item_vectors(ids)  # the LRU (4 slots) now serves some of them
    assert tiers["local"] > 0 and tiers["local"] + tiers["redis"] + tiers["computed"] == len(ids)
    np.testing.assert_allclose(again, vectors, rtol=0, atol=0)
    response = scorer.score(ScoreRequest(request_id="r", user_id="u", ts_ms=0, candidates=ids, k=3), UserFeatures("u"))
    assert response.error is None and len(response.items) == 3
