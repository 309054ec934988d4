"""Record <-> model conversions (``funnel.convert``): round trips over generated values.

A training record goes through the joiner (model -> record), the topic (record -> bytes -> record)
and the trainer (record -> model); whatever went in must come out, ``nan`` teacher logits as
``null`` on the wire and ``nan`` again in the model.
"""

from __future__ import annotations

import math
from types import MappingProxyType

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from funnel.convert import (
    item_from_catalog,
    profile_fields,
    record_from_sample,
    sample_from_record,
    snapshot_from_user,
    user_from_snapshot,
)
from models.features import OBJECTIVES, ItemFeatures, RequestSample, UserFeatures
from streams import item_catalog, training_samples
from streams.item_catalog import CatalogItem
from streams.training_samples import TrainingSample

ids = st.text(min_size=1, max_size=12)
names = st.text(max_size=8)
id_tuples = st.lists(ids, max_size=5).map(tuple)
labels = st.sampled_from((-1, 0, 1))
logits = st.one_of(st.floats(allow_nan=False, allow_infinity=False), st.just(math.nan))

users = st.builds(
    UserFeatures, user_id=ids,
    profile=st.dictionaries(names, names, max_size=4).map(MappingProxyType),
    tab=st.integers(-5, 50), hour=st.integers(0, 23), weekday=st.integers(0, 6),
    history_items=id_tuples, history_authors=id_tuples, history_tags=id_tuples, session_items=id_tuples,
    session_length=st.integers(0, 10_000),
)
items = st.builds(ItemFeatures, item_id=ids, author_id=names, tags=id_tuples, duration_ms=st.integers(0, 10**9))


@st.composite
def samples(draw) -> RequestSample:
    candidates = tuple(draw(st.lists(items, min_size=1, max_size=6)))
    n = len(candidates)
    per_item = st.lists(labels, min_size=n, max_size=n).map(tuple)
    objectives = draw(st.lists(st.sampled_from(OBJECTIVES), unique=True))
    teacher = {o: tuple(draw(st.lists(logits, min_size=n, max_size=n))) for o in objectives}
    return RequestSample(
        request_id=draw(ids), ts_ms=draw(st.integers(0, 32503680000000)), user=draw(users), items=candidates,
        cascade=draw(per_item), click=draw(per_item), long_view=draw(per_item), like=draw(per_item),
        teacher_logits=MappingProxyType(teacher),
    )


def comparable(sample: RequestSample):
    """The sample as plain values, ``nan`` replaced by a marker (``nan != nan``)."""
    user = sample.user
    return (
        sample.request_id, sample.ts_ms,
        (user.user_id, dict(user.profile), user.tab, user.hour, user.weekday, user.history_items,
         user.history_authors, user.history_tags, user.session_items, user.session_length),
        sample.items, sample.cascade, sample.click, sample.long_view, sample.like,
        {o: tuple("nan" if math.isnan(x) else x for x in values) for o, values in sample.teacher_logits.items()},
    )


def assert_model_types(sample: RequestSample) -> None:
    """What the models expect: tuples and read-only mappings, never the record's lists."""
    assert isinstance(sample.items, tuple) and all(isinstance(i.tags, tuple) for i in sample.items)
    assert all(isinstance(getattr(sample, name), tuple) for name in ("cascade", "click", "long_view", "like"))
    assert isinstance(sample.user.profile, MappingProxyType) and isinstance(sample.user.history_items, tuple)
    assert isinstance(sample.teacher_logits, MappingProxyType)
    assert all(isinstance(v, tuple) for v in sample.teacher_logits.values())


@settings(max_examples=150, deadline=None)
@given(samples())
def test_sample_to_record_to_sample(sample):
    record = record_from_sample(sample)
    assert record.user_id == sample.user.user_id
    back = sample_from_record(record)
    assert comparable(back) == comparable(sample)
    assert_model_types(back)


@settings(max_examples=150, deadline=None)
@given(samples())
def test_sample_through_the_topic_bytes(sample):
    raw = training_samples.CODEC.encode(record_from_sample(sample))
    back = sample_from_record(training_samples.CODEC.decode(raw))
    assert comparable(back) == comparable(sample)


