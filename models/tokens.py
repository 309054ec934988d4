"""Feature tokens: how users and items become id lists per embedding slot.

A *slot* is one pooled input of a tower; it names the table it reads. Single-valued features
are one-element lists, multi-valued ones (tags, history) are pooled by mean, and a missing
optional feature is an empty list (it pools to zeros). Small categorical values (tab, hour,
weekday, bucketed lengths) share the ``context`` table under prefixed tokens.

>>> from models.features import ItemFeatures, UserFeatures
>>> slots = user_slots([UserFeatures("u1", profile={"age": "3"}, tab=2, hour=20)])
>>> slots["profile"], slots["tab"]
(('profile', [('age=3',)]), ('context', [('tab=2',)]))
>>> item_slots([ItemFeatures("i1", author_id="", duration_ms=60_000)])["duration"]
('context', [('dur=5',)])
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from models.features import ItemFeatures, UserFeatures

Slots = dict[str, tuple[str, list[tuple[str, ...]]]]
"""slot name -> (table name, one id tuple per example)."""

USER_SLOT_TABLES: dict[str, str] = {
    "user_id": "user",
    "profile": "profile",
    "tab": "context",
    "hour": "context",
    "weekday": "context",
    "session_length": "context",
    "history_items": "item",
    "history_authors": "author",
    "history_tags": "tag",
    "session_items": "item",
}
ITEM_SLOT_TABLES: dict[str, str] = {
    "item_id": "item",
    "author_id": "author",
    "tags": "tag",
    "duration": "context",
}
TABLES: tuple[str, ...] = ("user", "profile", "context", "item", "author", "tag")


def log2_bucket(value: float) -> int:
    """``floor(log2(1 + value))`` for ``value >= 0`` (0 otherwise): a coarse size bucket."""
    return int(math.log2(1.0 + value)) if value > 0 else 0


def user_slots(users: Sequence[UserFeatures]) -> Slots:
    """Id lists of every user-tower slot for a batch of users."""
    return {
        "user_id": ("user", [(u.user_id,) for u in users]),
        "profile": ("profile", [tuple(f"{k}={v}" for k, v in sorted(u.profile.items())) for u in users]),
        "tab": ("context", [(f"tab={u.tab}",) for u in users]),
        "hour": ("context", [(f"hour={u.hour}",) for u in users]),
        "weekday": ("context", [(f"wd={u.weekday}",) for u in users]),
        "session_length": ("context", [(f"sess={log2_bucket(u.session_length)}",) for u in users]),
        "history_items": ("item", [u.history_items for u in users]),
        "history_authors": ("author", [u.history_authors for u in users]),
        "history_tags": ("tag", [u.history_tags for u in users]),
        "session_items": ("item", [u.session_items for u in users]),
    }


def item_slots(items: Sequence[ItemFeatures]) -> Slots:
    """Id lists of every item-tower slot; duration is bucketed by ``log2(1 + seconds)``."""
    return {
        "item_id": ("item", [(i.item_id,) for i in items]),
        "author_id": ("author", [(i.author_id,) if i.author_id else () for i in items]),
        "tags": ("tag", [i.tags for i in items]),
        "duration": (
            "context",
            [(f"dur={log2_bucket(i.duration_ms / 1000)}",) if i.duration_ms > 0 else () for i in items],
        ),
    }
