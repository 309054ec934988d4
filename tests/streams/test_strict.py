"""Strict types on the wire (issue 13): no string, float or bool stands in for an int, no number or
bytes for a string, and the schema version is exactly the int 1, in JSON and in msgpack.

Every rejection is a :class:`RecordError` with the source (topic, partition, offset) that names the
offending field. And every record the project writes still decodes under the strict rules.
"""

from __future__ import annotations

import json
from types import MappingProxyType

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from funnel.convert import record_from_sample, snapshot_from_user
from funnel.labels import LabelConfig, Ranked, build_request_sample
from funnel.scoring import Scorer
from funnel.store import ModelStore
from models.features import ItemFeatures, UserFeatures
from models.served import ServedStudent
from models.two_tower import TwoTowerConfig, TwoTowerStudent
from streams.base import Codec
from streams.exceptions import RecordError
from streams.registry import TOPIC_MODULES

# One valid wire payload per topic (schema version included); each decodes as it is.
VALID = {
    "item_catalog": {"item_id": "i", "author_id": "a", "tags": ["t"], "duration_ms": 5, "upload_ts_ms": 7},
    "user_profiles": {"user_id": "u", "fields": {"age": "30"}},
    "score_requests": {"request_id": "r", "user_id": "u", "ts_ms": 5, "k": 2, "candidates": ["a", "b", "c"],
                       "context": {"tab": 1, "hour": 2, "weekday": 3}, "score_items": ["a"]},
    "score_responses": {"request_id": "r", "user_id": "u", "items": [{"item_id": "a", "score": 0.5}],
                        "model_version": 3, "latency_ms": 1.5, "cache_tiers": {"local": 1}, "unknown_items": 0,
                        "ts_ms": 5, "item_scores": {"a": 0.5}, "negatives": ["b"],
                        "user": {"user_id": "u", "tab": 1, "hour": 2, "session_length": 1}},
    "rank_scores": {"request_id": "r", "user_id": "u", "ts_ms": 5, "candidates": ["a"],
                    "items": [{"item_id": "a", "rank": 0, "logits": {"click": 0.5}}], "user": {"user_id": "u"}},
    "impressions": {"request_id": "r", "user_id": "u", "item_id": "i", "ts_ms": 5, "position": 1, "tab": 0,
                    "click": 1, "long_view": 0, "like": 0, "play_ms": 10, "duration_ms": 20},
    "training_samples": {"request_id": "r", "user_id": "u", "ts_ms": 5, "user": {"user_id": "u", "hour": 3},
                         "items": [{"item_id": "a", "duration_ms": 4}], "cascade": [1], "click": [0],
                         "long_view": [-1], "like": [0], "teacher_logits": {"click": [0.5]}},
    "dead_letters": {"source_topic": "t", "partition": 1, "offset": 2, "reason": "why"},
}
# (topic, path to an int field) for every int field the payloads above carry
INT_FIELDS = [
    ("item_catalog", ("duration_ms",)), ("item_catalog", ("upload_ts_ms",)),
    ("score_requests", ("ts_ms",)), ("score_requests", ("k",)), ("score_requests", ("context", "tab")),
    ("score_requests", ("context", "hour")), ("score_requests", ("context", "weekday")),
    ("score_responses", ("model_version",)), ("score_responses", ("unknown_items",)),
    ("score_responses", ("ts_ms",)), ("score_responses", ("cache_tiers", "local")),
    ("score_responses", ("user", "tab")), ("score_responses", ("user", "session_length")),
    ("rank_scores", ("ts_ms",)), ("rank_scores", ("items", 0, "rank")),
    ("impressions", ("ts_ms",)), ("impressions", ("position",)), ("impressions", ("click",)),
    ("impressions", ("play_ms",)), ("impressions", ("duration_ms",)),
    ("training_samples", ("ts_ms",)), ("training_samples", ("cascade", 0)), ("training_samples", ("click", 0)),
    ("training_samples", ("user", "hour")), ("training_samples", ("items", 0, "duration_ms")),
    ("dead_letters", ("partition",)), ("dead_letters", ("offset",)),
]
STR_FIELDS = [
    ("item_catalog", ("item_id",)), ("item_catalog", ("tags", 0)), ("user_profiles", ("fields", "age")),
    ("score_requests", ("user_id",)), ("score_requests", ("candidates", 1)),
    ("score_responses", ("items", 0, "item_id")), ("score_responses", ("negatives", 0)),
    ("rank_scores", ("request_id",)), ("rank_scores", ("candidates", 0)),
    ("impressions", ("item_id",)), ("training_samples", ("items", 0, "item_id")),
    ("dead_letters", ("reason",)),
]
FLOAT_FIELDS = [
    ("score_responses", ("items", 0, "score")), ("score_responses", ("latency_ms",)),
    ("rank_scores", ("items", 0, "logits", "click")), ("training_samples", ("teacher_logits", "click", 0)),
]


