"""Consistent keys (issue 13): a record whose user snapshot names another user than its ``user_id``
is refused with a reason naming the field; :func:`streams.base.check_key` compares a Kafka key
with the id the record says it is keyed by."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from streams import rank_scores, score_responses, training_samples
from streams.base import check_key
from streams.exceptions import RecordError

RANK_SCORES = {"request_id": "r", "user_id": "u1", "ts_ms": 5,
               "items": [{"item_id": "a", "rank": 0, "logits": {"click": 0.5}}]}
SAMPLE = {"request_id": "r", "user_id": "u1", "ts_ms": 5, "items": [{"item_id": "a"}], "cascade": [1],
          "click": [0], "long_view": [0], "like": [0]}
RESPONSE = {"request_id": "r", "user_id": "u1", "items": [{"item_id": "a", "score": 0.5}]}
CASES = [(rank_scores.CODEC, RANK_SCORES), (training_samples.CODEC, SAMPLE), (score_responses.CODEC, RESPONSE)]


def _raw(payload: dict, snapshot_user: str) -> bytes:
    return json.dumps({**payload, "user": {"user_id": snapshot_user}, "v": 1}).encode()


@pytest.mark.parametrize(("codec", "payload"), CASES, ids=["rank-scores", "training-samples", "score-responses"])
def test_a_snapshot_of_another_user_is_refused(codec, payload):
    assert codec.decode(_raw(payload, "u1")).user.user_id == "u1"
    with pytest.raises(RecordError) as caught:
        codec.decode(_raw(payload, "u2"), topic="prerank.x", partition=1, offset=3)
    assert (caught.value.topic, caught.value.partition, caught.value.offset) == ("prerank.x", 1, 3)
    assert caught.value.reason == "user: Value error, user.user_id differs from user_id"


@pytest.mark.parametrize(("codec", "payload"), CASES, ids=["rank-scores", "training-samples", "score-responses"])
def test_building_an_inconsistent_record_in_python_fails_too(codec, payload):
    record_type = codec.record_type
    with pytest.raises(ValueError, match="user.user_id differs from user_id"):
        record_type.model_validate({**payload, "user": {"user_id": "someone else"}})


@given(st.text(min_size=1, max_size=20), st.text(min_size=1, max_size=20))
def test_generated_snapshot_users_must_match(user_id, snapshot_user):
    raw = json.dumps({**RANK_SCORES, "user_id": user_id, "user": {"user_id": snapshot_user}, "v": 1}).encode()
    if user_id == snapshot_user:
        assert rank_scores.CODEC.decode(raw).user_id == user_id
    else:
        with pytest.raises(RecordError, match="user.user_id differs"):
            rank_scores.CODEC.decode(raw)


def test_check_key():
    assert check_key(b"u1", "u1") is None
    assert check_key("u1", "u1") is None  # a key a client already decoded
    assert check_key("ü".encode(), "ü") is None
    assert check_key(b"u2", "u1") == "key does not match user_id"
    assert check_key(b"i7", "i8", field="item_id") == "key does not match item_id"
    assert check_key(None, "u1") == "no key (expected user_id)"
    assert check_key(b"\xff", "u1") == "key is not UTF-8"
    assert check_key(b"u1 ", "u1") == "key does not match user_id"  # exact bytes, no stripping


@given(st.binary(max_size=12), st.text(min_size=1, max_size=12))
def test_check_key_is_none_exactly_for_the_utf8_of_the_id(key, expected):
    reason = check_key(key, expected)
    assert (reason is None) == (key == expected.encode())
    assert reason is None or len(reason) < 64  # a fixed, short reason: no id echoed
