"""Loader for a generic interaction log, so users can bring their own data.

One CSV file with a header; one row per exposure. Columns (names configurable in
:class:`GenericLayout`):

=============  ========  ======================================================
column         required  meaning
=============  ========  ======================================================
``user_id``    yes       any string
``item_id``    yes       any string
``timestamp``  yes       epoch time, in ``timestamp_unit`` (``"ms"`` or ``"s"``)
``click``      one of    0/1
``long_view``  the       0/1
``like``       three     0/1
``play_ms``    no        play time in milliseconds
``tab``        no        integer page / surface id (default 0)
``author_id``  no        the item's author
``tags``       no        tags joined by ``tag_separator`` (default ``|``)
``duration_ms`` no       the item's duration in milliseconds
=============  ========  ======================================================

A missing feedback column means 0 for every row. The item catalog is built from the log
(first row that mentions an item wins). Profiles and history seeds are empty.

>>> import tempfile, pathlib
>>> path = pathlib.Path(tempfile.mkdtemp()) / "log.csv"
>>> _ = path.write_text("user_id,item_id,timestamp,click,author_id,tags\\n"
...                     "u,a,2,1,x,t1|t2\\nu,b,1,0,y,\\nu,b,zz,0,y,\\n")
>>> data = load_generic(path, GenericLayout(timestamp_unit="s"))
>>> [(e.item_id, e.ts_ms, e.click) for e in data.exposures]
[('b', 1000, 0), ('a', 2000, 1)]
>>> data.catalog["a"].tags, data.report.skipped
(('t1', 't2'), {'log.csv': {'bad value': 1}})
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from models.features import ItemFeatures
from replay.csvio import (
    BadField,
    header_of,
    read_rows,
    split_ids,
    to_binary,
    to_int,
    to_int_or,
)
from replay.dataset import Dataset, LoadReport
from replay.events import Exposure
from replay.exceptions import DatasetLayoutError

_UNITS = {"ms": 1, "s": 1000}


@dataclass(frozen=True)
class GenericLayout:
    """Column names and conventions of a generic interaction CSV."""

    user: str = "user_id"
    item: str = "item_id"
    timestamp: str = "timestamp"
    timestamp_unit: str = "ms"
    click: str = "click"
    long_view: str = "long_view"
    like: str = "like"
    play_ms: str = "play_ms"
    tab: str = "tab"
    author: str = "author_id"
    tags: str = "tags"
    tag_separator: str = "|"
    duration_ms: str = "duration_ms"

    def __post_init__(self) -> None:
        if self.timestamp_unit not in _UNITS:
            raise DatasetLayoutError(f"timestamp_unit must be one of {sorted(_UNITS)}, got {self.timestamp_unit!r}")


def load_generic(path: str | Path, layout: GenericLayout = GenericLayout()) -> Dataset:
    """Read one generic CSV log into a :class:`~replay.dataset.Dataset`."""
    path = Path(path)
    header = set(header_of(path))
    missing = {layout.user, layout.item, layout.timestamp} - header
    if missing:
        raise DatasetLayoutError(f"{path} lacks required columns {sorted(missing)}")
    feedback = [c for c in (layout.click, layout.long_view, layout.like) if c in header]
    if not feedback:
        raise DatasetLayoutError(
            f"{path} has none of the feedback columns {layout.click!r}, {layout.long_view!r}, {layout.like!r}"
        )
    report = LoadReport(source=str(path))
    scale = _UNITS[layout.timestamp_unit]
    exposures: list[Exposure] = []
    catalog: dict[str, ItemFeatures] = {}
    for _, row in read_rows(path):
        if row is None:
            report.skip(path.name, "wrong field count")
            continue
        try:
            user_id, item_id = row[layout.user].strip(), row[layout.item].strip()
            if not user_id or not item_id:
                raise BadField("empty id")
            ts_ms = to_int(row[layout.timestamp]) * scale
            if ts_ms < 0:
                raise BadField("negative timestamp")
            duration = max(0, to_int_or(row.get(layout.duration_ms, ""), 0))
            exposure = Exposure(
                user_id=user_id,
                item_id=item_id,
                ts_ms=ts_ms,
                tab=to_int_or(row.get(layout.tab, ""), 0),
                click=_label(row, layout.click),
                long_view=_label(row, layout.long_view),
                like=_label(row, layout.like),
                play_ms=max(0, to_int_or(row.get(layout.play_ms, ""), 0)),
                duration_ms=duration,
            )
        except BadField:
            report.skip(path.name, "bad value")
            continue
        exposures.append(exposure)
        if item_id not in catalog:
            catalog[item_id] = ItemFeatures(
                item_id,
                author_id=row.get(layout.author, "").strip(),
                tags=split_ids(row.get(layout.tags, ""), layout.tag_separator),
                duration_ms=duration,
            )
    exposures.sort(key=lambda e: e.ts_ms)
    report.rows_read[path.name] = len(exposures)
    return Dataset(catalog, {}, tuple(exposures), {}, report)


def _label(row: dict[str, str], column: str) -> int:
    text = row.get(column, "")
    return 0 if text == "" else to_binary(text)
