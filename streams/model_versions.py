"""``model-versions``: announces each published model version (the Redis keys hold the data)."""

from __future__ import annotations

from pydantic import Field

from streams.base import Codec, Record, TopicSpec
from streams.types import TimestampMs


class ModelVersion(Record):
    version: int = Field(ge=1)
    created_at_ms: TimestampMs
    n_items: int = Field(ge=0)
    weights_key: str
    vectors_prefix: str
    dtype: str = "float16"
    samples_learned: int = Field(default=0, ge=0)


TOPIC = TopicSpec("model-versions", partitions=1)
CODEC = Codec(ModelVersion)
