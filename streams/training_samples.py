"""``training-samples`` (key user_id): one record per request, written by the label joiner.

Carries the user-feature snapshot as of the request (no later behaviour), the items the fine
ranker saw plus sampled easy negatives, their cascade labels, teacher logits (null where the
fine ranker did not score an item) and feedback (-1 where the item was not exposed).

Bounds (``streams.budgets``): at most :data:`MAX_SAMPLE_ITEMS` items, the most a rank-scores
record allows (:data:`MAX_RANKED_ITEMS`) plus :data:`MAX_EXTRA_ITEMS` the joiner adds (exposed items
the fine ranker did not score, easy negatives); at most :data:`MAX_OBJECTIVES` teacher objectives;
at most :data:`MAX_SAMPLE_BYTES` encoded. A sample over either is cut by
:func:`funnel.convert.record_from_sample` to its first items (the fine-ranked ones in rank order
come first), and ``truncated_items`` says how many were dropped.

The user snapshot is bounded by construction to :data:`SNAPSHOT_MAX_BYTES` of JSON (under 1 MiB):
it rides on every score response, rank-scores record and training sample of its user.
"""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import Field, ValidationInfo, field_validator, model_validator

from streams.base import MAX_RECORD_BYTES, Codec, Record, TopicSpec, json_keys_bytes, max_json_str
from streams.score_requests import MAX_CANDIDATES
from streams.types import MAX_ID_CHARS, Count, Float, Id, Int, Label, Name, TimestampMs, Token
from streams.user_profiles import MAX_PROFILE_BYTES, MAX_PROFILE_FIELDS, Profile

MAX_HISTORY = 200
"""Per snapshot list (history items, authors, tags, session items); ``funnel.history.HistoryConfig``
keeps 50 / 20 / 30 / 20 by default and must stay within it."""
INT_JSON_BYTES = 20  # a 64-bit int in JSON, sign included
FLOAT_JSON_BYTES = 24  # the longest repr of a finite float: -2.2250738585072014e-308


class UserSnapshot(Record):
    user_id: Id
    profile: Profile = Field(default_factory=dict, max_length=MAX_PROFILE_FIELDS)
    tab: Int = 0
    hour: Count = Field(default=0, le=23)
    weekday: Count = Field(default=0, le=6)
    history_items: list[Token] = Field(default_factory=list, max_length=MAX_HISTORY)
    history_authors: list[Token] = Field(default_factory=list, max_length=MAX_HISTORY)
    history_tags: list[Token] = Field(default_factory=list, max_length=MAX_HISTORY)
    session_items: list[Token] = Field(default_factory=list, max_length=MAX_HISTORY)
    session_length: Count = 0


_SNAPSHOT_LISTS = ("history_items", "history_authors", "history_tags", "session_items")
SNAPSHOT_MAX_BYTES = (
    json_keys_bytes(UserSnapshot.model_fields) + max_json_str(MAX_ID_CHARS) + MAX_PROFILE_BYTES + 4 * INT_JSON_BYTES
    + len(_SNAPSHOT_LISTS) * (2 + MAX_HISTORY * (max_json_str(MAX_ID_CHARS) + 1))
)
"""The most bytes a valid snapshot takes in JSON (~844 KiB): every field at its bound, every
character at the JSON worst case."""


def same_user(snapshot: UserSnapshot | None, info: ValidationInfo) -> UserSnapshot | None:
    """A record's user snapshot must be of the record's user (a field validator of ``user``,
    declared after ``user_id``): otherwise a sample would be keyed by one user and carry another's
    features. ``user_id`` failed on its own when absent from ``info.data``."""
    if snapshot is not None and "user_id" in info.data and snapshot.user_id != info.data["user_id"]:
        raise ValueError("user.user_id differs from user_id")
    return snapshot


MAX_TAGS = 64


class SampleItem(Record):
    item_id: Id
    author_id: Token = ""
    tags: list[Token] = Field(default_factory=list, max_length=MAX_TAGS)
    duration_ms: Count = 0


MAX_RANKED_ITEMS = MAX_CANDIDATES
"""Items of one rank-scores record (``streams.rank_scores``): the fine ranker ranks at most a
request's candidates."""
MAX_EXTRA_ITEMS = 1000
"""What the joiner adds to the ranked items: exposed items the fine ranker did not score and
sampled easy negatives (the label config's 20 by default)."""
MAX_SAMPLE_ITEMS = MAX_RANKED_ITEMS + MAX_EXTRA_ITEMS
MAX_OBJECTIVES = 16
"""Distinct teacher objectives of a record (rank-scores and training samples)."""
MAX_SAMPLE_BYTES = MAX_RECORD_BYTES


class TrainingSample(Record):
    request_id: Id
    user_id: Id
    ts_ms: TimestampMs
    user: UserSnapshot
    items: list[SampleItem] = Field(min_length=1, max_length=MAX_SAMPLE_ITEMS)
    cascade: list[Label] = Field(min_length=1, max_length=MAX_SAMPLE_ITEMS)
    click: list[Label] = Field(max_length=MAX_SAMPLE_ITEMS)
    long_view: list[Label] = Field(max_length=MAX_SAMPLE_ITEMS)
    like: list[Label] = Field(max_length=MAX_SAMPLE_ITEMS)
    teacher_logits: dict[Name, list[Float | None]] = Field(default_factory=dict, max_length=MAX_OBJECTIVES)
    truncated_items: Count = 0  # items dropped from the end to fit the bounds (0: the whole sample)

    _same_user = field_validator("user")(same_user)

    @model_validator(mode="after")
    def _aligned(self) -> TrainingSample:
        n = len(self.items)
        for name in ("cascade", "click", "long_view", "like"):
            labels = getattr(self, name)
            if len(labels) != n:
                raise ValueError(f"{name} has {len(labels)} labels for {n} items")
        for objective, logits in self.teacher_logits.items():
            if len(logits) != n:
                raise ValueError(f"teacher_logits[{objective}] has {len(logits)} values for {n} items")
        return self


# --- the budget of one sample: what record_from_sample needs to cut a sample to fit -------------
_ITEM_KEYS = json_keys_bytes(SampleItem.model_fields)
ITEM_OVERHEAD_BYTES = _ITEM_KEYS + 1 + 2 + INT_JSON_BYTES + 4 * 3
"""An item's share beyond its strings: its keys and comma, the tags' brackets, the duration, one
label in each of the four label lists (``-1,`` at most)."""
LOGIT_BYTES = FLOAT_JSON_BYTES + 1  # one item's value in one objective's list (null is shorter)


def item_bytes_bound(strings_json_bytes: int, n_objectives: int) -> int:
    """An upper bound of one item's share of a sample's JSON, given the JSON size of its strings
    (``json_size([item_id, author_id, *tags])``)."""
    return strings_json_bytes + ITEM_OVERHEAD_BYTES + n_objectives * LOGIT_BYTES


def sample_fixed_bytes(snapshot_bytes: int, objectives: Sequence[str]) -> int:
    """An upper bound of a sample's JSON without its items' shares: keys, ids (at their bound),
    the timestamp, the snapshot (``snapshot_bytes``), the objective names and ``"v"``."""
    return (
        json_keys_bytes((*TrainingSample.model_fields, "v")) + 2 * max_json_str(MAX_ID_CHARS) + 3 * INT_JSON_BYTES
        + snapshot_bytes + 6 * 2 + sum(max_json_str(len(o)) + 4 for o in objectives)
    )


TOPIC = TopicSpec("training-samples")
CODEC = Codec(TrainingSample)
