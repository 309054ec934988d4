"""``user-profiles`` (compacted, key user_id): categorical profile fields as strings.

A profile travels on: the scorer copies it into the user snapshot of every response of that user
(and so into rank-scores and training samples), so it is bounded well below a record's budget:
at most :data:`MAX_PROFILE_FIELDS` fields, names up to 64 and values up to 256 characters, at most
:data:`MAX_PROFILE_BYTES` of JSON (``streams.budgets``).
"""

from __future__ import annotations

from pydantic import Field

from streams.base import Codec, Record, TopicSpec, max_json_str
from streams.types import MAX_PROFILE_KEY_CHARS, MAX_PROFILE_VALUE_CHARS, Id, ProfileKey, ProfileValue

MAX_PROFILE_FIELDS = 128
MAX_PROFILE_BYTES = MAX_PROFILE_FIELDS * (max_json_str(MAX_PROFILE_KEY_CHARS) + max_json_str(MAX_PROFILE_VALUE_CHARS) + 2) + 2
"""The most bytes the ``fields`` object takes in JSON (~241 KiB): key, colon, value, comma each."""

Profile = dict[ProfileKey, ProfileValue]


class UserProfile(Record):
    user_id: Id
    fields: Profile = Field(default_factory=dict, max_length=MAX_PROFILE_FIELDS)


TOPIC = TopicSpec("user-profiles", compacted=True)
CODEC = Codec(UserProfile)
