"""``dead-letters`` (key: source topic): records no agent could process, with the reason.

A dead letter stores the record by reference: its topic, partition and offset (the record itself
stays on its topic for that topic's retention), the reason (at most 2000 characters), the sizes of
its key and value, and a bounded prefix of each, base64-encoded (:data:`MAX_VALUE_PREFIX` bytes of
the value, :data:`MAX_KEY_PREFIX` of the key), with a ``*_truncated`` flag when the prefix is not
the whole. A record just over the 4 MiB input limit would otherwise become a ~5.6 MB letter, and
a ~9 MB one with JSON's escapes: more than the producer sends. A letter encodes to at most
:data:`MAX_DEAD_LETTER_BYTES` (~101 KiB).

>>> letter = DeadLetter.from_error(RecordError("bad", topic="t", partition=0, offset=3), b"k", b"x" * 70_000)
>>> letter.value_size, letter.value_truncated, len(letter.value())
(70000, True, 65536)
"""

from __future__ import annotations

import base64
from typing import Annotated

from pydantic import Field, Strict, StringConstraints

from streams.base import Codec, Record, TopicSpec, json_keys_bytes, max_json_str
from streams.exceptions import RecordError
from streams.types import Bool, Count, Int

MAX_VALUE_PREFIX = 64 * 1024
MAX_KEY_PREFIX = 1024
MAX_REASON_CHARS = 2000
MAX_TOPIC_CHARS, MAX_AGENT_CHARS = 256, 64


def _b64_chars(size: int) -> int:
    return 4 * ((size + 2) // 3)


def _bounded(chars: int):
    return Annotated[str, Strict(), StringConstraints(max_length=chars)]


TopicName, Reason, AgentName = _bounded(MAX_TOPIC_CHARS), _bounded(MAX_REASON_CHARS), _bounded(MAX_AGENT_CHARS)
KeyPrefix, ValuePrefix = _bounded(_b64_chars(MAX_KEY_PREFIX)), _bounded(_b64_chars(MAX_VALUE_PREFIX))


class DeadLetter(Record):
    source_topic: TopicName
    partition: Int
    offset: Int
    reason: Reason
    agent: AgentName = ""
    key_b64: KeyPrefix | None = None  # the key's first bytes
    key_size: Count | None = None  # the whole key's length (None: no key)
    key_truncated: Bool = False
    value_b64: ValuePrefix | None = None  # the value's first bytes
    value_size: Count | None = None  # the whole value's length (None: a tombstone)
    value_truncated: Bool = False

    @classmethod
    def from_error(
        cls, error: RecordError, key: bytes | None, value: bytes | None, agent: str = ""
    ) -> DeadLetter:
        return cls(
            source_topic=error.topic[:MAX_TOPIC_CHARS],
            partition=int(error.partition),
            offset=int(error.offset),
            reason=error.reason[:MAX_REASON_CHARS],
            agent=agent[:MAX_AGENT_CHARS],
            key_b64=_prefix(key, MAX_KEY_PREFIX),
            key_size=len(key) if key is not None else None,
            key_truncated=key is not None and len(key) > MAX_KEY_PREFIX,
            value_b64=_prefix(value, MAX_VALUE_PREFIX),
            value_size=len(value) if value is not None else None,
            value_truncated=value is not None and len(value) > MAX_VALUE_PREFIX,
        )

    def value(self) -> bytes | None:
        """The value's bytes: the whole value unless ``value_truncated``, else its first
        :data:`MAX_VALUE_PREFIX` bytes (the record is at ``source_topic[partition]@offset``)."""
        return base64.b64decode(self.value_b64) if self.value_b64 is not None else None

    def key(self) -> bytes | None:
        return base64.b64decode(self.key_b64) if self.key_b64 is not None else None


def _prefix(raw: bytes | None, limit: int) -> str | None:
    return base64.b64encode(bytes(raw[:limit])).decode() if raw is not None else None


MAX_DEAD_LETTER_BYTES = (
    json_keys_bytes((*DeadLetter.model_fields, "v")) + max_json_str(MAX_TOPIC_CHARS) + 2 * 20
    + max_json_str(MAX_REASON_CHARS) + max_json_str(MAX_AGENT_CHARS)
    + _b64_chars(MAX_KEY_PREFIX) + 2 + _b64_chars(MAX_VALUE_PREFIX) + 2 + 2 * 20 + 2 * len("false") + 1
)
"""The most bytes a dead letter takes in JSON (base64 is ASCII, one byte a character)."""

TOPIC = TopicSpec("dead-letters", retention_ms=30 * 24 * 3600 * 1000)
CODEC = Codec(DeadLetter)
