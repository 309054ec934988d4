"""Pure conversions between wire records (``streams``) and model inputs (``models.features``).

Wire records are strict about types (``streams.types``: a numpy integer is not an int there), so
the model side's scalars are cast to plain Python ints here, where the two meet.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from types import MappingProxyType

from models.features import ItemFeatures, RequestSample, UserFeatures
from streams.item_catalog import CatalogItem
from streams.training_samples import SampleItem, TrainingSample, UserSnapshot


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


def record_from_sample(sample: RequestSample, snapshot: UserSnapshot | None = None) -> TrainingSample:
    """The wire record of ``sample``; ``snapshot``, when the caller holds the user's snapshot
    already (the joiner does), is carried as it is instead of being rebuilt from ``sample.user``."""
    return TrainingSample(
        request_id=sample.request_id, user_id=sample.user.user_id, ts_ms=int(sample.ts_ms),
        user=snapshot if snapshot is not None else snapshot_from_user(sample.user),
        items=[SampleItem(item_id=i.item_id, author_id=i.author_id, tags=list(i.tags),
                          duration_ms=int(i.duration_ms)) for i in sample.items],
        cascade=_ints(sample.cascade), click=_ints(sample.click), long_view=_ints(sample.long_view),
        like=_ints(sample.like),
        teacher_logits={objective: _nan_to_none(values) for objective, values in sample.teacher_logits.items()},
    )


def profile_fields(profile: Mapping[str, str] | None) -> MappingProxyType:
    return MappingProxyType(dict(profile or {}))
