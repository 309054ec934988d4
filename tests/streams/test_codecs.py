"""Round trips and malformed input for every topic's codec."""

from __future__ import annotations

import json
import math

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.base import Codec
from streams.exceptions import RecordError
from streams.impressions import CODEC as IMPRESSIONS
from streams.impressions import Impression
from streams.rank_scores import CODEC as RANK_SCORES
from streams.rank_scores import RankScores
from streams.registry import ALL_TOPICS
from streams.score_requests import CODEC as REQUESTS
from streams.score_requests import MAX_CANDIDATES, ScoreRequest
from streams.training_samples import CODEC as SAMPLES

ids = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=20)
finite = st.floats(allow_nan=False, allow_infinity=False, width=32)


@st.composite
def impressions(draw):
    return Impression(
        request_id=draw(ids), user_id=draw(ids), item_id=draw(ids),
        ts_ms=draw(st.integers(0, 2**42)), position=draw(st.integers(0, 100)),
        click=draw(st.integers(0, 1)), long_view=draw(st.integers(0, 1)), like=draw(st.integers(0, 1)),
        play_ms=draw(st.integers(0, 10**7)), duration_ms=draw(st.integers(0, 10**7)),
    )


@st.composite
def rank_scores(draw):
    items = draw(st.lists(ids, min_size=1, max_size=10, unique=True))
    return RankScores(
        request_id=draw(ids), user_id=draw(ids), ts_ms=draw(st.integers(0, 2**42)),
        items=[{"item_id": item, "rank": rank, "logits": {"click": draw(finite)}}
               for rank, item in enumerate(items)],
    )


@given(impressions(), st.sampled_from(["json", "msgpack"]))
def test_impression_round_trip(record, fmt):
    codec = Codec(Impression, format=fmt)
    assert codec.decode(codec.encode(record)) == record


@given(rank_scores())
def test_rank_scores_round_trip(record):
    assert RANK_SCORES.decode(RANK_SCORES.encode(record)) == record


@given(st.binary(max_size=200))
@settings(max_examples=300)
def test_arbitrary_bytes_give_typed_error_or_record(raw):
    for codec in (IMPRESSIONS, RANK_SCORES, REQUESTS, SAMPLES):
        try:
            codec.decode(raw, topic="t", partition=1, offset=2)
        except RecordError as err:
            assert (err.topic, err.partition, err.offset) == ("t", 1, 2)


@given(st.dictionaries(st.text(max_size=10), st.one_of(st.none(), st.integers(), st.text(), finite), max_size=8))
def test_arbitrary_objects_give_typed_error(payload):
    raw = json.dumps({**payload, "v": 1}).encode()
    with pytest.raises(RecordError):
        IMPRESSIONS.decode(raw)


def _impression_payload(**changes):
    payload = {"v": 1, "request_id": "r", "user_id": "u", "item_id": "i", "ts_ms": 5}
    payload.update(changes)
    return json.dumps(payload).encode()


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"\xff\xfe", "invalid JSON"),
        (b"[1, 2]", "expected an object"),
        (_impression_payload(v=2), "schema version 2"),
        (_impression_payload(ts_ms="yesterday"), "ts_ms"),
        (_impression_payload(click=3), "click"),
        (_impression_payload(user_id=""), "user_id"),
        (_impression_payload(surprise=1), "surprise"),
        (b'{"v": 1, "request_id": "r", "user_id": "u", "item_id": "i", "ts_ms": NaN}', "NaN"),
        (None, "tombstone"),
    ],
)
def test_malformed_impressions_name_the_reason(raw, reason):
    with pytest.raises(RecordError, match=reason) as caught:
        IMPRESSIONS.decode(raw, topic="prerank.impressions", partition=3, offset=7)
    assert str(caught.value).startswith("prerank.impressions[3]@7: ")


@pytest.mark.parametrize(("literal", "reason"), [("1e999", "logits"), ("Infinity", "Infinity"), ("NaN", "NaN")])
def test_non_finite_logit_is_rejected(literal, reason):
    raw = ('{"v": 1, "request_id": "r", "user_id": "u", "ts_ms": 1, '
           '"items": [{"item_id": "i", "rank": 0, "logits": {"click": %s}}]}' % literal).encode()
    with pytest.raises(RecordError, match=reason):
        RANK_SCORES.decode(raw)


