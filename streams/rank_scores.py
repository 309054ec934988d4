"""``rank-scores`` (key user_id): the fine ranker's per-objective logits for the items it ranked.

Bounds, so that the training sample the joiner builds from a record fits its own bounds
(``streams.training_samples``): at most :data:`MAX_RANKED_ITEMS` items (a request's candidates)
and as many candidates; objective names of 1 to 32 characters, at most 16 per item and at most
:data:`MAX_OBJECTIVES` distinct names in the whole record (each becomes one list of a training
sample's ``teacher_logits``, as long as the sample).
"""

from __future__ import annotations

from pydantic import Field, field_validator, model_validator

from streams.base import Codec, Record, TopicSpec
from streams.score_requests import MAX_CANDIDATES
from streams.training_samples import MAX_OBJECTIVES, MAX_RANKED_ITEMS, UserSnapshot, same_user
from streams.types import Count, Float, Id, Name, TimestampMs


class RankedItem(Record):
    item_id: Id
    logits: dict[Name, Float] = Field(min_length=1, max_length=MAX_OBJECTIVES)
    rank: Count


class RankScores(Record):
    request_id: Id
    user_id: Id
    ts_ms: TimestampMs
    candidates: list[Id] = Field(default_factory=list, max_length=MAX_CANDIDATES)
    items: list[RankedItem] = Field(min_length=1, max_length=MAX_RANKED_ITEMS)
    user: UserSnapshot | None = None  # forwarded from the scorer's response

    _same_user = field_validator("user")(same_user)

    @model_validator(mode="after")
    def _few_objectives(self) -> RankScores:
        names: set[str] = set()
        for item in self.items:
            names.update(item.logits)
        if len(names) > MAX_OBJECTIVES:
            raise ValueError(f"items name {len(names)} distinct objectives, at most {MAX_OBJECTIVES}")
        return self


TOPIC = TopicSpec("rank-scores")
CODEC = Codec(RankScores)
