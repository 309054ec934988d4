"""Loader for the official KuaiRand-Pure file layout.

A folder holds any number of ``log_standard_*.csv`` exposure logs, ``video_features_basic_pure.csv``,
``user_features_pure.csv`` and optionally ``user_history_before_4_25.csv``. Ids become strings
(``video_id`` -> ``item_id``), exposures are sorted by ``time_ms`` (stable, so repeated
``(user, video, time)`` rows stay as repeated exposures). Malformed rows are skipped and counted
in :attr:`replay.dataset.Dataset.report`.

>>> import tempfile, pathlib
>>> folder = pathlib.Path(tempfile.mkdtemp())
>>> _ = (folder / "log_standard_demo.csv").write_text(
...     "user_id,video_id,time_ms,is_click,long_view,is_like,play_time_ms,duration_ms,tab\\n"
...     "1,10,2000,1,0,0,500,9000,2\\n"
...     "1,11,1000,0,0,0,100,9000,2\\n"
...     "oops,11,1000,0,0,0,100,9000,2\\n")
>>> _ = (folder / "video_features_basic_pure.csv").write_text(
...     "video_id,author_id,video_duration,tag\\n10,5,9000.0,\\"3,4\\"\\n")
>>> data = load_kuairand(folder)
>>> [e.item_id for e in data.exposures], data.catalog["10"].tags, data.report.total_skipped()
(['11', '10'], ('3', '4'), 1)
"""

from __future__ import annotations

from pathlib import Path

from models.features import ItemFeatures
from replay.csvio import BadField, read_rows, split_ids, to_binary, to_int, to_int_or
from replay.dataset import Dataset, HistorySeed, LoadReport, complete_catalog
from replay.events import Exposure
from replay.exceptions import DatasetLayoutError

LOG_GLOB = "log_standard_*.csv"
ITEMS_FILE = "video_features_basic_pure.csv"
USERS_FILE = "user_features_pure.csv"
HISTORY_GLOB = "user_history_before_*.csv"


def is_kuairand_folder(folder: Path) -> bool:
    return folder.is_dir() and any(folder.glob(LOG_GLOB))


def load_kuairand(folder: str | Path) -> Dataset:
    """Read a KuaiRand-Pure folder into a :class:`~replay.dataset.Dataset`."""
    folder = Path(folder)
    logs = sorted(folder.glob(LOG_GLOB))
    if not logs:
        raise DatasetLayoutError(f"no {LOG_GLOB} file in {folder}")
    report = LoadReport(source=str(folder))
    exposures: list[Exposure] = []
    for log in logs:
        exposures.extend(read_log(log, report))
    exposures.sort(key=lambda e: e.ts_ms)
    catalog = read_items(folder / ITEMS_FILE, report) if (folder / ITEMS_FILE).exists() else {}
    if not catalog:
        report.notes.append(f"no {ITEMS_FILE}: items have no author or tags")
    profiles = read_profiles(folder / USERS_FILE, report) if (folder / USERS_FILE).exists() else {}
    seeds: dict[str, HistorySeed] = {}
    for history in sorted(folder.glob(HISTORY_GLOB)):
        seeds.update(read_history(history, report))
    frozen = tuple(exposures)
    return Dataset(complete_catalog(catalog, frozen, report), profiles, frozen, seeds, report)


def read_log(path: Path, report: LoadReport) -> list[Exposure]:
    table = path.name
    out: list[Exposure] = []
    for _, row in read_rows(path):
        if row is None:
            report.skip(table, "wrong field count")
            continue
        try:
            ts_ms = to_int(row["time_ms"])
            if ts_ms < 0:
                raise BadField("negative time_ms")
            out.append(
                Exposure(
                    user_id=str(to_int(row["user_id"])),
                    item_id=str(to_int(row["video_id"])),
                    ts_ms=ts_ms,
                    tab=to_int_or(row.get("tab", ""), 0),
                    click=to_binary(row["is_click"]),
                    long_view=to_binary(row["long_view"]),
                    like=to_binary(row.get("is_like", "") or "0"),
                    play_ms=max(0, to_int_or(row.get("play_time_ms", ""), 0)),
                    duration_ms=max(0, to_int_or(row.get("duration_ms", ""), 0)),
                )
            )
        except (BadField, KeyError) as error:
            report.skip(table, _reason(error))
    report.rows_read[table] = len(out)
    return out


def read_items(path: Path, report: LoadReport) -> dict[str, ItemFeatures]:
    table = path.name
    catalog: dict[str, ItemFeatures] = {}
    for _, row in read_rows(path):
        if row is None:
            report.skip(table, "wrong field count")
            continue
        try:
            item_id = str(to_int(row["video_id"]))
            author = row.get("author_id", "")
            catalog[item_id] = ItemFeatures(
                item_id=item_id,
                author_id=str(to_int(author)) if author else "",
                tags=split_ids(row.get("tag", ""), ","),
                duration_ms=max(0, to_int_or(row.get("video_duration", ""), 0)),
            )
        except (BadField, KeyError) as error:
            report.skip(table, _reason(error))
    report.rows_read[table] = len(catalog)
    return catalog


def read_profiles(path: Path, report: LoadReport) -> dict[str, dict[str, str]]:
    """Every column but ``user_id``, kept as the raw string (models decide how to embed them)."""
    table = path.name
    profiles: dict[str, dict[str, str]] = {}
    for _, row in read_rows(path):
        if row is None:
            report.skip(table, "wrong field count")
            continue
        try:
            user_id = str(to_int(row.pop("user_id")))
        except (BadField, KeyError) as error:
            report.skip(table, _reason(error))
            continue
        profiles[user_id] = row
    report.rows_read[table] = len(profiles)
    return profiles


def read_history(path: Path, report: LoadReport) -> dict[str, HistorySeed]:
    """``watch_seq`` (space-separated video ids, oldest first) seeds each user's history."""
    table = path.name
    seeds: dict[str, HistorySeed] = {}
    for _, row in read_rows(path):
        if row is None:
            report.skip(table, "wrong field count")
            continue
        try:
            user_id = str(to_int(row["user_id"]))
            items = tuple(str(to_int(v)) for v in row["watch_seq"].split())
            seeds[user_id] = HistorySeed(items, to_int_or(row.get("last_time_ms", ""), 0))
        except (BadField, KeyError) as error:
            report.skip(table, _reason(error))
    report.rows_read[table] = len(seeds)
    return seeds


def _reason(error: Exception) -> str:
    return f"missing column {error}" if isinstance(error, KeyError) else "bad value"
