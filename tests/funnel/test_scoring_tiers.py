"""The scorer's vector tiers: the version's published vectors resident, the others computed once
per version; the LRU keeps the last vector put per id; blocks read back in order."""

from __future__ import annotations

import random

import numpy as np
import pytest

from funnel.scoring import Scorer, VectorLRU
from funnel.store import ModelStore
from models.features import ItemFeatures, UserFeatures
from models.served import ServedStudent
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


def test_scorer_tiers_give_the_published_and_the_computed_vectors():
    student = ServedStudent(TwoTowerStudent(TwoTowerConfig(embedding_dim=4, hidden_sizes=(8,), output_dim=6, min_count=1)))
    items = [ItemFeatures(f"i{k}", author_id=f"a{k % 3}", tags=("t",)) for k in range(10)]
    published = student.item_vectors(items[:6]).astype(np.float16)
    scorer = Scorer(ModelStore(FakeRedis(), "p"), lambda _: student, computed_items=4, audit_every=0)
    serving = scorer.install(1, student, [item.item_id for item in items[:6]], published)
    for item in items:
        scorer.catalog.put(item)
    ids = ["i0", "i7", "i1", "i9", "i1", "zz"]
    vectors, tiers, unknown = scorer._item_vectors(serving, ids)
    assert tiers == {"local": 3, "computed": 3} and unknown == 1
    expected = {i.item_id: v.astype(np.float32) for i, v in zip(items[:6], published)}
    computed = student.item_vectors([items[7], items[9], ItemFeatures("zz")])
    expected.update({"i7": computed[0], "i9": computed[1], "zz": computed[2]})
    np.testing.assert_array_equal(vectors, np.stack([expected[i] for i in ids]))
    again, tiers, _ = scorer._item_vectors(serving, ids)  # computed once: the version's LRU serves them now
    assert tiers == {"local": 6, "computed": 0}
    np.testing.assert_allclose(again, vectors, rtol=0, atol=0)
    response = scorer.score(ScoreRequest(request_id="r", user_id="u", ts_ms=0, candidates=ids, k=3), UserFeatures("u"))
    assert response.error is None and len(response.items) == 3
    scorer.install(2, student, [item.item_id for item in items[:6]], published)
    _, tiers, _ = scorer._item_vectors(scorer.serving, ids)  # a new version computes its own
    assert tiers == {"local": 3, "computed": 3}


class FakePipelineRedis(FakeRedis):
    """Enough of a client for ModelStore.publish: SET / ZADD at once, pipelines of them run at execute."""

    def __init__(self) -> None:
        super().__init__()
        self.ttl: dict[str, int] = {}
        self.zsets: dict[str, dict[str, float]] = {}

    def pipeline(self, transaction: bool = False):
        return FakePipeline(self)

    def set(self, key, value, ex=None):
        self.data[key] = value if isinstance(value, bytes) else str(value).encode()
        if ex is not None:
            self.ttl[key] = ex

    def zadd(self, key, mapping):
        self.zsets.setdefault(key, {}).update(mapping)

    def zrange(self, key, start, end):
        return list(self.zsets.get(key, {}))

    def exists(self, key):
        return int(key in self.data)

    def zrem(self, key, *members):
        for member in members:
            self.zsets.get(key, {}).pop(member, None)


class FakePipeline:
    def __init__(self, client: FakePipelineRedis) -> None:
        self.client, self.queued = client, []

    def set(self, key, value, ex=None):
        self.queued.append((key, value, ex))

    def execute(self):
        for key, value, ex in self.queued:
            self.client.set(key, value, ex)
        self.queued = []


def test_published_vectors_read_back_in_order_with_their_ttl():
    store = ModelStore(FakePipelineRedis(), "p")
    ids = [f"i{k}" for k in range(5000)]  # three blocks
    vectors = np.random.default_rng(0).normal(size=(5000, 8)).astype(np.float16)
    store.publish(3, b"weights", ids, vectors, {"created_at_ms": 1, "dtype": "float16", "dim": 8}, ttl_s=77)
    assert store.current_version() == 3 and store.weights(3) == b"weights"
    assert store.meta(3)["blocks"] == 3 and store.client.ttl[store.block_key(3, 2)] == 77
    read_ids, rows = store.version_vectors(3)
    assert read_ids == ids
    np.testing.assert_array_equal(rows, vectors)
    del store.client.data[store.block_key(3, 1)]  # a block expired: the version is not whole any more
    assert store.version_vectors(3) is None