def _codec(topic: str, fmt: str = "json") -> Codec:
    return Codec(TOPIC_MODULES[topic].CODEC.record_type, format=fmt)


def _payload(topic: str) -> dict:
    return {**json.loads(json.dumps(VALID[topic])), "v": 1}


def _replace(payload: dict, path: tuple, value) -> dict:
    node = payload
    for step in path[:-1]:
        node = node[step]
    node[path[-1]] = value
    return payload


def _raw(payload: dict, fmt: str) -> bytes:
    return msgpack.packb(payload, use_bin_type=True) if fmt == "msgpack" else json.dumps(payload).encode()


def _rejected(topic: str, payload: dict, fmt: str, field: str) -> RecordError:
    with pytest.raises(RecordError) as caught:
        _codec(topic, fmt).decode(_raw(payload, fmt), topic=f"prerank.{topic}", partition=4, offset=9)
    error = caught.value
    assert (error.topic, error.partition, error.offset) == (f"prerank.{topic}", 4, 9)
    assert field in error.reason, error.reason
    return error


@pytest.mark.parametrize("fmt", ["json", "msgpack"])
@pytest.mark.parametrize("topic", sorted(VALID))
def test_every_valid_payload_decodes(topic, fmt):
    record = _codec(topic, fmt).decode(_raw(_payload(topic), fmt))
    assert _codec(topic, fmt).decode(_codec(topic, fmt).encode(record)) == record


@pytest.mark.parametrize("fmt", ["json", "msgpack"])
@pytest.mark.parametrize(("topic", "path"), INT_FIELDS, ids=lambda v: ".".join(map(str, v)) if isinstance(v, tuple) else v)
def test_an_int_as_a_string_a_float_or_a_bool_is_rejected(topic, path, fmt):
    original = _payload(topic)
    node = original
    for step in path:
        node = node[step]
    assert isinstance(node, int) and not isinstance(node, bool)
    field = str(path[-1]) if not isinstance(path[-1], int) else str(path[-2])
    for wrong in (str(node), f" {node}", float(node), bool(node) if node in (0, 1) else True, [node]):
        _rejected(topic, _replace(_payload(topic), path, wrong), fmt, field)


@pytest.mark.parametrize("fmt", ["json", "msgpack"])
@pytest.mark.parametrize(("topic", "path"), STR_FIELDS, ids=lambda v: ".".join(map(str, v)) if isinstance(v, tuple) else v)
def test_a_string_as_a_number_a_bool_or_bytes_is_rejected(topic, path, fmt):
    field = str(path[-1]) if not isinstance(path[-1], int) else str(path[-2])
    wrongs = [7, 7.5, True] + ([b"bytes"] if fmt == "msgpack" else [])
    for wrong in wrongs:
        _rejected(topic, _replace(_payload(topic), path, wrong), fmt, field)


@pytest.mark.parametrize("fmt", ["json", "msgpack"])
@pytest.mark.parametrize(("topic", "path"), FLOAT_FIELDS, ids=lambda v: ".".join(map(str, v)) if isinstance(v, tuple) else v)
def test_a_float_as_a_string_or_a_bool_is_rejected_an_int_is_a_number(topic, path, fmt):
    field = str(path[-1]) if not isinstance(path[-1], int) else str(path[-2])
    for wrong in ("0.5", True):
        _rejected(topic, _replace(_payload(topic), path, wrong), fmt, field)
    record = _codec(topic, fmt).decode(_raw(_replace(_payload(topic), path, 2), fmt))  # a JSON number
    assert record is not None


@pytest.mark.parametrize("fmt", ["json", "msgpack"])
@pytest.mark.parametrize("version", [True, 1.0, "1", " 1", [1], None, 2, 0])
def test_the_schema_version_is_exactly_the_int_1(version, fmt):
    payload = {**_payload("impressions"), "v": version}
    with pytest.raises(RecordError, match="schema version"):
        _codec("impressions", fmt).decode(_raw(payload, fmt), topic="t", partition=0, offset=1)


def test_the_issue_examples_are_rejected():
    """``k`` = "3", " 3", true, 1e3; ``ts_ms`` as a string or a float; ``"v": true``."""
    codec = TOPIC_MODULES["score_requests"].CODEC
    base = '{"v": 1, "request_id": "r", "user_id": "u", "ts_ms": 5, "candidates": ["a"], "k": 1}'
    assert codec.decode(base.encode()).k == 1
    for literal, field in [('"k": "3"', "k"), ('"k": " 3"', "k"), ('"k": true', "k"), ('"k": 1e3', "k"),
                           ('"ts_ms": "5"', "ts_ms"), ('"ts_ms": 5.0', "ts_ms")]:
        name = literal.split(":")[0]
        raw = base.replace(f'{name}: {"1" if field == "k" else "5"}', literal).encode()
        assert literal in raw.decode()
        with pytest.raises(RecordError, match=field):
            codec.decode(raw)
    with pytest.raises(RecordError, match="schema version"):
        codec.decode(base.replace('"v": 1', '"v": true').encode())


