"""Small helpers for tolerant CSV parsing: a bad field skips its row, never the file.

>>> to_int("12.0"), to_int("7")
(12, 7)
>>> split_ids("3,17", ",")
('3', '17')
>>> split_ids("", ",")
()
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path


class BadField(ValueError):
    """Raised by the converters below; loaders catch it and count the row as skipped."""


def to_int(text: str) -> int:
    """Parse an integer written as ``7`` or ``7.0`` (pandas-exported CSVs do the latter)."""
    try:
        return int(text)
    except ValueError:
        try:
            value = float(text)
        except ValueError:
            raise BadField(f"not a number: {text!r}") from None
        if value != value or value in (float("inf"), float("-inf")):
            raise BadField(f"not a finite number: {text!r}") from None
        return int(value)


def to_int_or(text: str, default: int) -> int:
    """Like :func:`to_int` but an empty field gives ``default``."""
    return default if text == "" else to_int(text)


def to_binary(text: str) -> int:
    """A 0/1 label; anything else is a bad field."""
    value = to_int(text)
    if value not in (0, 1):
        raise BadField(f"not a 0/1 label: {text!r}")
    return value


def split_ids(text: str, separator: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(separator) if part.strip())


def read_rows(path: Path) -> Iterator[tuple[int, dict[str, str] | None]]:
    """Yield ``(line_number, row)``; ``row`` is None when the line has the wrong field count."""
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle)
        try:
            header = next(reader)
        except StopIteration:
            return
        width = len(header)
        for fields in reader:
            if not fields:
                continue
            yield reader.line_num, dict(zip(header, fields)) if len(fields) == width else None


def header_of(path: Path) -> list[str]:
    with path.open(newline="", encoding="utf-8") as handle:
        return next(csv.reader(handle), [])
