"""``score-requests`` (key user_id): a pre-ranking request with its recalled candidates."""

from __future__ import annotations

from pydantic import Field, model_validator

from streams.base import Codec, Record, TopicSpec
from streams.types import Count, Id, TimestampMs

MAX_CANDIDATES = 5000
MAX_SCORE_ITEMS = 1000


class RequestContext(Record):
    tab: Count = Field(default=0, le=1000)
    hour: Count = Field(default=0, le=23)
    weekday: Count = Field(default=0, le=6)


class ScoreRequest(Record):
    request_id: Id
    user_id: Id
    ts_ms: TimestampMs
    context: RequestContext = RequestContext()
    candidates: list[Id] = Field(min_length=1, max_length=MAX_CANDIDATES)
    k: Count = Field(default=100, ge=1)
    score_items: list[Id] = Field(default_factory=list, max_length=MAX_SCORE_ITEMS)  # also report these candidates' scores

    @model_validator(mode="after")
    def _k_within_candidates(self) -> ScoreRequest:
        # k larger than the candidate list is not an error: the response holds every candidate.
        if self.k > len(self.candidates):
            object.__setattr__(self, "k", len(self.candidates))
        return self


TOPIC = TopicSpec("score-requests", retention_ms=3600 * 1000)
CODEC = Codec(ScoreRequest)
