"""Cascade labels and the label join, as pure logic the Faust label joiner wraps.

:func:`build_request_sample` turns one request (user snapshot at request time, candidates), the
fine ranker's scores and the exposures with feedback into a :class:`~models.features.RequestSample`:

- items: the fine-ranked items in rank order, then exposed items the fine ranker did not score,
  then up to ``n_easy_negatives`` candidates it did not see (seeded by request id);
- ``cascade``: 1 for the fine ranker's top-N (the N smallest ranks), 0 for everything else;
- ``click`` / ``long_view`` / ``like``: the feedback (max over repeated exposures) where the item
  was exposed, -1 elsewhere;
- ``teacher_logits``: per objective the fine ranker reported, nan where it did not score.

:class:`LabelJoin` holds each request's pending parts until its event-time window closes.
The rule, stated once:

- A request's window is ``[ts, ts + window_ms]``, ``ts`` the request time carried by its
  rank-scores (until they arrive, the earliest impression time stands in). The watermark is the
  largest event time seen; a window closes when the watermark passes its end. An event joins its
  pending request first and only then moves the watermark.
- On close: with rank-scores, the request is emitted exactly once, with the impressions gathered
  so far (none is fine: cascade labels need no feedback; counted ``emitted_without_impressions``).
  Without rank-scores, its impressions are orphans: dropped and counted ``orphan_impressions``.
- Late: an event for a request already closed, or whose window would already be closed, is
  dropped (``late_rank_scores`` / ``late_impressions``). Closed ids are remembered for
  ``retention_ms`` of event time.
- Future: an event stamped more than ``max_future_ms`` ahead of the wall clock is dropped
  (``future_*``) without moving the watermark.
- Ahead (the watermark's bound): the watermark moves to an event's time only within
  ``max_ahead_ms`` of the *reference*, the median (the lower one) of the last
  ``reference_events`` event times of this join (one join per input partition; late and future
  events excluded, the event itself included). An event further ahead is joined like any other,
  but moves the watermark only to ``reference + max_ahead_ms`` and is counted ``ahead_*``. So one
  event, or any minority of the recent ones, moves the watermark at most ``max_ahead_ms`` past
  the recent event times, however far ahead it is stamped, and never further by repeating it:
  with ``max_ahead_ms <= window_ms`` (the worker sets that) it can make late no event stamped at
  or after the reference. A real jump of the clock (a quiet partition, a replay's night) is
  followed as soon as most recent events carry it: after ``reference_events // 2 + 1`` events,
  none of which is dropped. In steady traffic the reference trails the newest event by about
  ``reference_events // 2`` events, so the watermark is the newest event time as long as those
  events span less than ``max_ahead_ms``. The recent times are not stored: a join resumed from
  its state starts with the stored watermark as its only recent time (a new join: the wall
  clock), so its bound is ``watermark + max_ahead_ms`` until events arrive.
- Duplicate: a second rank-scores for a pending request, or an impression with the same
  ``(item_id, position, ts_ms)`` as one held, is dropped (``duplicate_*``).

>>> from models.features import ItemFeatures, UserFeatures
>>> ranked = [Ranked("a", 1, {"click": 0.5}), Ranked("b", 0, {"click": 2.0}), Ranked("c", 2, {"click": -1.0})]
>>> shown = [Feedback("b", ts_ms=5, click=1, long_view=1)]
>>> items = [ItemFeatures(i) for i in "abcdefg"]
>>> sample = build_request_sample("r1", 0, UserFeatures("u"), items, ranked, shown,
...                               LabelConfig(top_n=2, n_easy_negatives=2))
>>> [i.item_id for i in sample.items][:3], sample.cascade, sample.click
(['b', 'a', 'c'], (1, 1, 0, 0, 0), (1, -1, -1, -1, -1))
>>> sample.teacher_logits["click"][:3], sample.has_teacher()[3:]
((2.0, 0.5, -1.0), (False, False))
"""

from __future__ import annotations

import heapq
import json
import time
import zlib
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Protocol

import numpy as np

from models.features import ItemFeatures, RequestSample, UserFeatures

FEEDBACK = ("click", "long_view", "like")


class RankedLike(Protocol):
    """What a fine-ranked item must provide (``streams.rank_scores.RankedItem`` does)."""

    item_id: str
    rank: int
    logits: Mapping[str, float]


