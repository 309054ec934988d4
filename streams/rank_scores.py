"""``rank-scores`` (key user_id): the fine ranker's per-objective logits for the items it ranked."""

from __future__ import annotations

from pydantic import Field, field_validator

from streams.base import Codec, Record, TopicSpec
from streams.training_samples import UserSnapshot, same_user
from streams.types import Count, Float, Id, Str, TimestampMs


class RankedItem(Record):
    item_id: Id
    logits: dict[Str, Float] = Field(min_length=1, max_length=16)
    rank: Count


class RankScores(Record):
    request_id: Id
    user_id: Id
    ts_ms: TimestampMs
    candidates: list[Id] = Field(default_factory=list, max_length=5000)
    items: list[RankedItem] = Field(min_length=1, max_length=5000)
    user: UserSnapshot | None = None  # forwarded from the scorer's response

    _same_user = field_validator("user")(same_user)


TOPIC = TopicSpec("rank-scores")
CODEC = Codec(RankScores)
