"""``score-responses`` (key user_id): the scorer's top-k, or an error naming what was wrong.

A response carries the user-feature snapshot the scorer used, so the fine ranker and the label
joiner train on exactly what was served, never on behaviour that happened later.
"""

from __future__ import annotations

from pydantic import Field, field_validator

from streams.base import Codec, Record, TopicSpec
from streams.training_samples import UserSnapshot, same_user
from streams.types import Count, Float, Id, Int, Str


class ScoredItem(Record):
    item_id: Id
    score: Float


class ScoreResponse(Record):
    request_id: Str = Field(max_length=256)
    user_id: Str = Field(max_length=256)
    items: list[ScoredItem] = Field(default_factory=list)
    model_version: Int = -1
    latency_ms: Float = Field(default=0.0, ge=0)
    cache_tiers: dict[Str, Count] = Field(default_factory=dict)
    unknown_items: Count = 0
    degraded: list[Str] = Field(default_factory=list)
    error: Str | None = None
    ts_ms: Count = 0
    item_scores: dict[Str, Float] = Field(default_factory=dict)  # for the request's score_items
    audit_candidates: list[Id] = Field(default_factory=list, max_length=5000)  # all candidates, 1 in N
    negatives: list[Id] = Field(default_factory=list, max_length=1000)  # sampled non-top-k candidates
    user: UserSnapshot | None = None  # the features the scorer used (feature logging, no leakage)

    _same_user = field_validator("user")(same_user)


TOPIC = TopicSpec("score-responses", retention_ms=3600 * 1000)
CODEC = Codec(ScoreResponse)