class ImpressionLike(Protocol):
    """What an impression must provide (``streams.impressions.Impression`` does)."""

    item_id: str
    ts_ms: int
    position: int
    click: int
    long_view: int
    like: int
    play_ms: int


@dataclass(frozen=True, slots=True)
class Ranked:
    """One item the fine ranker scored: its rank (0 = best) and a logit per objective."""

    item_id: str
    rank: int
    logits: Mapping[str, float] = field(default_factory=dict)

    @classmethod
    def of(cls, item: RankedLike) -> Ranked:
        return cls(str(item.item_id), int(item.rank), dict(item.logits))


@dataclass(frozen=True, slots=True)
class Feedback:
    """One exposure of an item within a request, with the user's feedback."""

    item_id: str
    ts_ms: int
    position: int = 0
    click: int = 0
    long_view: int = 0
    like: int = 0
    play_ms: int = 0

    @classmethod
    def of(cls, impression: ImpressionLike) -> Feedback:
        return cls(
            str(impression.item_id), int(impression.ts_ms), int(impression.position),
            int(impression.click), int(impression.long_view), int(impression.like), int(impression.play_ms),
        )  # fmt: skip

    @property
    def key(self) -> tuple[str, int, int]:
        return (self.item_id, self.position, self.ts_ms)


@dataclass(frozen=True)
class LabelConfig:
    """``top_n``: how many of the fine ranker's best items are cascade positives."""

    top_n: int = 10
    n_easy_negatives: int = 20
    seed: int = 0

    def __post_init__(self) -> None:
        if self.top_n < 1:
            raise ValueError(f"top_n must be >= 1, got {self.top_n}")
        if self.n_easy_negatives < 0:
            raise ValueError(f"n_easy_negatives must be >= 0, got {self.n_easy_negatives}")


def request_rng(seed: int, request_id: str) -> np.random.Generator:
    """A generator that depends only on ``seed`` and the request id (replays are reproducible)."""
    return np.random.default_rng((seed, zlib.crc32(request_id.encode())))


def build_request_sample(
    request_id: str,
    ts_ms: int,
    user: UserFeatures,
    candidates: Sequence[ItemFeatures],
    ranked: Iterable[RankedLike],
    impressions: Iterable[ImpressionLike],
    config: LabelConfig = LabelConfig(),
) -> RequestSample:
    """One request's training sample (see the module docstring for the rules).

    ``candidates`` supplies item features; a ranked or exposed item missing from it gets a
    bare :class:`~models.features.ItemFeatures`. Repeated ranked items keep their first entry.
    """
    features = {item.item_id: item for item in candidates}
    order: dict[str, int] = {}
    ranked_by_id: dict[str, RankedLike] = {}
    for position, item in enumerate(ranked):
        if item.item_id not in ranked_by_id:
            ranked_by_id[item.item_id] = item
            order[item.item_id] = position
    ranked_ids = sorted(ranked_by_id, key=lambda i: (ranked_by_id[i].rank, order[i]))
    top = set(ranked_ids[: config.top_n])

    feedback: dict[str, list[int]] = {}
    for impression in sorted(impressions, key=lambda f: (f.ts_ms, f.position)):
        seen = feedback.setdefault(impression.item_id, [0, 0, 0])
        for k, name in enumerate(FEEDBACK):
            seen[k] = max(seen[k], int(getattr(impression, name)))
    unranked_exposed = [i for i in feedback if i not in ranked_by_id]

    pool = [c.item_id for c in candidates if c.item_id not in ranked_by_id and c.item_id not in feedback]
    pool = list(dict.fromkeys(pool))
    n_easy = min(config.n_easy_negatives, len(pool))
    picks = np.sort(request_rng(config.seed, request_id).choice(len(pool), n_easy, replace=False)) if n_easy else ()
    item_ids = ranked_ids + unranked_exposed + [pool[i] for i in picks]

    objectives = sorted({o for item in ranked_by_id.values() for o in item.logits})
    nan = float("nan")
    teacher = {
        o: tuple(
            float(ranked_by_id[i].logits.get(o, nan)) if i in ranked_by_id else nan for i in item_ids
        )
        for o in objectives
    }
    labels = [feedback.get(i, (-1, -1, -1)) for i in item_ids]
    return RequestSample(
        request_id=request_id,
        ts_ms=ts_ms,
        user=user,
        items=tuple(features.get(i) or ItemFeatures(i) for i in item_ids),
        cascade=tuple(int(i in top) for i in item_ids),
        click=tuple(lab[0] for lab in labels),
        long_view=tuple(lab[1] for lab in labels),
        like=tuple(lab[2] for lab in labels),
        teacher_logits=MappingProxyType(teacher),
    )


