"""Constrained field types shared by the topic records."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, StringConstraints

Id = Annotated[str, StringConstraints(min_length=1, max_length=128, strip_whitespace=False)]
"""A user, item, author, tag or request id: a non-empty string (keys are strings on every topic)."""

TimestampMs = Annotated[int, Field(ge=0, le=32503680000000)]
"""Epoch milliseconds, up to year 3000."""

Flag = Annotated[int, Field(ge=0, le=1)]
