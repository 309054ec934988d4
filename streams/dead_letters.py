"""``dead-letters`` (key: source topic): records no agent could process, with the reason.

The raw bytes are kept base64-encoded so a record can be inspected and replayed exactly.
"""

from __future__ import annotations

import base64

from pydantic import Field

from streams.base import Codec, Record, TopicSpec
from streams.exceptions import RecordError
from streams.types import Int, Str


class DeadLetter(Record):
    source_topic: Str
    partition: Int
    offset: Int
    reason: Str = Field(max_length=2000)
    agent: Str = ""
    key_b64: Str | None = None
    value_b64: Str | None = None

    @classmethod
    def from_error(
        cls, error: RecordError, key: bytes | None, value: bytes | None, agent: str = ""
    ) -> DeadLetter:
        return cls(
            source_topic=error.topic,
            partition=error.partition,
            offset=error.offset,
            reason=error.reason[:2000],
            agent=agent,
            key_b64=base64.b64encode(key).decode() if key is not None else None,
            value_b64=base64.b64encode(value).decode() if value is not None else None,
        )

    def value(self) -> bytes | None:
        return base64.b64decode(self.value_b64) if self.value_b64 is not None else None


TOPIC = TopicSpec("dead-letters", retention_ms=30 * 24 * 3600 * 1000)
CODEC = Codec(DeadLetter)