@settings(max_examples=150, deadline=None)
@given(samples())
def test_record_to_sample_to_record(sample):
    record = training_samples.CODEC.decode(training_samples.CODEC.encode(record_from_sample(sample)))
    assert record_from_sample(sample_from_record(record)) == record
    assert isinstance(record, TrainingSample)


@settings(max_examples=150, deadline=None)
@given(users)
def test_user_to_snapshot_to_user(user):
    snapshot = snapshot_from_user(user)
    assert user_from_snapshot(snapshot) == user
    assert snapshot_from_user(user_from_snapshot(snapshot)) == snapshot


@settings(max_examples=50, deadline=None)
@given(users)
def test_the_model_side_does_not_share_the_records_mutable_containers(user):
    snapshot = snapshot_from_user(user)
    model_side = user_from_snapshot(snapshot)
    snapshot.profile["added-later"] = "x"
    snapshot.history_items.append("added-later")
    assert "added-later" not in model_side.profile and "added-later" not in model_side.history_items
    assert model_side == user


@settings(max_examples=100, deadline=None)
@given(st.builds(CatalogItem, item_id=ids, author_id=ids, tags=st.lists(ids, max_size=5),
                 duration_ms=st.integers(0, 10**9), upload_ts_ms=st.none() | st.integers(0, 10**13)))
def test_catalog_item_to_item_features(record):
    record = item_catalog.CODEC.decode(item_catalog.CODEC.encode(record))
    item = item_from_catalog(record)
    assert item == ItemFeatures(record.item_id, record.author_id, tuple(record.tags), record.duration_ms)
    assert isinstance(item.tags, tuple)


@given(st.none() | st.dictionaries(names, names, max_size=4))
def test_profile_fields_is_a_read_only_copy(profile):
    fields = profile_fields(profile)
    assert dict(fields) == (profile or {}) and isinstance(fields, MappingProxyType)
    if profile is not None:
        profile["added-later"] = "x"
        assert "added-later" not in fields


# --- the training sample's bounds (issue 13) -------------------------------------------------

def _maximal_rank_scores(alphabet: str = "control", objectives: int = 16):
    """A rank-scores record at every bound: 5000 ranked items, 5000 other candidates, 16 distinct
    objective names of 32 characters, ids of 128 characters, a snapshot at every bound."""
    from streams.rank_scores import RankScores
    from tests.streams.maximal import ids, maximal_snapshot, text

    user_id = ids(1, alphabet, tag=9)[0]
    names = [text(j, 32, alphabet, 7) for j in range(objectives)]
    ranked = ids(5000, alphabet, tag=1)
    return RankScores(
        request_id=ids(1, alphabet, tag=8)[0], user_id=user_id, ts_ms=32503680000000,
        candidates=ids(5000, alphabet, tag=2),
        items=[{"item_id": item, "rank": 5000 - k, "logits": {o: -1.2345678901234567e-300 for o in names}}
               for k, item in enumerate(ranked)],
        user=maximal_snapshot(user_id, alphabet),
    )


def _join(record, features, impressions=()):
    """What the joiner does with a closed window (agents/serving.py emit)."""
    from funnel.labels import LabelConfig, build_request_sample

    snapshot = record.user
    user = user_from_snapshot(snapshot)
    sample = build_request_sample(record.request_id, record.ts_ms, user, features, record.items, impressions,
                                  LabelConfig(top_n=10, n_easy_negatives=20))
    return sample, record_from_sample(sample, snapshot)


