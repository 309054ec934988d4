"""Size budgets (issue 13): every record the system writes fits 4 MiB, half the producer's limit;
the bounds by construction hold for records at every bound; inputs that would make an output too
big are refused on read."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams import budgets, dead_letters, item_catalog, rank_scores, score_requests, score_responses
from streams import training_samples, user_profiles
from streams.base import MAX_RECORD_BYTES, PRODUCER_MAX_REQUEST_BYTES, Codec
from streams.dead_letters import MAX_DEAD_LETTER_BYTES, MAX_VALUE_PREFIX, DeadLetter
from streams.exceptions import RecordError, RecordTooLarge
from streams.score_responses import RESPONSE_FIXED_MAX_BYTES, ScoreResponse, response_bytes_bound
from streams.training_samples import MAX_HISTORY, SNAPSHOT_MAX_BYTES, UserSnapshot
from streams.user_profiles import MAX_PROFILE_BYTES, MAX_PROFILE_FIELDS, UserProfile
from tests.streams.maximal import ALPHABETS, ids, maximal_profile, maximal_snapshot, text

REPO = Path(__file__).resolve().parents[2]


def test_the_budget_is_half_the_producers_limit():
    assert PRODUCER_MAX_REQUEST_BYTES >= 2 * MAX_RECORD_BYTES
    assert set(budgets.BUDGETS.values()) == {MAX_RECORD_BYTES}
    assert all(size < MAX_RECORD_BYTES for size in budgets.BY_CONSTRUCTION.values())


def test_the_agents_producer_limit_is_the_one_the_budget_assumes():
    """``producer_max_request_size`` in agents/app.py: the literal, or the constant itself."""
    tree = ast.parse((REPO / "agents" / "app.py").read_text())
    values = [kw.value for node in ast.walk(tree) if isinstance(node, ast.Call)
              for kw in node.keywords if kw.arg == "producer_max_request_size"]
    assert values
    for value in values:
        if isinstance(value, (ast.Name, ast.Attribute)):
            assert ast.unparse(value).endswith("PRODUCER_MAX_REQUEST_BYTES")
        else:
            assert eval(compile(ast.Expression(value), "app.py", "eval")) == PRODUCER_MAX_REQUEST_BYTES  # noqa: S307


# --- the user snapshot and the profile it copies ---------------------------------------------

@pytest.mark.parametrize("alphabet", sorted(ALPHABETS))
def test_a_maximal_snapshot_is_within_its_bound(alphabet):
    snapshot = maximal_snapshot(text(0, 128, alphabet), alphabet)
    raw = Codec(UserSnapshot).encode(snapshot)
    assert len(raw) - len(',"v":1') <= SNAPSHOT_MAX_BYTES < 1024 * 1024
    assert Codec(UserSnapshot).decode(raw) == snapshot


@pytest.mark.parametrize("alphabet", sorted(ALPHABETS))
def test_a_maximal_profile_is_within_its_bound(alphabet):
    record = UserProfile(user_id="u", fields=maximal_profile(alphabet))
    raw = user_profiles.CODEC.encode(record)
    assert len(json.dumps(record.fields, ensure_ascii=False, separators=(",", ":")).encode()) <= MAX_PROFILE_BYTES
    assert user_profiles.CODEC.decode(raw) == record


def test_a_profile_or_a_snapshot_over_a_bound_is_refused_on_read():
    """The issue's near-limit profile (fields of ~32 KiB: 4 MiB in all) made every response of its
    user ~11 MB; now each field is bounded and the profile fits every response."""
    def decode(payload):
        return user_profiles.CODEC.decode(json.dumps({**payload, "v": 1}).encode(), topic="p", partition=0, offset=1)

    assert decode({"user_id": "u", "fields": {"k" * 64: "v" * 256}}).fields
    for fields, where in [({"k" * 65: "v"}, "fields.kkkk"), ({"k": "v" * 257}, "fields.k"),
                          ({f"k{i}": "v" for i in range(MAX_PROFILE_FIELDS + 1)}, "fields"),
                          ({f"k{i}": "v" * 32_000 for i in range(128)}, "fields.k0")]:
        with pytest.raises(RecordError) as caught:
            decode({"user_id": "u", "fields": fields})
        assert caught.value.reason.startswith(where)
    for name in ("history_items", "history_authors", "history_tags", "session_items"):
        with pytest.raises(ValueError, match=name):
            UserSnapshot(user_id="u", **{name: ["i"] * (MAX_HISTORY + 1)})
        with pytest.raises(ValueError, match=name):
            UserSnapshot(user_id="u", **{name: ["i" * 129]})


# --- score responses -------------------------------------------------------------------------

def _maximal_response(alphabet: str, audit: int = 0) -> ScoreResponse:
    """Every field at its bound but ``items`` (1000, the default max_k) and the audit list."""
    user_id = text(0, 128, alphabet, 9)
    return ScoreResponse(
        request_id=text(1, 256, alphabet), user_id=user_id,
        items=[{"item_id": i, "score": -2.2250738585072014e-308} for i in ids(1000, alphabet, 1)],
        model_version=-(2**63), latency_ms=1.7976931348623157e308,
        cache_tiers={text(k, 32, alphabet, 2): 2**63 - 1 for k in range(8)}, unknown_items=2**63 - 1,
        degraded=[text(k, 256, alphabet, 3) for k in range(8)], error=text(0, 1024, alphabet, 4),
        ts_ms=2**63 - 1, item_scores={i: -1.2345678901234567e-300 for i in ids(1000, alphabet, 5)},
        audit_candidates=ids(audit, alphabet, 6), audit_dropped=True, negatives=ids(1000, alphabet, 7),
        user=maximal_snapshot(user_id, alphabet),
    )


@pytest.mark.parametrize("alphabet", sorted(ALPHABETS))
def test_a_maximal_response_without_audit_fits_by_construction(alphabet):
    """1000 items, 1000 item scores, 1000 negatives and a maximal profile and snapshot: under 4 MiB,
    and under the bound the scorer computes without looking at the ids."""
    response = _maximal_response(alphabet)
    raw = score_responses.CODEC.encode(response)
    assert len(raw) <= response_bytes_bound(["i"] * 1000, ["i"] * 1000, ["i"] * 1000, measure=False) <= MAX_RECORD_BYTES
    assert len(raw) <= response_bytes_bound([i.item_id for i in response.items], list(response.item_scores),
                                            response.negatives)
    assert score_responses.CODEC.decode(raw) == response


def test_the_response_bound_holds_for_a_response_with_an_audit_list():
    response = _maximal_response("astral", audit=1500)
    raw = score_responses.CODEC.encode(response)
    assert len(raw) <= response_bytes_bound([i.item_id for i in response.items], list(response.item_scores),
                                            response.negatives, response.audit_candidates)
    assert RESPONSE_FIXED_MAX_BYTES < 1024 * 1024


def test_a_response_over_a_bound_is_refused():
    for change in [{"error": "e" * 1025}, {"degraded": ["d"] * 9}, {"cache_tiers": {"t" * 33: 1}},
                   {"negatives": ["n"] * 1001}, {"item_scores": {f"i{k}": 0.0 for k in range(1001)}},
                   {"items": [{"item_id": "i", "score": 0.0}] * 5001}]:
        with pytest.raises(ValueError, match=next(iter(change))):
            ScoreResponse(request_id="r", user_id="u", **change)


# --- dead letters ----------------------------------------------------------------------------

def test_a_just_over_limit_record_becomes_a_dead_letter_within_the_budget():
    """A record just over the 4 MiB input limit made a ~9.3 MB letter the producer refused."""
    value = json.dumps({"v": 1, "user_id": "u", "fields": {"k": "ü" * (MAX_RECORD_BYTES // 2)}}, ensure_ascii=False).encode()
    assert MAX_RECORD_BYTES < len(value) < MAX_RECORD_BYTES + 64
    with pytest.raises(RecordError) as caught:
        user_profiles.CODEC.decode(value, topic="prerank.user-profiles", partition=2, offset=7)
    letter = DeadLetter.from_error(caught.value, b"u" * 5000, value, agent="profiles")
    raw = dead_letters.CODEC.encode(letter)
    assert len(raw) <= MAX_DEAD_LETTER_BYTES < MAX_RECORD_BYTES // 32
    back = dead_letters.CODEC.decode(raw)
    assert (back.source_topic, back.partition, back.offset) == ("prerank.user-profiles", 2, 7)
    assert back.reason.startswith("record of") and back.value_size == len(value) and back.value_truncated
    assert back.value() == value[:MAX_VALUE_PREFIX]
    assert back.key_size == 5000 and back.key_truncated and back.key() == b"u" * 1024


def test_a_small_record_is_kept_whole_in_its_dead_letter():
    with pytest.raises(RecordError) as caught:
        user_profiles.CODEC.decode(b"{oops", topic="t", partition=0, offset=1)
    letter = dead_letters.CODEC.decode(dead_letters.CODEC.encode(DeadLetter.from_error(caught.value, b"k", b"{oops")))
    assert letter.value() == b"{oops" and not letter.value_truncated and letter.value_size == 5
    assert letter.key() == b"k" and not letter.key_truncated
    tombstone = DeadLetter.from_error(caught.value, None, None)
    assert tombstone.value() is None and tombstone.value_size is None and tombstone.key_size is None


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 3 * MAX_VALUE_PREFIX), st.integers(0, 3000), st.text(max_size=3000))
def test_every_dead_letter_fits_its_bound(value_size, key_size, reason):
    error = RecordError(reason or "r", topic="\x00" * 300, partition=-(2**63), offset=2**63 - 1)
    letter = DeadLetter.from_error(error, b"\xff" * key_size, b"\x00" * value_size, agent="\x01" * 100)
    raw = dead_letters.CODEC.encode(letter)
    assert len(raw) <= MAX_DEAD_LETTER_BYTES
    assert letter.value_size == value_size and letter.value_truncated == (value_size > MAX_VALUE_PREFIX)


def test_a_maximal_dead_letter_fits_its_bound():
    letter = DeadLetter(source_topic="\x00" * 256, partition=-(2**63), offset=-(2**63), reason="\x00" * 2000,
                        agent="\x00" * 64, key_b64="A" * 1368, key_size=2**63 - 1, key_truncated=False,
                        value_b64="A" * 87384, value_size=2**63 - 1, value_truncated=False)
    assert len(dead_letters.CODEC.encode(letter)) <= MAX_DEAD_LETTER_BYTES


# --- rank-scores objective names, catalog, the encoder's guard ---------------------------------

def _rank_scores(items):
    return json.dumps({"v": 1, "request_id": "r", "user_id": "u", "ts_ms": 1, "items": items}).encode()


def test_rank_scores_bound_their_objective_names():
    """16 distinct names per item, all different, made a 13.5 MB training sample."""
    ok = [{"item_id": f"i{k}", "rank": k, "logits": {f"o{j}": 0.5 for j in range(16)}} for k in range(3)]
    assert len(rank_scores.CODEC.decode(_rank_scores(ok)).items) == 3
    spread = [{"item_id": f"i{k}", "rank": k, "logits": {f"o{k}-{j}": 0.5 for j in range(16)}} for k in range(2)]
    with pytest.raises(RecordError, match="32 distinct objectives, at most 16"):
        rank_scores.CODEC.decode(_rank_scores(spread))
    with pytest.raises(RecordError, match="items.0.logits"):
        rank_scores.CODEC.decode(_rank_scores([{"item_id": "i", "rank": 0, "logits": {"o" * 33: 0.5}}]))
    with pytest.raises(RecordError, match="items.0.logits"):
        rank_scores.CODEC.decode(_rank_scores([{"item_id": "i", "rank": 0, "logits": {"": 0.5}}]))


def test_training_samples_bound_their_objectives():
    payload = {"request_id": "r", "user_id": "u", "ts_ms": 1, "user": {"user_id": "u"}, "items": [{"item_id": "a"}],
               "cascade": [1], "click": [0], "long_view": [0], "like": [0],
               "teacher_logits": {f"o{j}": [0.5] for j in range(17)}}
    with pytest.raises(RecordError, match="teacher_logits"):
        training_samples.CODEC.decode(json.dumps({**payload, "v": 1}).encode())


def test_a_maximal_catalog_item_is_small():
    record = item_catalog.CatalogItem(item_id=ids(1)[0], author_id=ids(1, tag=1)[0], tags=ids(64, tag=2),
                                      duration_ms=2**63 - 1, upload_ts_ms=32503680000000)
    assert len(item_catalog.CODEC.encode(record)) < 52 * 1024


def test_the_encoder_refuses_a_record_over_the_budget():
    """A record the system would write over 4 MiB raises before the producer sees it."""
    request = score_requests.ScoreRequest(request_id="r", user_id="u", ts_ms=1, candidates=ids(5000),
                                          score_items=ids(1000, tag=1))
    with pytest.raises(RecordTooLarge, match="ScoreRequest encodes to 4[0-9]{6} bytes, over the budget of 4194304"):
        score_requests.CODEC.encode(request)
