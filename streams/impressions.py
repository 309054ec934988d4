"""``impressions`` (key user_id): one exposure with its feedback, from the app's event log."""

from __future__ import annotations

from pydantic import Field

from streams.base import Codec, Record, TopicSpec
from streams.types import Count, Flag, Id, TimestampMs


class Impression(Record):
    request_id: Id
    user_id: Id
    item_id: Id
    ts_ms: TimestampMs
    position: Count = 0
    tab: Count = Field(default=0, le=1000)
    click: Flag = 0
    long_view: Flag = 0
    like: Flag = 0
    play_ms: Count = 0
    duration_ms: Count = 0


TOPIC = TopicSpec("impressions")
CODEC = Codec(Impression)