def test_a_version_switch_keeps_serving_the_old_version_until_the_new_one_is_whole():
    """The scorer reads a new version completely before it swaps: a request between the two sees
    the old version's model and vectors, never one with the other's."""
    config = TwoTowerConfig(embedding_dim=4, hidden_sizes=(8,), output_dim=6, min_count=1)
    old, new = (ServedStudent(TwoTowerStudent(TwoTowerConfig(**{**config.__dict__, "seed": s}))) for s in (1, 2))
    items = [ItemFeatures(f"i{k}") for k in range(5)]
    store = ModelStore(FakePipelineRedis(), "p")
    models = {b"old": old, b"new": new}
    scorer = Scorer(store, models.__getitem__, audit_every=0)
    for version, name, model in ((1, b"old", old), (2, b"new", new)):
        store.publish(version, name, [i.item_id for i in items], model.item_vectors(items).astype(np.float16),
                      {"created_at_ms": version, "dtype": "float16", "dim": 6}, ttl_s=60)
        if version == 1:
            assert scorer.refresh() and scorer.version == 1
    del store.client.data[store.block_key(2, 0)]  # version 2 is current but not readable whole
    assert not scorer.refresh() and scorer.version == 1 and scorer.model is old
    request = ScoreRequest(request_id="r", user_id="u", ts_ms=0, candidates=[i.item_id for i in items], k=5)
    response = scorer.score(request, UserFeatures("u"))
    assert response.model_version == 1 and response.cache_tiers == {"local": 5, "computed": 0}
    expected = old.score(UserFeatures("u"), items)
    np.testing.assert_allclose(sorted(i.score for i in response.items), sorted(expected), atol=2e-3)


def test_a_scorer_without_a_model_picks_up_the_first_version_on_the_next_request():
    """No refresh pause while nothing is served: a request right after the first publish is answered."""
    student = ServedStudent(TwoTowerStudent(TwoTowerConfig(embedding_dim=4, hidden_sizes=(8,), output_dim=6, min_count=1)))
    store = ModelStore(FakeRedis(), "p")
    scorer = Scorer(store, lambda _: student, audit_every=0)
    request = ScoreRequest(request_id="r", user_id="u", ts_ms=0, candidates=["i0", "i1", "i2"], k=2)
    assert scorer.score(request, UserFeatures("u")).error == "no model version published yet"
    store.client.data.update({"p:current": b"1", store.version_key(1, "weights"): b"w", store.version_key(1, "meta"): b"{}"})
    response = scorer.score(request, UserFeatures("u"))  # no timer has run: the request reads it
    assert response.error is None and response.model_version == 1 and len(response.items) == 2


def test_a_response_ranks_the_top_k_and_samples_easy_negatives_outside_it():
    student = ServedStudent(TwoTowerStudent(TwoTowerConfig(embedding_dim=4, hidden_sizes=(8,), output_dim=6, min_count=1, seed=3)))
    items = [ItemFeatures(f"i{k}", author_id=f"a{k % 7}", tags=(f"t{k % 5}",)) for k in range(60)]
    scorer = Scorer(ModelStore(FakeRedis(), "p"), lambda _: student, easy_negatives=8, audit_every=0)
    scorer.install(1, student)
    for item in items:
        scorer.catalog.put(item)
    request = ScoreRequest(request_id="r7", user_id="u", ts_ms=0, candidates=[i.item_id for i in items], k=5)
    user = UserFeatures("u", history_items=("i3",))
    response = scorer.score(request, user)
    logits = student.logits_from_vectors(student.user_vector(user), student.item_vectors(items))
    order = np.argsort(-logits, kind="stable")
    assert [r.item_id for r in response.items] == [items[i].item_id for i in order[:5]]
    np.testing.assert_allclose([r.score for r in response.items], logits[order[:5]], rtol=1e-6)
    top = {r.item_id for r in response.items}
    assert len(response.negatives) == len(set(response.negatives)) == 8 and not top & set(response.negatives)
    position = {item_id: k for k, item_id in enumerate(request.candidates)}
    assert [position[n] for n in response.negatives] == sorted(position[n] for n in response.negatives)
    assert scorer.score(request, user).negatives == response.negatives  # seeded by the request id


# --- the response budget (issue 13) ----------------------------------------------------------

def _budget_scorer(**kwargs) -> Scorer:
    student = ServedStudent(TwoTowerStudent(TwoTowerConfig(embedding_dim=4, hidden_sizes=(8,), output_dim=6, min_count=1)))
    scorer = Scorer(ModelStore(FakeRedis(), "p"), lambda _: student, computed_items=0, **kwargs)
    scorer.install(1, student)
    return scorer


def _as_the_agent_sends(response, user: UserFeatures) -> bytes:
    """The agent adds the timing, the request time and the user snapshot, then encodes."""
    from funnel.convert import snapshot_from_user
    from streams.score_responses import CODEC

    return CODEC.encode(response.model_copy(update={"latency_ms": 12.5, "ts_ms": 2**40,
                                                    "user": snapshot_from_user(user)}))


@pytest.mark.parametrize(("alphabet", "score_items", "audit_fits"),
                         [("astral", 0, True), ("astral", 1000, False), ("control", 0, False), ("control", 1000, False)])
