"""Hypothesis strategies for hostile input: malformed records for every input topic and bodies
for ``POST /score``.

A case is a :class:`Hostile`: the bytes to send, the topic key and the mutation applied. Every
mutation of :data:`MUTATIONS` turns a valid record into one the codec must reject (so each case
must become exactly one dead letter per consuming agent). :func:`tricky_requests` draws score
requests that are valid but hostile (k larger than the candidates, unknown ids, duplicate
request ids, timestamps out of order or far in the future): each must get an answer.
"""

from __future__ import annotations

import json
import typing
from dataclasses import dataclass

from hypothesis import strategies as st

from streams.registry import TOPIC_MODULES

INPUT_TOPICS = ("item_catalog", "user_profiles", "score_requests", "rank_scores", "impressions", "training_samples")
#: The agents that decode each input topic (a bad impression is a dead letter for each of them).
CONSUMERS = {
    "item_catalog": ("catalog",), "user_profiles": ("profiles",), "score_requests": ("scorer",),
    "rank_scores": ("joiner",), "impressions": ("history", "joiner"), "training_samples": ("trainer",),
}
YEAR_3000_MS = 32_503_680_000_000
NOW_MS = 1_700_000_000_000

ids = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=12)
timestamps = st.integers(0, YEAR_3000_MS)
flags = st.integers(0, 1)


@dataclass(frozen=True)
class Hostile:
    topic: str
    mutation: str
    value: bytes | None
    key: bytes = b"hostile"


def _valid(topic: str) -> st.SearchStrategy[dict]:
    """Valid wire payloads (schema version included) for each input topic."""
    item = st.fixed_dictionaries({"item_id": ids, "logits": st.fixed_dictionaries({"click": st.floats(-50, 50)}),
                                  "rank": st.integers(0, 100)})
    samples = st.integers(1, 4).flatmap(lambda n: st.fixed_dictionaries({
        "request_id": ids, "user_id": ids, "ts_ms": timestamps, "user": st.fixed_dictionaries({"user_id": ids}),
        "items": st.lists(st.fixed_dictionaries({"item_id": ids}), min_size=n, max_size=n),
        "cascade": st.lists(flags, min_size=n, max_size=n), "click": st.lists(flags, min_size=n, max_size=n),
        "long_view": st.lists(flags, min_size=n, max_size=n), "like": st.lists(flags, min_size=n, max_size=n),
    }))
    payloads = {
        "item_catalog": st.fixed_dictionaries({"item_id": ids, "author_id": ids, "tags": st.lists(ids, max_size=3)}),
        "user_profiles": st.fixed_dictionaries({"user_id": ids, "fields": st.dictionaries(ids, ids, max_size=3)}),
        "score_requests": st.fixed_dictionaries({"request_id": ids, "user_id": ids, "ts_ms": timestamps,
                                                 "candidates": st.lists(ids, min_size=1, max_size=5)}),
        "rank_scores": st.fixed_dictionaries({"request_id": ids, "user_id": ids, "ts_ms": timestamps,
                                              "items": st.lists(item, min_size=1, max_size=3)}),
        "impressions": st.fixed_dictionaries({"request_id": ids, "user_id": ids, "item_id": ids, "ts_ms": timestamps}),
        "training_samples": samples,
    }
    return payloads[topic].map(lambda payload: {**payload, "v": 1})


def _record_type(topic: str):
    return TOPIC_MODULES[topic].CODEC.record_type


def _dumps(payload) -> bytes:
    return json.dumps(payload).encode()


def _wrong_type(topic: str, payload: dict, field: str) -> dict:
    annotation = _record_type(topic).model_fields[field].annotation
    # A dict is wrong for every field except dicts, and a nested list is wrong for those.
    wrong = [["not", "a", "dict"]] if typing.get_origin(annotation) is dict else {"not": ["a", "scalar"]}
    return {**payload, field: wrong}


