"""``item-catalog`` (compacted, key item_id): static item features, loaded once and updated rarely."""

from __future__ import annotations

from pydantic import Field

from streams.base import Codec, Record, TopicSpec
from streams.types import Count, Id, TimestampMs


class CatalogItem(Record):
    item_id: Id
    author_id: Id
    tags: list[Id] = Field(default_factory=list, max_length=64)
    duration_ms: Count = 0
    upload_ts_ms: TimestampMs | None = None


TOPIC = TopicSpec("item-catalog", compacted=True)
CODEC = Codec(CatalogItem)
