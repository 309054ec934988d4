"""``training-samples`` (key user_id): one record per request, written by the label joiner.

Carries the user-feature snapshot as of the request (no later behaviour), the items the fine
ranker saw plus sampled easy negatives, their cascade labels, teacher logits (null where the
fine ranker did not score an item) and feedback (-1 where the item was not exposed).
"""

from __future__ import annotations

from pydantic import Field, ValidationInfo, field_validator, model_validator

from streams.base import Codec, Record, TopicSpec
from streams.types import Count, Float, Id, Int, Label, Str, TimestampMs


class UserSnapshot(Record):
    user_id: Id
    profile: dict[Str, Str] = Field(default_factory=dict)
    tab: Int = 0
    hour: Count = Field(default=0, le=23)
    weekday: Count = Field(default=0, le=6)
    history_items: list[Str] = Field(default_factory=list, max_length=1000)
    history_authors: list[Str] = Field(default_factory=list, max_length=1000)
    history_tags: list[Str] = Field(default_factory=list, max_length=1000)
    session_items: list[Str] = Field(default_factory=list, max_length=1000)
    session_length: Count = 0


def same_user(snapshot: UserSnapshot | None, info: ValidationInfo) -> UserSnapshot | None:
    """A record's user snapshot must be of the record's user (a field validator of ``user``,
    declared after ``user_id``): otherwise a sample would be keyed by one user and carry another's
    features. ``user_id`` failed on its own when absent from ``info.data``."""
    if snapshot is not None and "user_id" in info.data and snapshot.user_id != info.data["user_id"]:
        raise ValueError("user.user_id differs from user_id")
    return snapshot


class SampleItem(Record):
    item_id: Id
    author_id: Str = ""
    tags: list[Str] = Field(default_factory=list, max_length=64)
    duration_ms: Count = 0


class TrainingSample(Record):
    request_id: Id
    user_id: Id
    ts_ms: TimestampMs
    user: UserSnapshot
    items: list[SampleItem] = Field(min_length=1, max_length=5000)
    cascade: list[Label] = Field(min_length=1)
    click: list[Label]
    long_view: list[Label]
    like: list[Label]
    teacher_logits: dict[Str, list[Float | None]] = Field(default_factory=dict)

    _same_user = field_validator("user")(same_user)

    @model_validator(mode="after")
    def _aligned(self) -> TrainingSample:
        n = len(self.items)
        for name in ("cascade", "click", "long_view", "like"):
            labels = getattr(self, name)
            if len(labels) != n:
                raise ValueError(f"{name} has {len(labels)} labels for {n} items")
        for objective, logits in self.teacher_logits.items():
            if len(logits) != n:
                raise ValueError(f"teacher_logits[{objective}] has {len(logits)} values for {n} items")
        return self


TOPIC = TopicSpec("training-samples")
CODEC = Codec(TrainingSample)
