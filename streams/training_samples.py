"""``training-samples`` (key user_id): one record per request, written by the label joiner.

Carries the user-feature snapshot as of the request (no later behaviour), the items the fine
ranker saw plus sampled easy negatives, their cascade labels, teacher logits (null where the
fine ranker did not score an item) and feedback (-1 where the item was not exposed).
"""

from __future__ import annotations

from pydantic import Field, model_validator

from streams.base import Codec, Record, TopicSpec
from streams.types import Id, TimestampMs

Label = int  # -1 unknown, 0, 1


class UserSnapshot(Record):
    user_id: Id
    profile: dict[str, str] = Field(default_factory=dict)
    tab: int = 0
    hour: int = Field(default=0, ge=0, le=23)
    weekday: int = Field(default=0, ge=0, le=6)
    history_items: list[str] = Field(default_factory=list, max_length=1000)
    history_authors: list[str] = Field(default_factory=list, max_length=1000)
    history_tags: list[str] = Field(default_factory=list, max_length=1000)
    session_items: list[str] = Field(default_factory=list, max_length=1000)
    session_length: int = Field(default=0, ge=0)


class SampleItem(Record):
    item_id: Id
    author_id: str = ""
    tags: list[str] = Field(default_factory=list, max_length=64)
    duration_ms: int = Field(default=0, ge=0)


class TrainingSample(Record):
    request_id: Id
    user_id: Id
    ts_ms: TimestampMs
    user: UserSnapshot
    items: list[SampleItem] = Field(min_length=1, max_length=5000)
    cascade: list[int] = Field(min_length=1)
    click: list[int]
    long_view: list[int]
    like: list[int]
    teacher_logits: dict[str, list[float | None]] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _aligned(self) -> TrainingSample:
        n = len(self.items)
        for name in ("cascade", "click", "long_view", "like"):
            labels = getattr(self, name)
            if len(labels) != n:
                raise ValueError(f"{name} has {len(labels)} labels for {n} items")
            if any(label not in (-1, 0, 1) for label in labels):
                raise ValueError(f"{name} labels must be -1, 0 or 1")
        for objective, logits in self.teacher_logits.items():
            if len(logits) != n:
                raise ValueError(f"teacher_logits[{objective}] has {len(logits)} values for {n} items")
        return self


TOPIC = TopicSpec("training-samples")
CODEC = Codec(TrainingSample)
