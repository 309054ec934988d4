"""Model-side input types: what a user, an item and a request look like to every ranker.

These are plain frozen dataclasses so models never depend on the wire format
(`streams/`) or on any broker client. Agents and the replay convert records into them.

Labels use ``-1`` for "unknown" (the item was not exposed, so there is no feedback) and
teacher logits use ``nan`` where the fine ranker did not score an item.

>>> user = UserFeatures(user_id="u1", tab=1, hour=20, history_items=("i9",))
>>> items = (ItemFeatures("i1", author_id="a1", tags=("t1", "t2")), ItemFeatures("i2"))
>>> sample = RequestSample(request_id="r1", ts_ms=0, user=user, items=items,
...                        cascade=(1, 0), click=(1, -1), long_view=(0, -1), like=(0, -1),
...                        teacher_logits={"click": (0.3, -1.2)})
>>> sample.n_items
2
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

OBJECTIVES: tuple[str, ...] = ("click", "long_view", "like")
"""Fine-ranker objectives, in the order every model reports them."""

UNKNOWN_LABEL = -1


def _frozen_mapping() -> Mapping:
    return MappingProxyType({})


@dataclass(frozen=True)
class UserFeatures:
    """A user at request time: profile, context, long-term history and the current session.

    History tuples are oldest first and already truncated by whoever builds them.
    """

    user_id: str
    profile: Mapping[str, str] = field(default_factory=_frozen_mapping)
    tab: int = 0
    hour: int = 0
    weekday: int = 0
    history_items: tuple[str, ...] = ()
    history_authors: tuple[str, ...] = ()
    history_tags: tuple[str, ...] = ()
    session_items: tuple[str, ...] = ()
    session_length: int = 0


@dataclass(frozen=True)
class ItemFeatures:
    """Static item features only, so item vectors can be cached between requests."""

    item_id: str
    author_id: str = ""
    tags: tuple[str, ...] = ()
    duration_ms: int = 0


@dataclass(frozen=True)
class RequestSample:
    """One request's training record: the candidates the fine ranker saw and their labels.

    All per-item tuples have ``len(items)`` entries. ``cascade`` is 1 for the fine ranker's
    top-N and 0 for the rest and for sampled easy negatives. ``teacher_logits`` maps an
    objective of :data:`OBJECTIVES` to one logit per item (``nan`` where unscored).
    """

    request_id: str
    ts_ms: int
    user: UserFeatures
    items: tuple[ItemFeatures, ...]
    cascade: tuple[int, ...]
    click: tuple[int, ...]
    long_view: tuple[int, ...]
    like: tuple[int, ...]
    teacher_logits: Mapping[str, tuple[float, ...]] = field(default_factory=_frozen_mapping)

    def __post_init__(self) -> None:
        n = len(self.items)
        for name in ("cascade", "click", "long_view", "like"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"{name} has {len(getattr(self, name))} labels for {n} items")
        for objective, logits in self.teacher_logits.items():
            if len(logits) != n:
                raise ValueError(f"teacher_logits[{objective!r}] has {len(logits)} values for {n} items")

    @property
    def n_items(self) -> int:
        return len(self.items)

    def exposed(self) -> tuple[bool, ...]:
        """Which items have feedback labels (were shown to the user)."""
        return tuple(label != UNKNOWN_LABEL for label in self.click)

    def has_teacher(self) -> tuple[bool, ...]:
        """Which items the fine ranker scored for at least one objective."""
        scored = [False] * self.n_items
        for logits in self.teacher_logits.values():
            for i, value in enumerate(logits):
                scored[i] = scored[i] or not math.isnan(value)
        return tuple(scored)
