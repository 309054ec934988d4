"""Typed errors of the wire layer. Each names where the bad bytes came from."""

from __future__ import annotations

from core.errors import PrerankError


class StreamError(PrerankError):
    """Base class for errors of the ``streams`` package."""


class RecordError(StreamError):
    """A record that cannot be decoded or does not validate.

    Carries the source so an agent can write a dead letter and an operator can find the record:

    >>> err = RecordError("missing field 'user_id'", topic="prerank.impressions", partition=2, offset=41)
    >>> str(err)
    "prerank.impressions[2]@41: missing field 'user_id'"
    """

    def __init__(
        self, reason: str, *, topic: str = "?", partition: int = -1, offset: int = -1
    ) -> None:
        self.reason = reason
        self.topic = topic
        self.partition = partition
        self.offset = offset
        super().__init__(f"{topic}[{partition}]@{offset}: {reason}")