ints = st.integers(0, 2**40)


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(INT_FIELDS), ints,
       st.sampled_from(["string", "padded", "float", "bool", "exponent"]), st.sampled_from(["json", "msgpack"]))
def test_generated_int_coercions_are_rejected(where, value, kind, fmt):
    topic, path = where
    wrong = {"string": str(value), "padded": f"{value} ", "float": float(value), "bool": bool(value % 2),
             "exponent": float(f"{value}e0")}[kind]
    field = str(path[-1]) if not isinstance(path[-1], int) else str(path[-2])
    _rejected(topic, _replace(_payload(topic), path, wrong), fmt, field)


@settings(max_examples=100, deadline=None)
@given(st.one_of(st.booleans(), st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=3), st.none()),
       st.sampled_from(["json", "msgpack"]))
def test_generated_schema_versions_other_than_the_int_1_are_rejected(version, fmt):
    payload = {**_payload("rank_scores"), "v": version}
    with pytest.raises(RecordError, match="schema version"):
        _codec("rank_scores", fmt).decode(_raw(payload, fmt))


def _scalar_schemas(schema, seen=None):
    """Every int/str/float/bool core schema reachable from ``schema`` (definitions included)."""
    seen = set() if seen is None else seen
    if isinstance(schema, dict):
        if id(schema) in seen:
            return
        seen.add(id(schema))
        if schema.get("type") in ("int", "str", "float", "bool"):
            yield schema
        for value in schema.values():
            yield from _scalar_schemas(value, seen)
    elif isinstance(schema, (list, tuple)):
        for value in schema:
            yield from _scalar_schemas(value, seen)


@pytest.mark.parametrize("topic", sorted(TOPIC_MODULES))
def test_every_scalar_of_every_record_is_strict(topic):
    """A field added later with a plain ``int`` or ``str`` would coerce again: this names it."""
    record_type = TOPIC_MODULES[topic].CODEC.record_type
    loose = [s for s in _scalar_schemas(record_type.__pydantic_core_schema__) if not s.get("strict")]
    assert loose == []


# --- what the project writes decodes strictly ------------------------------------------------

def _student():
    config = TwoTowerConfig(embedding_dim=4, hidden_sizes=(8,), output_dim=6, min_count=1)
    return ServedStudent(TwoTowerStudent(config))


class _FakeRedis:
    def get(self, key):
        return None

    def mget(self, keys):
        return [None] * len(keys)


def test_the_scorers_responses_decode_strictly():
    from streams.score_requests import ScoreRequest
    from streams.score_responses import CODEC

    student = _student()
    scorer = Scorer(ModelStore(_FakeRedis(), "p"), lambda _: student, easy_negatives=3, audit_every=1)
    scorer.install(4, student)
    request = ScoreRequest(request_id="r", user_id="u", ts_ms=9, candidates=[f"i{k}" for k in range(12)], k=4,
                           score_items=["i1"])
    user = UserFeatures("u", profile=MappingProxyType({"age": "3"}), tab=np.int64(2), hour=np.int64(4),
                        history_items=("i1",), session_length=np.int64(1))
    response = scorer.score(request, user)
    response = response.model_copy(update={"ts_ms": 9, "user": snapshot_from_user(user)})  # as the agent does
    assert response.error is None and response.audit_candidates
    assert CODEC.decode(CODEC.encode(response)) == response


def test_the_joiners_training_samples_decode_strictly():
    from streams.training_samples import CODEC

    user = UserFeatures("u", profile=MappingProxyType({"a": "b"}), tab=np.int64(1), hour=3, weekday=np.int64(2),
                        history_items=("x",), history_authors=("y",), session_length=2)
    items = [ItemFeatures(f"i{k}", f"a{k}", ("t",), duration_ms=np.int64(1000 * k)) for k in range(6)]
    sample = build_request_sample("r", np.int64(77), user, items, [Ranked("i0", 0, {"click": 1.0}),
                                                                   Ranked("i1", 1, {"click": np.float32(0.5)})],
                                  [], LabelConfig(top_n=1, n_easy_negatives=2))
    record = record_from_sample(sample)
    assert CODEC.decode(CODEC.encode(record)) == record
    assert type(record.ts_ms) is int and type(record.user.tab) is int