@dataclass(frozen=True)
class JoinConfig:
    """Event-time window of a request and how long closed request ids are remembered."""

    window_ms: int = 10 * 60_000
    retention_ms: int = 60 * 60_000
    max_future_ms: int = 24 * 3_600_000  # events stamped further ahead of the wall clock are dropped
    max_ahead_ms: int = 5 * 60_000  # how far past the recent event times one event moves the watermark
    reference_events: int = 15  # how many recent event times the reference (their median) is taken over

    def __post_init__(self) -> None:
        if self.window_ms < 0 or self.retention_ms < 0:
            raise ValueError(f"window_ms and retention_ms must be >= 0, got {self.window_ms}, {self.retention_ms}")
        if self.max_ahead_ms < 0 or self.reference_events < 1:
            raise ValueError(f"max_ahead_ms must be >= 0 and reference_events >= 1, got {self.max_ahead_ms}, "
                             f"{self.reference_events}")


@dataclass
class PendingRequest:
    """One request whose window closed: its rank-scores, candidates, user snapshot and exposures."""

    request_id: str
    user_id: str
    ts_ms: int
    ranked: tuple[Ranked, ...] | None = None
    candidates: tuple[str, ...] = ()
    impressions: list[Feedback] = field(default_factory=list)
    user: Mapping | None = None  # the snapshot the scorer used (JSON-able), carried by the rank-scores
    offset: int | None = None  # where the rank-scores were read (their input partition's offset)

    def to_dict(self) -> dict:
        return {
            "request_id": self.request_id,
            "user_id": self.user_id,
            "ts_ms": self.ts_ms,
            "ranked": None
            if self.ranked is None
            else [[r.item_id, r.rank, dict(r.logits)] for r in self.ranked],
            "candidates": list(self.candidates),
            "impressions": [
                [f.item_id, f.ts_ms, f.position, f.click, f.long_view, f.like, f.play_ms] for f in self.impressions
            ],
            "user": None if self.user is None else dict(self.user),
            "offset": self.offset,
        }


def impression_key(request_id: str, feedback: Feedback) -> str:
    """The key of one held exposure: two exposures with the same key are duplicates."""
    return json.dumps([request_id, *feedback.key])


