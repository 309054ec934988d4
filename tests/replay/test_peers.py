"""The peers (Vowpal Wabbit, river LR-FTRL) as arms: they learn, deterministically, without touching
their inputs, score like their libraries do, and learn every logged exposure inside the funnel."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from bench.quality import comparisons
from funnel.history import UserHistory
from funnel.metrics import auc
from models.features import RequestSample
from replay.candidates import CandidateConfig
from replay.grouping import DEFAULT_GAP_MS, group_requests
from replay.offline import OfflineConfig, OfflineFunnel
from replay.peers import PeerFeatures, RiverFTRLArm, VowpalWabbitArm
from replay.synthetic import SyntheticConfig, SyntheticDataWarning, generate

pytest.importorskip("vowpalwabbit")

DAY_MS = 86_400_000
PEERS = {
    "vw": lambda catalog, seed=0: VowpalWabbitArm(catalog, bits=18, seed=seed),
    "river": lambda catalog, seed=0: RiverFTRLArm(catalog, check_every=0),
}


@pytest.fixture(scope="module")
def dataset():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SyntheticDataWarning)
        return generate(SyntheticConfig(n_users=400, n_items=300, n_authors=40, n_tags=20, days=4, seed=7))


@pytest.fixture(scope="module")
def stream(dataset):
    """``(user snapshot, catalog indices, sample)`` per request, in time order, as the funnel builds them."""
    index = {item_id: k for k, item_id in enumerate(dataset.catalog)}
    histories: dict[str, UserHistory] = {}
    out = []
    for request in group_requests(dataset.exposures, DEFAULT_GAP_MS):
        history = histories.setdefault(request.user_id, UserHistory(request.user_id))
        user = history.snapshot(request.ts_ms, request.tab)
        items = tuple(dataset.catalog[i] for i in request.item_ids)
        e = request.exposures
        sample = RequestSample(
            request.request_id, request.ts_ms, user, items, cascade=(0,) * len(items),
            click=tuple(x.click for x in e), long_view=tuple(x.long_view for x in e), like=tuple(x.like for x in e),
        )  # fmt: skip
        out.append((user, np.array([index[i] for i in request.item_ids]), sample))
        for exposure in e:
            history.observe(dataset.catalog[exposure.item_id], exposure.ts_ms)
    return out


def held_out_auc(arm, stream, train_share=0.7, learn=True) -> float:
    """Learn the first ``train_share`` of the requests, then score the rest without learning."""
    cut = int(train_share * len(stream))
    if learn:
        for _, _, sample in stream[:cut]:
            arm.learn([sample])
    labels, scores = [], []
    for user, indices, sample in stream[cut:]:
        scores.extend(arm.score(user, indices))
        labels.extend(sample.long_view)
    return auc(labels, scores)


@pytest.mark.parametrize("kind", sorted(PEERS))
def test_peer_learns_long_view_on_held_out_events(kind, dataset, stream):
    catalog = list(dataset.catalog.values())
    learned = held_out_auc(PEERS[kind](catalog), stream)
    untrained = held_out_auc(PEERS[kind](catalog), stream, learn=False)
    assert untrained == pytest.approx(0.5)  # a peer that does not learn scores every item alike
    assert learned > 0.6, learned  # chance is 0.5; ~1,400 held-out exposures: sd ~0.015


@pytest.mark.parametrize("kind", sorted(PEERS))
def test_peer_is_deterministic_with_a_seed(kind, dataset, stream):
    catalog = list(dataset.catalog.values())
    runs = []
    for _ in range(2):
        arm = PEERS[kind](catalog, seed=3)
        for _, _, sample in stream[:300]:
            arm.learn([sample])
        runs.append(np.concatenate([arm.score(user, np.arange(len(catalog))) for user, _, _ in stream[300:320]]))
    assert np.array_equal(runs[0], runs[1])
    assert np.std(runs[0]) > 0


@pytest.mark.parametrize("kind", sorted(PEERS))
def test_peer_does_not_mutate_its_inputs(kind, dataset, stream):
    catalog = list(dataset.catalog.values())
    catalog_before = repr(catalog)
    arm = PEERS[kind](catalog)
    part = stream[:50]
    before = [(repr(user), indices.copy(), repr(sample)) for user, indices, sample in part]
    for user, indices, sample in part:
        arm.score(user, indices)
        arm.learn([sample])
    assert repr(catalog) == catalog_before
    for (user, indices, sample), (user0, indices0, sample0) in zip(part, before):
        assert repr(user) == user0 and repr(sample) == sample0 and np.array_equal(indices, indices0)


def test_vw_batch_scoring_equals_workspace_predict(dataset, stream):
    catalog = list(dataset.catalog.values())
    arm = VowpalWabbitArm(catalog, bits=18)
    for _, _, sample in stream[:400]:
        arm.learn([sample])
    user = stream[400][0]
    indices = np.arange(0, len(catalog), 7)
    batch = arm.score(user, indices)
    one_by_one = [arm.score_text(user, catalog[i]) for i in indices]
    assert np.allclose(batch, one_by_one, rtol=0, atol=1e-6)
    assert arm.report()["exposures_learned"] == sum(len(s.items) for _, _, s in stream[:400])


def test_river_vectorised_scores_equal_predict_proba_one(dataset, stream):
    catalog = list(dataset.catalog.values())
    arm = RiverFTRLArm(catalog, check_every=1)
    for user, indices, sample in stream[:400]:
        arm.score(user, np.arange(0, len(catalog), 5))  # every request checked against river
        arm.learn([sample])
    report = arm.report()
    assert report["river_check_requests"] == 400
    assert report["river_check_max_abs_diff_proba"] < 1e-12
    user = next(u for u, _, _ in stream[400:] if len(u.history_items) > 20)
    item = next(i for i in catalog if i.author_id and len(i.tags) == 2)
    x = arm.features_of(user, item)
    # singles: user, tab, hour, 20 history items, item, author, 2 tags; crosses with the item: 1 + 2 + 20
    assert len(x) == (3 + 20 + 1 + 1 + 2) + (1 + 2 + 20) and set(x.values()) == {1.0}


def test_features_are_one_hot_tokens_shared_by_both_peers():
    from models.features import ItemFeatures, UserFeatures

    features = PeerFeatures(n_history=20)
    user = UserFeatures("7", tab=1, hour=3, history_items=tuple(str(i) for i in range(30)))
    tokens = features.user_tokens(user)
    assert tokens["h"] == tuple(str(i) for i in range(10, 30))  # the last 20, oldest first
    assert features.item_tokens(ItemFeatures("9", tags=("a b", "c|d")))["t"] == ("a_b", "c_d")


class FixedTeacher:
    """The fine ranker stand-in: logits from the item id; records the requests it learned and scored."""

    def __init__(self) -> None:
        self.learned = 0
        self.scored_items = 0

    def score_objectives(self, user, items):
        q = np.array([int(i.item_id) % 17 / 17 for i in items], dtype=np.float64)
        self.scored_items += len(items)
        return {"click": q, "long_view": q, "like": q}

    def learn_many(self, samples):
        self.learned += sum(len(s.items) for s in samples)
        return {}


def test_peers_in_the_funnel_learn_every_logged_exposure(dataset):
    start = dataset.exposures[0].ts_ms
    config = OfflineConfig(
        train_until_ms=start + 2 * DAY_MS, eval_from_ms=start + 3 * DAY_MS, max_requests=200, rank_k=20,
        consistency_every=2, consistency_ks=(20, 50), batch_requests=8, teacher_batch_requests=16,
        candidates=CandidateConfig(n_candidates=100, n_popular=20, n_author=10, n_tag=10),
    )  # fmt: skip
    catalog = list(dataset.catalog.values())
    peers = [PEERS["vw"](catalog), RiverFTRLArm(catalog, check_every=5)]
    teacher = FixedTeacher()
    report = OfflineFunnel(dataset, peers, teacher, config).run()
    sampling = report["sampling"]
    distinct = sum(len(set(r.item_ids)) for r in group_requests(dataset.exposures, config.request_gap_ms))
    assert distinct > 0.9 * len(dataset.exposures)
    assert sampling["prefit_requests"] > 0 and sampling["skipped_users_requests"] > 0  # both learned too
    for arm in peers:
        out = report["arms"][arm.name]
        # every exposure of the log from its start, pre-fit and unsampled users included (an item shown twice
        # in one request is one sample, its feedback the max): exactly what the teacher learned
        assert out["exposures_learned"] == distinct == teacher.learned
        assert out["requests_scored"] == sampling["replay_requests"]
        for key in ("auc_click", "auc_long_view", "gauc_click", "gauc_long_view", "consistency_recall_at_20",
                    "hit_rate_long_view_at_20"):  # fmt: skip
            assert math.isfinite(out[key]), key
        assert out["eval_exposures"] == report["teacher"]["eval_exposures"]
    assert report["arms"]["river_lr_ftrl"]["river_check_max_abs_diff_proba"] < 1e-12


def test_comparisons_name_the_best_peer():
    arms = {
        "student_impressions": {"auc_long_view": 0.74},
        "vowpal_wabbit": {"auc_long_view": 0.73},
        "river_lr_ftrl": {"auc_long_view": 0.72},
    }
    out = comparisons(arms, {"auc_long_view": 0.75})
    assert out["best_peer"] == "vowpal_wabbit"
    assert out["teacher_minus_best_peer_auc_long_view"] == pytest.approx(0.02)
    assert out["student_impressions_minus_best_peer_auc_long_view"] == pytest.approx(0.01)