def _huge_list(topic: str, payload: dict) -> dict:
    """One more element than a list field allows (e.g. 5001 candidates)."""
    for name, info in _record_type(topic).model_fields.items():
        limits = [getattr(m, "max_length", None) for m in info.metadata]
        limit = next((m for m in limits if m), None)
        if limit and isinstance(payload.get(name), list) and payload[name]:
            return {**payload, name: payload[name][:1] * (limit + 1)}
    return {**payload, "v": 2}  # no bounded list on this topic: an unknown schema version instead


@st.composite
def hostile_records(draw, topic: str) -> Hostile:
    """One malformed record for ``topic``: the codec must reject it."""
    payload = draw(_valid(topic))
    required = [n for n, f in _record_type(topic).model_fields.items() if f.is_required()]
    mutation = draw(st.sampled_from(MUTATIONS))
    if mutation == "tombstone" and topic == "item_catalog":
        mutation = "unknown_field"  # a keyed catalog tombstone is a valid deletion
    if mutation == "missing_field":
        field = draw(st.sampled_from(required))
        value = _dumps({k: v for k, v in payload.items() if k != field})
    elif mutation == "wrong_type":
        value = _dumps(_wrong_type(topic, payload, draw(st.sampled_from(sorted(set(payload) - {"v"})))))
    elif mutation == "non_utf8":
        raw = _dumps(payload)
        cut = draw(st.integers(0, len(raw)))
        value = raw[:cut] + draw(st.sampled_from([b"\xff", b"\xc3\x28", b"\xed\xa0\x80"])) + raw[cut:]
    elif mutation == "nan_or_infinite":
        token = draw(st.sampled_from(["NaN", "Infinity", "-Infinity", "1e999"]))
        field = "ts_ms" if topic != "rank_scores" else None
        if field is None:
            payload["items"][0]["logits"]["click"] = "@TOKEN@"
        else:
            payload[field] = "@TOKEN@"
        value = _dumps(payload).replace(b'"@TOKEN@"', token.encode())
    elif mutation == "truncated":
        raw = _dumps(payload)
        value = raw[: draw(st.integers(0, len(raw) - 1))]
    elif mutation == "not_an_object":
        value = _dumps(draw(st.one_of(st.lists(st.integers(), max_size=3), st.text(max_size=5), st.integers())))
    elif mutation == "unknown_field":
        value = _dumps({**payload, "injected": "<script>alert(1)</script>"})
    elif mutation == "wrong_schema_version":
        value = _dumps({**payload, "v": draw(st.sampled_from([0, 2, "1", None]))})
    elif mutation == "far_future_timestamp":
        value = _dumps({**payload, "ts_ms": YEAR_3000_MS + draw(st.integers(1, 10**15))} if "ts_ms" in payload
                       else {**payload, "v": 3})
    elif mutation == "huge_list":
        value = _dumps(_huge_list(topic, payload))
    else:  # tombstone: a null value where a record is expected
        value = None
    key = draw(st.one_of(st.just(b"hostile"), st.binary(min_size=1, max_size=8)))
    return Hostile(topic, mutation, value, key)


MUTATIONS = ("missing_field", "wrong_type", "non_utf8", "nan_or_infinite", "truncated", "not_an_object",
             "unknown_field", "wrong_schema_version", "far_future_timestamp", "huge_list", "tombstone")


def any_hostile_record() -> st.SearchStrategy[Hostile]:
    return st.sampled_from(INPUT_TOPICS).flatmap(hostile_records)


@st.composite
def tricky_requests(draw, request_id: str, known_items: int = 300) -> dict:
    """A valid score request with hostile content; the scorer must answer it."""
    n = draw(st.integers(1, 40))
    known = [f"i{i}" for i in draw(st.lists(st.integers(0, known_items - 1), min_size=n, max_size=n))]
    unknown = draw(st.lists(ids, max_size=5))
    return {
        "request_id": request_id, "user_id": draw(ids),
        "ts_ms": draw(st.sampled_from([0, NOW_MS, NOW_MS - 10**9, YEAR_3000_MS])),
        "candidates": known + unknown,  # duplicates included
        "k": draw(st.integers(1, 10**6)),
    }


