"""Constrained field types shared by the topic records.

Every scalar on the wire is strict (pydantic's strict mode, field by field): an int field takes a
JSON/msgpack integer only (not ``"3"``, ``" 3"``, ``3.0``, ``1e3`` or ``true``), a string field a
string only (not a number, a bool or msgpack bytes), a float field a number (an integer is a
number; a string or a bool is not), a bool field ``true``/``false`` only. Containers stay lax
(a list field takes a tuple when a record is built in Python); their elements are strict.

Build records from model-side values with plain Python scalars: a numpy integer is not an int
here (``funnel.convert`` casts).

>>> from pydantic import TypeAdapter, ValidationError
>>> TypeAdapter(Int).validate_python(3)
3
>>> for wrong in ("3", 3.0, True):
...     try:
...         TypeAdapter(Int).validate_python(wrong)
...     except ValidationError as error:
...         print(error.errors()[0]["type"])
int_type
int_type
int_type
>>> TypeAdapter(Float).validate_python(2)  # an integer is a number
2.0
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, Strict, StringConstraints

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1

Int = Annotated[int, Strict(), Field(ge=INT64_MIN, le=INT64_MAX)]
"""A strict 64-bit integer (msgpack cannot carry more; JSON may, so it is bounded here)."""

Count = Annotated[int, Strict(), Field(ge=0, le=INT64_MAX)]
"""A strict non-negative 64-bit integer (sizes, counts, durations, ranks)."""

Float = Annotated[float, Strict()]
"""A strict float: a JSON/msgpack number; finite unless the record allows otherwise."""

Bool = Annotated[bool, Strict()]

Str = Annotated[str, Strict()]
"""A strict string without a length bound (bounded types below are preferred on the wire)."""

MAX_ID_CHARS = 128
Id = Annotated[str, Strict(), StringConstraints(min_length=1, max_length=MAX_ID_CHARS, strip_whitespace=False)]
"""A user, item, author, tag or request id: a non-empty string (keys are strings on every topic)."""

Token = Annotated[str, Strict(), StringConstraints(max_length=MAX_ID_CHARS)]
"""An id that may be empty (an item without an author), as long as an :data:`Id`."""

MAX_NAME_CHARS = 32
Name = Annotated[str, Strict(), StringConstraints(min_length=1, max_length=MAX_NAME_CHARS)]
"""A short name: an objective of the fine ranker, a cache tier."""

MAX_PROFILE_KEY_CHARS, MAX_PROFILE_VALUE_CHARS = 64, 256
ProfileKey = Annotated[str, Strict(), StringConstraints(max_length=MAX_PROFILE_KEY_CHARS)]
ProfileValue = Annotated[str, Strict(), StringConstraints(max_length=MAX_PROFILE_VALUE_CHARS)]
"""A user-profile field: a categorical value kept as a string."""

TimestampMs = Annotated[int, Strict(), Field(ge=0, le=32503680000000)]
"""Epoch milliseconds, up to year 3000."""

Flag = Annotated[int, Strict(), Field(ge=0, le=1)]

Label = Annotated[int, Strict(), Field(ge=-1, le=1)]
"""A training label: -1 unknown, 0 or 1."""
