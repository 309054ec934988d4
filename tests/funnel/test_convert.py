"""Record <-> model conversions (``funnel.convert``): round trips over generated values.

A training record goes through the joiner (model -> record), the topic (record -> bytes -> record)
and the trainer (record -> model); whatever went in must come out, ``nan`` teacher logits as
``null`` on the wire and ``nan`` again in the model.
"""

from __future__ import annotations

import math
from types import MappingProxyType

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
