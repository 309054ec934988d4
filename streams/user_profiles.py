"""``user-profiles`` (compacted, key user_id): categorical profile fields as strings."""

from __future__ import annotations

from pydantic import Field

from streams.base import Codec, Record, TopicSpec
from streams.types import Id, Str


class UserProfile(Record):
    user_id: Id
    fields: dict[Str, Str] = Field(default_factory=dict, max_length=128)


TOPIC = TopicSpec("user-profiles", compacted=True)
CODEC = Codec(UserProfile)
