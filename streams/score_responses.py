"""``score-responses`` (key user_id): the scorer's top-k, or an error naming what was wrong.

A response carries the user-feature snapshot the scorer used, so the fine ranker and the label
joiner train on exactly what was served, never on behaviour that happened later.

Budget (``streams.budgets``): a response encodes to at most :data:`MAX_RESPONSE_BYTES`. Every
field but the id lists is bounded by construction (the snapshot to
``training_samples.SNAPSHOT_MAX_BYTES``); :func:`response_bytes_bound` adds what the lists hold.
The scorer (``funnel.scoring``) leaves the audit list out (``audit_dropped``) when only it does not
fit, and answers with an error ("response would exceed N bytes") when the rest does not.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated

from pydantic import Field, Strict, StringConstraints, field_validator

from streams.base import MAX_RECORD_BYTES, Codec, Record, TopicSpec, json_keys_bytes, json_size, max_json_str
from streams.score_requests import MAX_CANDIDATES, MAX_SCORE_ITEMS
from streams.training_samples import (
    FLOAT_JSON_BYTES,
    INT_JSON_BYTES,
    SNAPSHOT_MAX_BYTES,
    UserSnapshot,
    same_user,
)
from streams.types import MAX_ID_CHARS, MAX_NAME_CHARS, Bool, Count, Float, Id, Int, Name

MAX_RESPONSE_BYTES = MAX_RECORD_BYTES
MAX_NEGATIVES = 1000
MAX_NOTES, MAX_NOTE_CHARS, MAX_ERROR_CHARS, MAX_ECHOED_ID_CHARS = 8, 256, 1024, 256

Note = Annotated[str, Strict(), StringConstraints(max_length=MAX_NOTE_CHARS)]
ErrorText = Annotated[str, Strict(), StringConstraints(max_length=MAX_ERROR_CHARS)]
EchoedId = Annotated[str, Strict(), StringConstraints(max_length=MAX_ECHOED_ID_CHARS)]


class ScoredItem(Record):
    item_id: Id
    score: Float


class ScoreResponse(Record):
    request_id: EchoedId
    user_id: EchoedId
    items: list[ScoredItem] = Field(default_factory=list, max_length=MAX_CANDIDATES)
    model_version: Int = -1
    latency_ms: Float = Field(default=0.0, ge=0)
    cache_tiers: dict[Name, Count] = Field(default_factory=dict, max_length=MAX_NOTES)
    unknown_items: Count = 0
    degraded: list[Note] = Field(default_factory=list, max_length=MAX_NOTES)
    error: ErrorText | None = None
    ts_ms: Count = 0
    item_scores: dict[Id, Float] = Field(default_factory=dict, max_length=MAX_SCORE_ITEMS)  # the request's score_items
    audit_candidates: list[Id] = Field(default_factory=list, max_length=MAX_CANDIDATES)  # all candidates, 1 in N
    audit_dropped: Bool = False  # an audited request whose candidates did not fit the budget
    negatives: list[Id] = Field(default_factory=list, max_length=MAX_NEGATIVES)  # sampled non-top-k candidates
    user: UserSnapshot | None = None  # the features the scorer used (feature logging, no leakage)

    _same_user = field_validator("user")(same_user)


_ID_JSON = max_json_str(MAX_ID_CHARS)
RESPONSE_FIXED_MAX_BYTES = (
    json_keys_bytes((*ScoreResponse.model_fields, "v")) + 2 * max_json_str(MAX_ECHOED_ID_CHARS) + 4 * INT_JSON_BYTES
    + FLOAT_JSON_BYTES + 2 + MAX_NOTES * (max_json_str(MAX_NAME_CHARS) + INT_JSON_BYTES + 2)
    + 2 + MAX_NOTES * (max_json_str(MAX_NOTE_CHARS) + 1) + max_json_str(MAX_ERROR_CHARS) + len("false")
    + 4 * 2 + SNAPSHOT_MAX_BYTES
)
"""Everything of a response but its id lists' entries, at its bound (~867 KiB, the snapshot included)."""
SCORED_ITEM_OVERHEAD = json_keys_bytes(ScoredItem.model_fields) + FLOAT_JSON_BYTES + 1
ITEM_SCORE_OVERHEAD = FLOAT_JSON_BYTES + 2


def _ids_bytes(ids: Sequence[str], measure: bool) -> int:
    """JSON bytes of the ids as list entries (a comma each): measured, or at the worst case."""
    if not ids:
        return 0
    return json_size(list(ids)) + len(ids) if measure else len(ids) * (_ID_JSON + 1)


def response_bytes_bound(
    items: Sequence[str], scored: Sequence[str] = (), negatives: Sequence[str] = (), audit: Sequence[str] = (),
    *, measure: bool = True,
) -> int:
    """An upper bound of the JSON of a response whose ``items``, ``item_scores``, ``negatives`` and
    ``audit_candidates`` hold these ids, every other field (the snapshot too) at its bound.

    With ``measure=False`` each id counts as the longest one (no pass over the strings): enough to
    see that a response of 1000 items, 1000 item scores and 20 negatives always fits.

    >>> response_bytes_bound(["a"] * 1000, ["a"] * 1000, ["a"] * 20, measure=False) < MAX_RESPONSE_BYTES
    True
    >>> response_bytes_bound([], audit=["\\x00" * 128] * 5000) > MAX_RESPONSE_BYTES
    True
    """
    return (
        RESPONSE_FIXED_MAX_BYTES + _ids_bytes(items, measure) + len(items) * SCORED_ITEM_OVERHEAD
        + _ids_bytes(scored, measure) + len(scored) * ITEM_SCORE_OVERHEAD
        + _ids_bytes(negatives, measure) + _ids_bytes(audit, measure)
    )


TOPIC = TopicSpec("score-responses", retention_ms=3600 * 1000)
CODEC = Codec(ScoreResponse)