def test_a_maximal_audited_request_is_answered_within_the_budget(alphabet, score_items, audit_fits):
    """5000 candidates of 128 multi-byte characters, k = 1000, audited, a user at every bound: the
    response (~9 MB before, over the producer's limit: the scorer crashed) fits 4 MiB, with every
    candidate when they fit (astral characters, 4 bytes each: 5000 x 514 bytes) and without them,
    flagged, when they do not (with 1000 score items too, or control characters, 6 bytes each)."""
    from streams.base import MAX_RECORD_BYTES
    from streams.score_responses import CODEC
    from tests.streams.maximal import ids, maximal_user

    scorer = _budget_scorer(audit_every=1, max_k=1000)
    candidates = ids(5000, alphabet)
    user = maximal_user(ids(1, alphabet, tag=9)[0], alphabet)
    request = ScoreRequest(request_id=ids(1, alphabet, tag=8)[0], user_id=user.user_id, ts_ms=0,
                           candidates=candidates, k=1000, score_items=candidates[len(candidates) - score_items:])
    response = scorer.score(request, user)
    assert response.error is None and len(response.items) == 1000 and len(response.item_scores) == score_items
    raw = _as_the_agent_sends(response, user)
    assert len(raw) <= MAX_RECORD_BYTES
    back = CODEC.decode(raw)
    assert back.audit_candidates == (candidates if audit_fits else [])
    assert back.audit_dropped is not audit_fits
    assert [i.item_id for i in back.items] == [i.item_id for i in response.items]


def test_an_audited_request_of_short_ids_keeps_its_audit_list():
    scorer = _budget_scorer(audit_every=1)
    candidates = [f"item-{k:0>123}" for k in range(5000)]
    response = scorer.score(ScoreRequest(request_id="r", user_id="u", ts_ms=0, candidates=candidates, k=1000),
                            UserFeatures("u"))
    assert response.audit_candidates == candidates and not response.audit_dropped


def test_a_response_that_cannot_fit_is_refused_with_a_reason():
    """A scorer configured with max_k = 5000: 5000 items of 128 control characters (770 bytes each
    in JSON) cannot fit 4 MiB with a snapshot: an error response says why, instead of a crash."""
    from streams.score_responses import CODEC
    from tests.streams.maximal import ids

    scorer = _budget_scorer(audit_every=1, max_k=5000)
    request = ScoreRequest(request_id="r", user_id="u", ts_ms=0, candidates=ids(5000), k=5000)
    response = scorer.score(request, UserFeatures("u"))
    assert response.error == "response would exceed 4194304 bytes" and response.items == []
    assert response.model_version == 1
    assert CODEC.decode(_as_the_agent_sends(response, UserFeatures("u"))).error == response.error
    fits = scorer.score(request.model_copy(update={"k": 3000}), UserFeatures("u"))
    assert fits.error is None and len(fits.items) == 3000 and fits.audit_dropped


def test_easy_negatives_stay_within_the_response_bound():
    scorer = _budget_scorer(audit_every=0, easy_negatives=5000)
    request = ScoreRequest(request_id="r", user_id="u", ts_ms=0, candidates=[f"i{k}" for k in range(3000)], k=10)
    assert len(scorer.score(request, UserFeatures("u")).negatives) == 1000


def test_a_batch_is_answered_as_each_request_alone():
    """One user-tower pass for the batch changes no response: the same top-k, scores and negatives
    as scoring each request by itself; an invalid request in the batch gets its own error."""
    student = ServedStudent(TwoTowerStudent(TwoTowerConfig(embedding_dim=4, hidden_sizes=(8, 8), output_dim=6,
                                                           min_count=1, seed=5)))
    items = [ItemFeatures(f"i{k}", author_id=f"a{k % 7}", tags=(f"t{k % 5}",)) for k in range(40)]
    scorer = Scorer(ModelStore(FakeRedis(), "p"), lambda _: student, max_k=10, audit_every=0)
    scorer.install(1, student, [i.item_id for i in items[:30]], student.item_vectors(items[:30]).astype(np.float16))
    for item in items:
        scorer.catalog.put(item)
    rng = random.Random(2)
    requests = [ScoreRequest(request_id=f"r{n}", user_id=f"u{n}", ts_ms=0, k=rng.randrange(1, 8),
                             candidates=rng.sample([i.item_id for i in items], 25)) for n in range(6)]
    requests.insert(3, ScoreRequest(request_id="big", user_id="u", ts_ms=0, k=11, candidates=["i1"] * 20))
    users = [UserFeatures(r.user_id, history_items=(f"i{n}",), tab=n % 3) for n, r in enumerate(requests)]
    batch = scorer.score_many(requests, users)
    alone = [scorer.score(r, u) for r, u in zip(requests, users)]
    assert batch[3].error == alone[3].error == "k too large: 11 > 10"
    for together, single in zip(batch, alone):
        assert [i.item_id for i in together.items] == [i.item_id for i in single.items]
        np.testing.assert_allclose([i.score for i in together.items], [i.score for i in single.items], rtol=1e-5)
        assert together.negatives == single.negatives
    # both tiers exercised; alone, the vectors the batch computed come from the version's LRU
    assert sum(r.cache_tiers.get("computed", 0) for r in batch) > 0
    assert sum(r.cache_tiers.get("computed", 0) for r in alone) == 0
    assert all(seconds > 0 for seconds in scorer.stage_s.values())