def test_request_bounds():
    base = {"request_id": "r", "user_id": "u", "ts_ms": 1}
    with pytest.raises(ValueError):
        ScoreRequest(**base, candidates=[])
    with pytest.raises(ValueError):
        ScoreRequest(**base, candidates=[str(i) for i in range(MAX_CANDIDATES + 1)])
    assert ScoreRequest(**base, candidates=["a", "b"], k=50).k == 2


def test_training_sample_labels_must_align():
    raw = {"v": 1, "request_id": "r", "user_id": "u", "ts_ms": 1, "user": {"user_id": "u"},
           "items": [{"item_id": "a"}, {"item_id": "b"}], "cascade": [1, 0], "click": [1],
           "long_view": [0, -1], "like": [0, -1]}
    with pytest.raises(RecordError, match="click has 1 labels for 2 items"):
        SAMPLES.decode(json.dumps(raw).encode())


def test_missing_teacher_logits_travel_as_null():
    raw = {"v": 1, "request_id": "r", "user_id": "u", "ts_ms": 1, "user": {"user_id": "u"},
           "items": [{"item_id": "a"}, {"item_id": "b"}], "cascade": [1, 0], "click": [1, -1],
           "long_view": [0, -1], "like": [0, -1], "teacher_logits": {"click": [0.5, None]}}
    record = SAMPLES.decode(SAMPLES.encode(SAMPLES.record_type.model_validate(
        {k: v for k, v in raw.items() if k != "v"})))
    assert record.teacher_logits["click"][1] is None
    assert math.isclose(record.teacher_logits["click"][0], 0.5)


def test_msgpack_payload_is_not_json():
    codec = Codec(Impression, format="msgpack")
    raw = msgpack.packb({"v": 1, "request_id": "r", "user_id": "u", "item_id": "i", "ts_ms": 1})
    assert codec.decode(raw).item_id == "i"
    with pytest.raises(RecordError):
        IMPRESSIONS.decode(raw)


def test_topic_declarations():
    names = [spec.name for spec in ALL_TOPICS]
    assert len(names) == len(set(names)) == 8
    compacted = {spec.name for spec in ALL_TOPICS if spec.compacted}
    assert compacted == {"item-catalog", "user-profiles"}
    for spec in ALL_TOPICS:
        configs = spec.configs(1000)
        assert configs["cleanup.policy"] == ("compact" if spec.compacted else "delete")


json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
              st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=5)),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=5), inner, max_size=3)),
    max_leaves=6,
)


@st.composite
def mutated_json(draw):
    """A valid record's JSON, then maybe one field replaced, dropped or added (the version too)."""
    codec, record = draw(st.sampled_from([
        (IMPRESSIONS, impressions()), (RANK_SCORES, rank_scores()),
    ]))
    payload = json.loads(codec.encode(draw(record)))
    action = draw(st.sampled_from(["keep", "replace", "drop", "add", "version"]))
    key = draw(st.sampled_from(sorted(payload)))
    if action == "version":
        payload["v"] = draw(st.one_of(st.integers(min_value=-2, max_value=3), st.just(1.0), st.just(True), json_values))
    elif action == "replace":
        payload[key] = draw(json_values)
    elif action == "drop":
        del payload[key]
    elif action == "add":
        payload[draw(st.text(max_size=6))] = draw(json_values)
    return codec, action, json.dumps(payload).encode()  # NaN and Infinity as bare tokens


@given(mutated_json())
@settings(max_examples=400)
def test_the_fast_json_path_accepts_only_what_the_general_path_accepts(case):
    codec, action, raw = case
    fast = codec._fast_json(raw)
    try:
        general = codec.decode_general(raw)
    except RecordError:
        general = None
    if fast is not None:
        assert fast == general and type(fast) is codec.record_type
        assert codec.encode(fast) == codec.encode(general)
    if action == "keep":
        assert fast is not None  # a valid record takes the fast path
