"""The teacher's read-only input for one user and many items, without per-pair Python strings.

:meth:`TeacherModel.forward <models.teacher.model.TeacherModel.forward>` builds every pair's
tokens as strings and maps each through an id map: for one user and 1000 candidates that is
~20k strings and dict lookups per call, most of the fine ranker's time. Scoring one user needs
less, because

* the item-side rows (item slots; the wide table's ``i=`` and ``a=`` tokens) depend only on the
  item and the id maps, so :class:`ItemRows` caches them per :class:`ItemFeatures` value for as
  long as those id maps are unchanged (``(map, DynamicIdMap.version)``; learning that admits or
  evicts an id clears the cache, weight updates do not matter because only rows are cached);
* user x author and user x tag crosses are built once per distinct author / tag of the call.

:func:`one_user_bags` returns, per input of the network, the same rows in the same order as
``forward`` would pool, so ``embedding_bag`` over the table weights gives the same numbers.

>>> from models.embedding import EmbeddingTable
>>> from models.id_map import DynamicIdMap
>>> tables = {name: EmbeddingTable(2, DynamicIdMap()) for name in (*ITEM_TABLES, "cross")}
>>> _ = tables["tag"].lookup(["t1"], now=0)
>>> cache = ItemRows()
>>> bags = cache.bags(UserFeatures("u1"), [ItemFeatures("i1", tags=("t1", "t2")), ItemFeatures("i2")], tables)
>>> bags.item["tags"].rows.tolist(), bags.item["tags"].offsets.tolist()   # t2 is not admitted
([1, 0], [0, 2])
>>> bags.cross_tags.rows.tolist(), bags.wide.offsets.tolist()   # i1: i=, 2 tag crosses; i2: i=
([0, 0], [0, 3])
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import repeat

import numpy as np
import torch

from models.embedding import EmbeddingTable
from models.features import ItemFeatures, UserFeatures
from models.tokens import ITEM_SLOT_TABLES, item_slots, user_slots

ITEM_TABLES: tuple[str, ...] = (*dict.fromkeys(ITEM_SLOT_TABLES.values()), "wide")
"""Tables whose rows :class:`ItemRows` caches (the cross table is per user, never cached)."""


@dataclass(frozen=True)
class Bag:
    """Variable-length row lists of ``n`` examples, as ``embedding_bag`` takes them.

    ``rows`` int64 ``(total,)``: every example's rows, concatenated in example order;
    ``offsets`` int64 ``(n,)``: where each example starts in ``rows``; ``lengths`` int64 ``(n,)``.
    """

    rows: np.ndarray
    offsets: np.ndarray
    lengths: np.ndarray

    def pool(self, table: EmbeddingTable, mode: str = "mean") -> torch.Tensor:
        """``(n, dim)``: mean (or sum) of each example's rows of ``table``; an empty list pools to 0.

        The mean is the sum divided by the length, which is how ``embedding_bag`` computes it
        (bit-equal), in a third of the time its ``mode="mean"`` takes on small batches.
        """
        if self.rows.size == 0:
            return torch.zeros(len(self.offsets), table.dim)
        summed = torch.nn.functional.embedding_bag(
            torch.from_numpy(self.rows), table.weight, torch.from_numpy(self.offsets), mode="sum"
        )
        if mode == "sum":
            return summed
        return summed / torch.from_numpy(np.maximum(self.lengths, 1).astype(np.float32)).unsqueeze(1)


@dataclass(frozen=True)
class OneUserBags:
    """Everything :meth:`TeacherModel.forward` pools for one user and ``n`` items (pair = item).

    ``item``: slot name -> bag over the slot's table (as :func:`~models.tokens.item_slots`);
    ``cross_author`` / ``cross_tags`` over the cross table; ``wide`` over the wide table (summed);
    ``overlap`` float32 ``(n, 2)``: the history overlap pair features.
    """

    item: dict[str, Bag]
    cross_author: Bag
    cross_tags: Bag
    wide: Bag
    overlap: np.ndarray


def _offsets(lengths: np.ndarray) -> np.ndarray:
    """Exclusive cumulative sum: where each of ``len(lengths)`` runs starts, int64."""
    out = np.zeros(len(lengths), dtype=np.int64)
    np.cumsum(lengths[:-1], out=out[1:])
    return out


def _bag(rows: np.ndarray, lengths: np.ndarray) -> Bag:
    return Bag(np.ascontiguousarray(rows, dtype=np.int64), _offsets(lengths), lengths)


class _Column:
    """A growable int64 array (amortised doubling)."""

    def __init__(self) -> None:
        self.data = np.zeros(64, dtype=np.int64)
        self.size = 0

    def extend(self, values: np.ndarray) -> None:
        end = self.size + len(values)
        if end > len(self.data):
            grown = np.zeros(max(end, 2 * len(self.data)), dtype=np.int64)
            grown[: self.size] = self.data[: self.size]
            self.data = grown
        self.data[self.size:end] = values
        self.size = end

    def view(self) -> np.ndarray:
        return self.data[: self.size]


class ItemRows:
    """Per-item rows for the teacher's one-user path, cached by item value.

    Per cached item: its row in each item slot (item id, author, duration; ``-1`` where the slot
    is empty), its tags' rows and codes (in a flat store), and the wide rows of ``i=`` and ``a=``.
    Authors and tags also get integer codes (index into :attr:`_names`), so crosses with a user
    are built once per distinct value. At most ``capacity`` items are cached; beyond that the
    cache starts over (item catalogs are far smaller, this only bounds a pathological stream).
    """

    COLUMNS = ("item", "author", "duration", "wide_item", "wide_author", "author_code", "tag_start", "tag_len")

    def __init__(self, capacity: int = 500_000) -> None:
        self.capacity = capacity
        self._valid_for: tuple = ()
        self.clear()

    def __len__(self) -> int:
        return len(self._slot)

    def clear(self) -> None:
        self._slot: dict[ItemFeatures, int] = {}
        self._code: dict[str, int] = {}  # author or tag -> code (one namespace: codes index _names)
        self._names: list[str] = []
        self._columns = {name: _Column() for name in self.COLUMNS}
        self._tag_rows = _Column()
        self._tag_codes = _Column()

    # ------------------------------------------------------------------ cache
    def slots(self, items: Sequence[ItemFeatures], tables: Mapping[str, EmbeddingTable]) -> np.ndarray:
        """Cache slot of every item, int64 ``(n,)``; registers items not cached yet."""
        stamp = tuple((tables[name].id_map, tables[name].id_map.version) for name in ITEM_TABLES)
        if len(stamp) != len(self._valid_for) or any(
            a is not b or va != vb for (a, va), (b, vb) in zip(stamp, self._valid_for)
        ):
            self.clear()  # an id gained or lost a row (or the tables were replaced): rows are stale
            self._valid_for = stamp
        found = np.fromiter(map(self._slot.get, items, repeat(-1)), dtype=np.int64, count=len(items))
        missing = np.flatnonzero(found < 0)
        if missing.size:
            if len(self._slot) + missing.size > self.capacity:
                self.clear()
                missing = np.arange(len(items))
            new = list(dict.fromkeys(items[i] for i in missing))
            self._register(new, tables)
            found[missing] = [self._slot[items[i]] for i in missing]
        return found

    def _register(self, items: list[ItemFeatures], tables: Mapping[str, EmbeddingTable]) -> None:
        """Rows of new items, read with the same tokens as :func:`~models.tokens.item_slots`."""
        slots = item_slots(items)
        single = {"item": "item_id", "author": "author_id", "duration": "duration"}
        for column, slot in single.items():
            table_name, id_lists = slots[slot]
            self._columns[column].extend(self._single_rows(tables[table_name], id_lists))
        wide = tables["wide"]
        self._columns["wide_item"].extend(wide.id_map.rows([f"i={i.item_id}" for i in items]))
        self._columns["wide_author"].extend(
            self._single_rows(wide, [(f"a={i.author_id}",) if i.author_id else () for i in items])
        )
        self._columns["author_code"].extend(
            np.asarray([self._code_of(i.author_id) if i.author_id else -1 for i in items], dtype=np.int64)
        )
        table_name, tag_lists = slots["tags"]
        lengths = np.asarray([len(tags) for tags in tag_lists], dtype=np.int64)
        self._columns["tag_start"].extend(self._tag_rows.size + _offsets(lengths))
        self._columns["tag_len"].extend(lengths)
        flat = [tag for tags in tag_lists for tag in tags]
        self._tag_rows.extend(tables[table_name].lookup(flat, now=0, learn=False))
        self._tag_codes.extend(np.asarray([self._code_of(tag) for tag in flat], dtype=np.int64))
        first = len(self._slot)
        self._slot.update(zip(items, range(first, first + len(items))))

    @staticmethod
    def _single_rows(table: EmbeddingTable, id_lists: list[tuple[str, ...]]) -> np.ndarray:
        """Row of each at-most-one-id list, ``-1`` for an empty list."""
        out = np.full(len(id_lists), -1, dtype=np.int64)
        present = [k for k, ids in enumerate(id_lists) if ids]
        if present:
            out[present] = table.lookup([id_lists[k][0] for k in present], now=0, learn=False)
        return out

    def _code_of(self, name: str) -> int:
        code = self._code.get(name)
        if code is None:
            code = self._code[name] = len(self._names)
            self._names.append(name)
        return code

    # ------------------------------------------------------------------ bags
    def bags(self, user: UserFeatures, items: Sequence[ItemFeatures], tables: Mapping[str, EmbeddingTable]) -> OneUserBags:
        """Everything ``forward`` pools for ``user`` paired with each of ``items``, from ``tables``."""
        slot = self.slots(items, tables)
        col = {name: column.view()[slot] for name, column in self._columns.items()}
        # Tags of every item, flattened in item order: index into the flat tag store.
        tag_len = col["tag_len"]
        tag_offsets = _offsets(tag_len)
        n_tags = int(tag_len.sum())
        within = np.arange(n_tags, dtype=np.int64) - np.repeat(tag_offsets, tag_len)
        flat_tags = np.repeat(col["tag_start"], tag_len) + within
        tag_rows, tag_codes = self._tag_rows.view()[flat_tags], self._tag_codes.view()[flat_tags]
        has_author = col["author_code"] >= 0
        author_codes = col["author_code"][has_author]
        author_cross, author_wide = self._crosses(user.user_id, author_codes, tables)
        tag_cross, tag_wide = self._crosses(user.user_id, tag_codes, tables)
        item = {
            "item_id": _bag(col["item"], np.ones(len(slot), dtype=np.int64)),
            "author_id": _bag(col["author"][has_author], has_author.astype(np.int64)),
            "tags": _bag(tag_rows, tag_len),
            "duration": _bag(col["duration"][col["duration"] >= 0], (col["duration"] >= 0).astype(np.int64)),
        }
        overlap = _history_overlap(user, author_codes, has_author, tag_codes, tag_len, self._names)
        return OneUserBags(
            item=item,
            cross_author=_bag(author_cross, has_author.astype(np.int64)),
            cross_tags=_bag(tag_cross, tag_len),
            wide=_wide_bag(col["wide_item"], col["wide_author"], has_author, author_wide, tag_wide, tag_len, within),
            overlap=overlap,
        )

    def _crosses(
        self, user_id: str, codes: np.ndarray, tables: Mapping[str, EmbeddingTable]
    ) -> tuple[np.ndarray, np.ndarray]:
        """Rows of ``user|value`` in the cross table and of ``uuser|value`` in the wide table, per code.

        Registration (rare) reads rows with ``lookup``, which also accepts non-str ids; these
        tokens are f-strings, so the one-pass :meth:`~models.id_map.DynamicIdMap.rows` is exact.
        """
        if codes.size == 0:
            return codes, codes
        distinct, inverse = np.unique(codes, return_inverse=True)
        tokens = [f"{user_id}|{self._names[c]}" for c in distinct.tolist()]
        cross = tables["cross"].id_map.rows(tokens)
        wide = tables["wide"].id_map.rows([f"u{t}" for t in tokens])
        return cross[inverse], wide[inverse]


def user_part(user: UserFeatures, tables: Mapping[str, EmbeddingTable]) -> torch.Tensor:
    """``(1, n_user_slots * dim)``: the user's slots mean-pooled, in :func:`~models.tokens.user_slots` order.

    One lookup and one ``embedding_bag`` per table (the four context slots share one), instead
    of one :meth:`~models.sparse.SparseLookup.pool` per slot.
    """
    slots = user_slots([user])
    by_table: dict[str, list[str]] = {}
    for slot, (table_name, _) in slots.items():
        by_table.setdefault(table_name, []).append(slot)
    pooled: dict[str, torch.Tensor] = {}
    for table_name, names in by_table.items():
        id_lists = [slots[name][1][0] for name in names]
        table = tables[table_name]
        rows = table.lookup([raw for ids in id_lists for raw in ids], now=0, learn=False)
        out = _bag(rows, np.asarray([len(ids) for ids in id_lists], dtype=np.int64)).pool(table)
        pooled.update(zip(names, out))
    return torch.cat([pooled[name] for name in slots]).unsqueeze(0)


def _wide_bag(
    item_rows: np.ndarray, author_rows: np.ndarray, has_author: np.ndarray, author_cross: np.ndarray,
    tag_cross: np.ndarray, tag_len: np.ndarray, within: np.ndarray,
) -> Bag:
    """Per item, in forward's order: ``i=``, then ``a=`` and ``u{user}|{author}`` if it has an author,
    then ``u{user}|{tag}`` per tag (summed, so the order keeps the float sums identical)."""
    authored = has_author.astype(np.int64)
    lengths = 1 + 2 * authored + tag_len
    offsets = _offsets(lengths)
    rows = np.empty(int(lengths.sum()), dtype=np.int64)
    rows[offsets] = item_rows
    rows[offsets[has_author] + 1] = author_rows[has_author]
    rows[offsets[has_author] + 2] = author_cross
    rows[np.repeat(offsets + 1 + 2 * authored, tag_len) + within] = tag_cross
    return Bag(rows, offsets, lengths)


def _history_overlap(
    user: UserFeatures, author_codes: np.ndarray, has_author: np.ndarray, tag_codes: np.ndarray,
    tag_len: np.ndarray, names: list[str],
) -> np.ndarray:
    """Float32 ``(n, 2)``: share of the user's history by each item's author and by its tags.

    Counts are integers summed exactly in float64 and divided once, as the per-pair loop does.
    """
    out = np.zeros((len(has_author), 2), dtype=np.float32)
    if user.history_authors and author_codes.size:
        counts = Counter(user.history_authors)
        distinct, inverse = np.unique(author_codes, return_inverse=True)
        per_code = np.asarray([counts[names[c]] for c in distinct.tolist()], dtype=np.float64)
        out[has_author, 0] = per_code[inverse] / len(user.history_authors)
    if user.history_tags and tag_codes.size:
        counts = Counter(user.history_tags)
        distinct, inverse = np.unique(tag_codes, return_inverse=True)
        per_code = np.asarray([counts[names[c]] for c in distinct.tolist()], dtype=np.float64)
        owner = np.repeat(np.arange(len(tag_len)), tag_len)
        out[:, 1] = np.bincount(owner, weights=per_code[inverse], minlength=len(tag_len)) / len(user.history_tags)
    return out
