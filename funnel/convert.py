"""Pure conversions between wire records (``streams``) and model inputs (``models.features``).

Wire records are strict about types (``streams.types``: a numpy integer is not an int there), so
the model side's scalars are cast to plain Python ints here, where the two meet.

A training record keeps to its bounds (``streams.budgets``): :func:`record_from_sample` keeps the
sample's first items that fit (at most ``MAX_SAMPLE_ITEMS``, at most ``MAX_SAMPLE_BYTES`` encoded)
and says how many it dropped in ``truncated_items``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from types import MappingProxyType

from models.features import ItemFeatures, RequestSample, UserFeatures
from streams.item_catalog import CatalogItem
from streams.base import JSON_MAX_BYTES_PER_CHAR, json_size
from streams.training_samples import (
    MAX_SAMPLE_BYTES,
    MAX_SAMPLE_ITEMS,
    SNAPSHOT_MAX_BYTES,
    SampleItem,
    TrainingSample,
    UserSnapshot,
    item_bytes_bound,
    sample_fixed_bytes,
)


def _ints(values) -> list[int]:
    return [int(value) for value in values]


def item_from_catalog(item: CatalogItem) -> ItemFeatures:
    return ItemFeatures(item.item_id, item.author_id, tuple(item.tags), item.duration_ms)


def snapshot_from_user(user: UserFeatures) -> UserSnapshot:
    return UserSnapshot(
        user_id=user.user_id, profile=dict(user.profile), tab=int(user.tab), hour=int(user.hour),
        weekday=int(user.weekday), history_items=list(user.history_items),
        history_authors=list(user.history_authors), history_tags=list(user.history_tags),
        session_items=list(user.session_items), session_length=int(user.session_length),
    )


def user_from_snapshot(snapshot: UserSnapshot) -> UserFeatures:
    return UserFeatures(
        user_id=snapshot.user_id, profile=MappingProxyType(dict(snapshot.profile)),
        tab=snapshot.tab, hour=snapshot.hour, weekday=snapshot.weekday,
        history_items=tuple(snapshot.history_items), history_authors=tuple(snapshot.history_authors),
        history_tags=tuple(snapshot.history_tags), session_items=tuple(snapshot.session_items),
        session_length=snapshot.session_length,
    )


def _none_to_nan(values) -> tuple[float, ...]:
    return tuple(math.nan if value is None else float(value) for value in values)


def _nan_to_none(values) -> list[float | None]:
    return [None if math.isnan(value) else float(value) for value in values]


def sample_from_record(record: TrainingSample) -> RequestSample:
    return RequestSample(
        request_id=record.request_id, ts_ms=record.ts_ms, user=user_from_snapshot(record.user),
        items=tuple(ItemFeatures(i.item_id, i.author_id, tuple(i.tags), i.duration_ms) for i in record.items),
        cascade=tuple(record.cascade), click=tuple(record.click), long_view=tuple(record.long_view),
        like=tuple(record.like),
        teacher_logits=MappingProxyType(
            {objective: _none_to_nan(values) for objective, values in record.teacher_logits.items()}
        ),
    )


def items_within_budget(sample: RequestSample, snapshot: UserSnapshot) -> int:
    """How many of the sample's first items a training record can carry: at most
    ``MAX_SAMPLE_ITEMS``, and no more than fit ``MAX_SAMPLE_BYTES`` with ``snapshot``.

    First a bound with every character at the JSON worst case (one pass over string lengths); only
    when that does not fit, each item's strings measured.
    """
    items = sample.items[:MAX_SAMPLE_ITEMS]
    objectives = list(sample.teacher_logits)
    per_item = item_bytes_bound(0, len(objectives))
    chars = sum(len(i.item_id) + len(i.author_id) + sum(map(len, i.tags)) for i in items)
    strings = sum(2 + len(i.tags) for i in items)  # each with its quotes and a comma
    worst = (sample_fixed_bytes(SNAPSHOT_MAX_BYTES, objectives) + JSON_MAX_BYTES_PER_CHAR * chars
             + 3 * strings + len(items) * per_item)
    if worst <= MAX_SAMPLE_BYTES:
        return len(items)
    room = MAX_SAMPLE_BYTES - sample_fixed_bytes(json_size(snapshot.model_dump()), objectives)
    for kept, item in enumerate(items):
        room -= per_item + json_size([item.item_id, item.author_id, *item.tags])
        if room < 0:
            return max(kept, 1)  # one item always fits: the snapshot and an item are bounded far below
    return len(items)


def record_from_sample(sample: RequestSample, snapshot: UserSnapshot | None = None) -> TrainingSample:
    """The wire record of ``sample``; ``snapshot``, when the caller holds the user's snapshot
    already (the joiner does), is carried as it is instead of being rebuilt from ``sample.user``.

    A sample over the record's bounds is cut to its first items (the fine-ranked ones, in rank
    order, come first: the cascade's positives are kept), ``truncated_items`` counting the rest.
    """
    user = snapshot if snapshot is not None else snapshot_from_user(sample.user)
    n = items_within_budget(sample, user)
    return TrainingSample(
        request_id=sample.request_id, user_id=sample.user.user_id, ts_ms=int(sample.ts_ms), user=user,
        items=[SampleItem(item_id=i.item_id, author_id=i.author_id, tags=list(i.tags),
                          duration_ms=int(i.duration_ms)) for i in sample.items[:n]],
        cascade=_ints(sample.cascade[:n]), click=_ints(sample.click[:n]), long_view=_ints(sample.long_view[:n]),
        like=_ints(sample.like[:n]),
        teacher_logits={objective: _nan_to_none(values[:n]) for objective, values in sample.teacher_logits.items()},
        truncated_items=len(sample.items) - n,
    )


def profile_fields(profile: Mapping[str, str] | None) -> MappingProxyType:
    return MappingProxyType(dict(profile or {}))