@st.composite
def http_bodies(draw) -> tuple[str, bytes]:
    """A body for ``POST /score``: valid-but-tricky, malformed record, or arbitrary bytes/JSON."""
    kind = draw(st.sampled_from(["tricky", "hostile", "bytes", "json"]))
    if kind == "tricky":
        body = draw(tricky_requests(request_id=draw(ids)))
        return kind, json.dumps(body).encode()
    if kind == "hostile":
        case = draw(hostile_records("score_requests"))
        return f"hostile:{case.mutation}", case.value or b""
    if kind == "bytes":
        return kind, draw(st.binary(max_size=200))
    values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
                          lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                          max_leaves=12)
    return kind, json.dumps(draw(values)).encode()


def draw_examples(strategy: st.SearchStrategy, n: int) -> list:
    """``n`` examples of ``strategy``, deterministic, drawn by hypothesis's engine (no shrinking:
    the cases are judged in bulk after the worker processed them)."""
    from hypothesis import HealthCheck, Phase, given, settings

    found: list = []

    @settings(max_examples=n, database=None, derandomize=True, deadline=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(strategy)
    def collect(example) -> None:
        found.append(example)

    collect()
    return found


# --- issue 13: valid records at their bounds, and the other hardening classes ------------------
# Each builder returns the exact bytes to send (and what to expect), so a test can send them to a
# running worker and check it survives. The sizes are those the schemas accept (or just over).

def audited_request_id(prefix: str, audit_every: int = 20) -> str:
    """A request id the scorer audits (it ships the whole candidate set in its response)."""
    import zlib

    return next(f"{prefix}{n}" for n in range(10_000) if zlib.crc32(f"{prefix}{n}".encode()) % audit_every == 0)


def maximal_rank_scores(request_id: str, user_id: str, ts_ms: int, n_items: int = 5000,
                        n_objectives: int = 16) -> bytes:
    """A rank-scores record at the schema's maximum: 5000 ranked items (16 objectives each) and
    5000 more candidates, with the scorer's user snapshot; under the 4 MiB input limit. The joiner
    builds a training sample of more than 5000 items from it."""
    objectives = [f"obj{o:02d}" for o in range(n_objectives)]
    payload = {
        "request_id": request_id, "user_id": user_id, "ts_ms": ts_ms,
        "candidates": [f"cand-{j:05d}" for j in range(n_items)],
        "items": [{"item_id": f"rank-{j:05d}", "rank": j, "logits": {o: 0.5 for o in objectives}}
                  for j in range(n_items)],
        "user": {"user_id": user_id}, "v": 1,
    }
    return json.dumps(payload, separators=(",", ":")).encode()


def oversized_response_request(request_id: str, user_id: str, ts_ms: int, n: int = 5000, k: int = 1000) -> bytes:
    """A valid score request (5000 candidates of 125 non-ASCII characters, k = 1000) whose answer,
    if the request is audited, JSON-escapes to ~9 MB: more than the producer sends."""
    candidates = ["\U0001F600" * 120 + f"{j:05d}" for j in range(n)]
    payload = {"request_id": request_id, "user_id": user_id, "ts_ms": ts_ms, "candidates": candidates, "k": k, "v": 1}
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()


def over_the_input_limit(n_bytes: int = 7_000_000) -> bytes:
    """A JSON record larger than any decoder reads (4 MiB) but smaller than the broker takes."""
    return b'{"v":1,"pad":"' + b"x" * (n_bytes - 16) + b'"}'


def unknown_field_records(user_id: str, n: int, prefix: str = "injected") -> list[bytes]:
    """Small user-profile records, each with its own unknown field name: one series each if the
    dead-letter label came from the error's text."""
    return [json.dumps({"user_id": user_id, "fields": {}, f"{prefix}_{i}": 1, "v": 1}).encode() for i in range(n)]


def huge_field_name_record(user_id: str, n_chars: int = 1024 * 1024) -> bytes:
    """A 1 MiB unknown field name (under the input limit): a 1 MiB log line if reasons were logged whole."""
    return json.dumps({"user_id": user_id, "fields": {}, "f" * n_chars: 1, "v": 1}).encode()