class LabelJoin:
    """Joins rank-scores and impressions by request id inside an event-time window.

    Its state lives in three mutable mappings of JSON-able values (Faust tables in the worker,
    plain dicts by default), written so that each event costs O(event), never a rewrite of the
    whole request:

    - ``pending``: request id -> head (``user_id``, ``ts_ms``, ``ranked``, ``candidates``,
      ``user``), written by the request's first event and once more by its rank-scores (an
      impression rewrites the small head of a request still without rank-scores only when it
      moves ``ts_ms`` earlier);
    - ``impressions``: :func:`impression_key` -> ``[request_id, item_id, ts_ms, position,
      click, long_view, like, play_ms]``, one row per exposure, written once;
    - ``closed``: request id -> watermark at close.

    To resume exactly after a restart, pass them back with the last ``watermark_ms``.
    Every ``add_*`` returns the requests whose windows that event closed, oldest deadline first.

    >>> join = LabelJoin(JoinConfig(window_ms=100))
    >>> join.add_impression("r1", "u", Feedback("a", ts_ms=10, click=1))
    []
    >>> join.add_rank_scores("r1", "u", 5, [Ranked("a", 0, {"click": 1.0})])
    []
    >>> [p.request_id for p in join.add_impression("r2", "u", Feedback("b", ts_ms=200))]
    ['r1']
    >>> join.add_impression("r1", "u", Feedback("a", ts_ms=12)), join.counters["late_impressions"]
    ([], 1)
    >>> join.flush(), join.counters["orphan_impressions"]
    ([], 1)
    """

    def __init__(
        self,
        config: JoinConfig = JoinConfig(),
        pending: MutableMapping[str, dict] | None = None,
        impressions: MutableMapping[str, list] | None = None,
        closed: MutableMapping[str, int] | None = None,
        watermark_ms: int | None = None,
        clock_ms: Callable[[], int] = lambda: int(time.time() * 1000),
    ) -> None:
        self.config = config
        self.clock_ms = clock_ms
        self.pending: MutableMapping[str, dict] = {} if pending is None else pending
        self.impressions: MutableMapping[str, list] = {} if impressions is None else impressions
        self.closed: MutableMapping[str, int] = {} if closed is None else closed
        self.counters: Counter[str] = Counter()
        heads = dict(self.pending.items())  # one pass over a possibly remote mapping
        fresh = watermark_ms is None and not heads
        if watermark_ms is None:
            watermark_ms = max((int(head["ts_ms"]) for head in heads.values()), default=0)
        self.watermark_ms = watermark_ms
        # The last event times the watermark's bound is taken from (see the module docstring),
        # seeded with the stored watermark, or for a new join with the wall clock: its first event
        # is no more trusted than a later one.
        self._recent: deque[int] = deque([clock_ms() if fresh else watermark_ms], maxlen=config.reference_events)
        self._deadlines = [(int(head["ts_ms"]) + config.window_ms, rid) for rid, head in heads.items()]
        heapq.heapify(self._deadlines)
        # Which exposures each request holds: an index over ``impressions``, so a close finds them.
        self._impression_keys: dict[str, list[str]] = {}
        for key, row in self.impressions.items():
            self._impression_keys.setdefault(row[0], []).append(key)
        # Close times are watermarks, which never decrease: a FIFO is enough to expire them.
        self._closed_order = deque(sorted(self.closed, key=self.closed.__getitem__))

    def _is_future(self, ts_ms: int) -> bool:
        """A clock far ahead of real time would drag the watermark and make every event late."""
        return ts_ms > self.clock_ms() + self.config.max_future_ms

    def _is_late(self, request_id: str, ts_ms: int) -> bool:
        return request_id in self.closed or (
            request_id not in self.pending and ts_ms + self.config.window_ms < self.watermark_ms
        )

    def add_rank_scores(
        self,
        request_id: str,
        user_id: str,
        ts_ms: int,
        ranked: Iterable[RankedLike],
        candidates: Sequence[str] = (),
        user: Mapping | None = None,
        offset: int | None = None,
    ) -> list[PendingRequest]:
        """The fine ranker's scores of a request (``candidates``: ids of its whole candidate set;
        ``user``: the JSON-able user snapshot the scorer used, stored once with them; ``offset``:
        where the record was read, so a request that cannot be emitted can name it)."""
        if self._is_future(ts_ms):
            self.counters["future_rank_scores"] += 1
            return []
        if self._is_late(request_id, ts_ms):
            self.counters["late_rank_scores"] += 1
            return self.advance(self.watermark_ms)
        head = self.pending.get(request_id)
        if head is not None and head["ranked"] is not None:
            self.counters["duplicate_rank_scores"] += 1
            return self._advance(ts_ms, "rank_scores")
        self._store_head(request_id, {
            "user_id": user_id, "ts_ms": ts_ms,
            "ranked": [[r.item_id, int(r.rank), dict(r.logits)] for r in map(Ranked.of, ranked)],
            "candidates": list(candidates), "user": None if user is None else dict(user), "offset": offset,
        })
        self.counters["rank_scores"] += 1
        return self._advance(ts_ms, "rank_scores")

    def add_impression(self, request_id: str, user_id: str, impression: ImpressionLike) -> list[PendingRequest]:
        """One exposure of a request, in any order relative to its rank-scores."""
        feedback = Feedback.of(impression)
        if self._is_future(feedback.ts_ms):
            self.counters["future_impressions"] += 1
            return []
        if self._is_late(request_id, feedback.ts_ms):
            self.counters["late_impressions"] += 1
            return self.advance(self.watermark_ms)
        key = impression_key(request_id, feedback)
        head = self.pending.get(request_id)
        # A row without its head (a crash kept one write of the pair) is taken again, not a duplicate.
        if head is not None and key in self.impressions:
            self.counters["duplicate_impressions"] += 1
            return self._advance(feedback.ts_ms, "impressions")
        if key not in self.impressions:
            self.impressions[key] = [request_id, feedback.item_id, feedback.ts_ms, feedback.position, feedback.click,
                                     feedback.long_view, feedback.like, feedback.play_ms]
            self._impression_keys.setdefault(request_id, []).append(key)
        if head is None:
            self._store_head(request_id, {"user_id": user_id, "ts_ms": feedback.ts_ms, "ranked": None,
                                          "candidates": [], "user": None})
        elif head["ranked"] is None and feedback.ts_ms < int(head["ts_ms"]):
            self._store_head(request_id, {**head, "ts_ms": feedback.ts_ms})
        self.counters["impressions"] += 1
        return self._advance(feedback.ts_ms, "impressions")

    def _store_head(self, request_id: str, head: dict) -> None:
        self.pending[request_id] = head
        heapq.heappush(self._deadlines, (int(head["ts_ms"]) + self.config.window_ms, request_id))

    @property
    def reference_ms(self) -> int:
        """The median (the lower one) of the recent event times: the watermark's bound is
        ``reference_ms + max_ahead_ms`` (see the module docstring)."""
        recent = sorted(self._recent)
        return recent[(len(recent) - 1) // 2]

    def _advance(self, event_ts_ms: int, kind: str) -> list[PendingRequest]:
        self._recent.append(event_ts_ms)
        bound = self.reference_ms + self.config.max_ahead_ms
        if event_ts_ms > bound:
            self.counters[f"ahead_{kind}"] += 1
            event_ts_ms = bound
        return self.advance(max(self.watermark_ms, event_ts_ms))

    def advance(self, watermark_ms: int) -> list[PendingRequest]:
        """Move the watermark (never back) and close every window that ends before it."""
        self.watermark_ms = max(self.watermark_ms, watermark_ms)
        ready: list[PendingRequest] = []
        while self._deadlines and self._deadlines[0][0] < self.watermark_ms:
            deadline, request_id = heapq.heappop(self._deadlines)
            head = self.pending.get(request_id)
            if head is None or int(head["ts_ms"]) + self.config.window_ms != deadline:
                continue  # a stale heap entry: the request was closed or its ts moved
            self._close(request_id, head, ready)
        horizon = self.watermark_ms - self.config.retention_ms
        while self._closed_order and self.closed.get(self._closed_order[0], horizon - 1) < horizon:
            self.closed.pop(self._closed_order.popleft(), None)
        return ready

    def flush(self, keep_unranked: bool = False) -> list[PendingRequest]:
        """Close every pending window now (end of a replay or shutdown).

        With ``keep_unranked``, requests still waiting for their rank-scores stay open: the fine
        ranker may lag behind the impressions, and closing them now would orphan them.

        >>> join = LabelJoin(JoinConfig(window_ms=100))
        >>> join.add_impression("shown-only", "u", Feedback("a", ts_ms=10))
        []
        >>> join.add_rank_scores("ranked", "u", 5, [Ranked("a", 0, {"click": 1.0})])
        []
        >>> [p.request_id for p in join.flush(keep_unranked=True)], list(join.pending)
        (['ranked'], ['shown-only'])
        """
        ready: list[PendingRequest] = []
        heads = sorted(self.pending.items(), key=lambda item: int(item[1]["ts_ms"]))
        for request_id, head in heads:
            if keep_unranked and head["ranked"] is None:
                continue
            self._close(request_id, head, ready)
        if not self.pending:
            self._deadlines.clear()  # otherwise stale entries are skipped when the watermark moves
        return ready

    def _close(self, request_id: str, head: Mapping, ready: list[PendingRequest]) -> None:
        rows = [self.impressions.pop(key) for key in self._impression_keys.pop(request_id, ())]
        del self.pending[request_id]
        self.closed[request_id] = self.watermark_ms
        self._closed_order.append(request_id)
        feedback = sorted((Feedback(*row[1:]) for row in rows), key=lambda f: (f.ts_ms, f.position, f.item_id))
        if head["ranked"] is None:
            self.counters["orphan_requests"] += 1
            self.counters["orphan_impressions"] += len(feedback)
            return
        self.counters["emitted"] += 1
        if not feedback:
            self.counters["emitted_without_impressions"] += 1
        ready.append(PendingRequest(
            request_id=request_id, user_id=head["user_id"], ts_ms=int(head["ts_ms"]),
            ranked=tuple(Ranked(item, int(rank), dict(logits)) for item, rank, logits in head["ranked"]),
            candidates=tuple(head["candidates"]), impressions=feedback, user=head.get("user"),
            offset=head.get("offset"),
        ))
