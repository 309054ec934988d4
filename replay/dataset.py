"""The in-memory dataset every replay reads: catalog, profiles, exposures, history seeds.

Loaders (:mod:`replay.kuairand`, :mod:`replay.generic`, :mod:`replay.synthetic`) all return a
:class:`Dataset`, and :func:`load_dataset` picks one from a folder or a file path.

>>> report = LoadReport(source="example")
>>> report.skip("log", "bad int")
>>> report.skip("log", "bad int")
>>> report.skipped
{'log': {'bad int': 2}}
>>> report.total_skipped()
2
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from models.features import ItemFeatures
from replay.events import Exposure


@dataclass(frozen=True, slots=True)
class HistorySeed:
    """A user's consumption before the replay starts: item ids oldest first."""

    item_ids: tuple[str, ...]
    last_ts_ms: int = 0


@dataclass
class LoadReport:
    """What a loader read and what it skipped (malformed rows are counted, never fatal)."""

    source: str
    synthetic: bool = False
    rows_read: dict[str, int] = field(default_factory=dict)
    skipped: dict[str, dict[str, int]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def skip(self, table: str, reason: str) -> None:
        per_table = self.skipped.setdefault(table, {})
        per_table[reason] = per_table.get(reason, 0) + 1

    def total_skipped(self) -> int:
        return sum(sum(reasons.values()) for reasons in self.skipped.values())

    def to_dict(self) -> dict:
        return {
            "source": self.source,
            "synthetic": self.synthetic,
            "rows_read": dict(self.rows_read),
            "skipped": {table: dict(reasons) for table, reasons in self.skipped.items()},
            "notes": list(self.notes),
        }


@dataclass(frozen=True)
class Dataset:
    """Everything a replay needs, in event-time order.

    Every item id that occurs in ``exposures`` has an entry in ``catalog`` (loaders add a
    bare :class:`~models.features.ItemFeatures` for items missing from the feature table).
    """

    catalog: Mapping[str, ItemFeatures]
    profiles: Mapping[str, Mapping[str, str]]
    exposures: tuple[Exposure, ...]
    history_seeds: Mapping[str, HistorySeed]
    report: LoadReport


def complete_catalog(
    catalog: dict[str, ItemFeatures], exposures: tuple[Exposure, ...], report: LoadReport
) -> dict[str, ItemFeatures]:
    """Add a bare item for every exposed item the feature table lacks, and note how many."""
    missing = 0
    for exposure in exposures:
        if exposure.item_id not in catalog:
            catalog[exposure.item_id] = ItemFeatures(exposure.item_id, duration_ms=exposure.duration_ms)
            missing += 1
    if missing:
        report.notes.append(f"{missing} exposed items had no feature row; added without author/tags")
    return catalog
