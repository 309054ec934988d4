"""Typed errors of the wire layer. Each names where the bad bytes came from."""

from __future__ import annotations

from core.errors import PrerankError

MAX_REASON_CHARS = 500
"""A reason is cut to this many characters: a hostile field name must not make a huge log line
or dead letter."""

KINDS = ("tombstone", "too_large", "invalid_encoding", "not_an_object", "schema_version", "invalid_record")
"""The closed set of :attr:`RecordError.kind`, for metric labels (the reason text is open)."""


class StreamError(PrerankError):
    """Base class for errors of the ``streams`` package."""


class RecordError(StreamError):
    """A record that cannot be decoded or does not validate.

    Carries the source so an agent can write a dead letter and an operator can find the record,
    and a ``kind`` from the closed set :data:`KINDS` (a metric label; the reason is free text,
    cut to :data:`MAX_REASON_CHARS`):

    >>> err = RecordError("missing field 'user_id'", topic="prerank.impressions", partition=2, offset=41)
    >>> str(err), err.kind
    ("prerank.impressions[2]@41: missing field 'user_id'", 'invalid_record')
    >>> len(RecordError("x" * 10**6).reason)
    500
    """

    def __init__(
        self, reason: str, *, topic: str = "?", partition: int = -1, offset: int = -1,
        kind: str = "invalid_record",
    ) -> None:
        if kind not in KINDS:
            raise ValueError(f"unknown RecordError kind {kind!r}, expected one of {KINDS}")
        if len(reason) > MAX_REASON_CHARS:
            reason = reason[: MAX_REASON_CHARS - 3] + "..."
        self.reason = reason
        self.topic = topic
        self.partition = partition
        self.offset = offset
        self.kind = kind
        super().__init__(f"{topic}[{partition}]@{offset}: {reason}")


class RecordTooLarge(StreamError):
    """A record the system is about to write encodes over the budget (``streams.budgets``): it
    could not be read back (every decoder refuses more than ``MAX_RECORD_BYTES``). Raised by
    :meth:`streams.base.Codec.encode`, before anything reaches the producer."""

    def __init__(self, record_type: str, size: int, limit: int) -> None:
        self.record_type = record_type
        self.size = size
        self.limit = limit
        super().__init__(f"{record_type} encodes to {size} bytes, over the budget of {limit}")