@pytest.mark.parametrize("features", ["bare", "maximal"])
def test_a_maximal_rank_scores_record_makes_a_valid_training_sample_under_the_budget(features):
    """5000 ranked items + 1000 exposed-but-unranked items + 20 easy negatives: 6020 items, more
    than a sample may hold (the joiner's timer crashed the worker on it); with 16 distinct
    objectives and long ids, megabytes over the budget. The record keeps the first items that fit,
    ranked ones first in rank order, and counts the rest."""
    from funnel.labels import Feedback
    from streams.base import MAX_RECORD_BYTES
    from tests.streams.maximal import ids

    record = _maximal_rank_scores()
    exposed = ids(1000, tag=3)
    ids_all = [i.item_id for i in record.items] + list(record.candidates) + exposed
    if features == "bare":
        catalog = [ItemFeatures(i) for i in ids_all]
    else:  # every item at the catalog's bounds: an author and 64 tags of 128 characters
        tags = tuple(ids(64, tag=4))
        catalog = [ItemFeatures(i, ids(1, tag=5)[0], tags, 2**63 - 1) for i in ids_all]
    shown = [Feedback(item, ts_ms=record.ts_ms, position=k, click=1) for k, item in enumerate(exposed)]
    sample, out = _join(record, catalog, shown)
    assert len(sample.items) == 6020
    from streams.training_samples import MAX_SAMPLE_ITEMS
    raw = training_samples.CODEC.encode(out)
    assert len(raw) <= MAX_RECORD_BYTES
    back = training_samples.CODEC.decode(raw)
    assert isinstance(back, TrainingSample) and back == out
    kept = len(back.items)
    assert 0 < kept <= MAX_SAMPLE_ITEMS and back.truncated_items == 6020 - kept > 0
    by_rank = sorted(record.items, key=lambda i: i.rank)
    assert [i.item_id for i in back.items] == [i.item_id for i in by_rank][:kept]  # a prefix, in rank order
    assert back.cascade[:10] == [1] * 10 and len(back.teacher_logits) == 16
    assert all(len(values) == kept for values in back.teacher_logits.values())
    assert back.user == record.user


def test_a_large_sample_of_short_ids_is_not_truncated():
    """5000 ranked + 20 easy negatives of ordinary ids, 3 objectives: over the old 5000-item bound,
    well inside the budget: carried whole."""
    from streams.rank_scores import RankScores
    from streams.training_samples import UserSnapshot

    record = RankScores(
        request_id="r", user_id="u", ts_ms=5, candidates=[f"c{k}" for k in range(5000)],
        items=[{"item_id": f"i{k}", "rank": k, "logits": {"click": 0.1, "long_view": 0.2, "like": 0.3}}
               for k in range(5000)],
        user=UserSnapshot(user_id="u", history_items=["i1"]),
    )
    features = [ItemFeatures(f"i{k}", f"a{k % 9}", ("t1", "t2")) for k in range(5000)]
    sample, out = _join(record, features + [ItemFeatures(f"c{k}") for k in range(5000)])
    assert len(out.items) == len(sample.items) == 5020 and out.truncated_items == 0
    assert training_samples.CODEC.decode(training_samples.CODEC.encode(out)) == out


@settings(max_examples=60, deadline=None)
@given(samples(), st.integers(300, 3000))
def test_a_cut_sample_is_a_prefix_within_the_budget(sample, budget):
    """With a small budget (patched), every record fits it and is a prefix of the sample."""
    import funnel.convert as convert

    original = convert.MAX_SAMPLE_BYTES
    convert.MAX_SAMPLE_BYTES = budget + 2000  # the fixed part (ids, snapshot) needs room of its own
    try:
        record = record_from_sample(sample)
    finally:
        convert.MAX_SAMPLE_BYTES = original
    raw = training_samples.CODEC.encode(record)
    n = len(record.items)
    assert n >= 1 and record.truncated_items == len(sample.items) - n
    assert len(raw) <= budget + 2000 or n == 1
    back, whole = comparable(sample_from_record(record)), comparable(sample)
    assert back[3] == whole[3][:n] and all(b == w[:n] for b, w in zip(back[4:8], whole[4:8]))
    assert back[8] == {o: values[:n] for o, values in whole[8].items()}


def test_the_ranked_mode_learns_a_batch_through_the_topic_bytes_like_the_batch_itself():
    """What mode ``ranked`` needs (teacher logits, ``nan`` where unscored, one segment per
    request) survives the training-samples topic: the trainer's step is the in-process one."""
    from models.learner import StudentLearner
    from models.losses import StudentObjective
    from models.synthetic import SyntheticRequests
    from models.two_tower import TwoTowerConfig

    batch = SyntheticRequests(seed=5, n_users=20, n_items=60, items_per_request=7).batch(6)
    wired = [sample_from_record(training_samples.CODEC.decode(training_samples.CODEC.encode(record_from_sample(s))))
             for s in batch]
    config = TwoTowerConfig(embedding_dim=4, hidden_sizes=(8,), output_dim=8, min_count=1)
    direct, through = (StudentLearner(config, StudentObjective("ranked")) for _ in range(2))
    first, second = direct.learn_many(batch), through.learn_many(wired)
    assert first["listwise_kl"] > 0 and first == second
