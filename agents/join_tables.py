"""The label join's state in changelog-backed Faust tables, one join per input partition.

Every input of the joiner (rank-scores, impressions) is keyed by user id with the same partition
count, so Faust's assignor gives partition p of both topics to one worker, and partition p of
each table's changelog holds exactly p's join state: a restarted or newly assigned worker
recovers it before its streams resume and :class:`JoinTables` rebuilds p's
:class:`~funnel.labels.LabelJoin` from it (watermark included, kept per partition).

**Writing outside a stream event.** ``table[key] = value`` takes the changelog partition from the
current event (``Table.on_key_set`` -> ``partition_for_key`` -> ``current_event()``) and raises
"Cannot modify table key from outside of stream iteration" in a timer, where the idle flush
closes windows. A :class:`PartitionTable` knows its partition instead: it sets the value in the
local store and sends the changelog record itself with ``Collection.send_changelog(partition,
...)``, the same path inside and outside events. The in-memory store (``memory://``, the worker's
default; rebuilt from the changelog on every start) does not look at the event; RocksDB's
``_set`` does, so the joiner refuses other stores (:func:`check_store`).

**Keys carry their partition** (``"{p}/{key}"``): one table on a worker also holds other
partitions' rows (standby copies, rows of a partition it lost), and a join must see only its own.

**Order of writes.** Changelog records are queued, not sent, until :meth:`JoinTables.send_changelog`:
the joiner calls it only after the training records an event emitted are delivered. A crash
therefore never keeps a close without its record: at worst the record is emitted again (at least
once into ``training-samples``; the trainer drops the second copy).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, MutableMapping

from funnel.labels import JoinConfig, LabelJoin

log = logging.getLogger(__name__)

TABLES = ("pending", "impressions", "closed", "watermarks")
WATERMARK_KEY = "watermark_ms"


class JoinStoreError(ValueError):
    """The worker's table store cannot hold the join's state (see the module docstring)."""


def check_store(store_url: str) -> None:
    if not store_url.startswith("memory:"):
        raise JoinStoreError(
            f"the label joiner needs the in-memory table store (memory://), got {store_url!r}: "
            "its idle flush writes tables outside stream events, which RocksDB's store cannot"
        )


class PartitionTable(MutableMapping):
    """One partition's rows of a Faust table; writes are queued for that partition's changelog."""

    def __init__(self, table, partition: int, outbox: list) -> None:
        self._table = table
        self._store = table.data
        self._partition = partition
        self._prefix = f"{partition}/"
        self._outbox = outbox
        # The rows this join owns, so len() and iteration never scan other partitions' rows.
        self._keys = {key[len(self._prefix):] for key in list(self._store.keys())
                      if isinstance(key, str) and key.startswith(self._prefix)}

    def __getitem__(self, key: str):
        if key not in self._keys:
            raise KeyError(key)
        return self._store[self._prefix + key]

    def __contains__(self, key: object) -> bool:
        return key in self._keys

    def __setitem__(self, key: str, value) -> None:
        full = self._prefix + key
        self._store[full] = value
        self._keys.add(key)
        self._outbox.append((self._table, self._partition, full, value))

    def __delitem__(self, key: str) -> None:
        if key not in self._keys:
            raise KeyError(key)
        full = self._prefix + key
        del self._store[full]
        self._keys.discard(key)
        self._outbox.append((self._table, self._partition, full, None))

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._keys))

    def __len__(self) -> int:
        return len(self._keys)

    def forget(self) -> None:
        """Drop this partition's rows from the local store only (the partition moved away; its
        new owner recovers them from the changelog, and so does this worker if it comes back)."""
        for key in list(self._keys):
            self._store.pop(self._prefix + key, None)
        self._keys.clear()


class PartitionJoin:
    """The :class:`LabelJoin` of one partition over its rows of the joiner's tables."""

    def __init__(self, tables: dict, partition: int, config: JoinConfig, outbox: list) -> None:
        self.partition = partition
        self.views = {name: PartitionTable(tables[name], partition, outbox) for name in TABLES}
        self._watermarks = self.views["watermarks"]
        self.join = LabelJoin(
            config, pending=self.views["pending"], impressions=self.views["impressions"],
            closed=self.views["closed"], watermark_ms=self._watermarks.get(WATERMARK_KEY),
        )

    def save_watermark(self) -> None:
        if self._watermarks.get(WATERMARK_KEY) != self.join.watermark_ms:
            self._watermarks[WATERMARK_KEY] = self.join.watermark_ms


class JoinTables:
    """The joiner's four tables and the joins of the partitions this worker owns."""

    def __init__(self, app, partitions: int, config: JoinConfig, source_topic: str) -> None:
        self.config = config
        self.source_topic = source_topic
        self.tables = {
            name: app.Table(f"joiner-{name}", default=None, partitions=partitions,
                            key_type=str, value_type=None)
            for name in TABLES
        }
        self.owned: set[int] = set()  # partitions of the inputs assigned to this worker
        self._joins: dict[int, PartitionJoin] = {}
        self._outbox: list = []

    def on_assigned(self, assigned) -> None:
        """A rebalance ended its assignment phase: forget the partitions that moved away and drop
        every join (each is rebuilt from its recovered rows on first use)."""
        owned = {tp.partition for tp in assigned if tp.topic == self.source_topic}
        for partition in self.owned - owned:
            for table in self.tables.values():
                PartitionTable(table, partition, []).forget()
            log.info("joiner: partition %d moved away", partition)
        self._joins.clear()
        self.owned = owned

    def join(self, partition: int) -> PartitionJoin | None:
        """The join of an owned partition (None for one this worker no longer owns)."""
        if partition not in self.owned:
            return None
        found = self._joins.get(partition)
        if found is None:
            found = self._joins[partition] = PartitionJoin(self.tables, partition, self.config, self._outbox)
            log.info("joiner: partition %d resumed with %d open windows, watermark %d",
                     partition, len(found.join.pending), found.join.watermark_ms)
        return found

    def pending_requests(self) -> int:
        return sum(len(found.join.pending) for found in self._joins.values())

    def send_changelog(self) -> None:
        """Send every queued table write to its partition's changelog (see the module docstring)."""
        queued, self._outbox[:] = list(self._outbox), []
        for table, partition, key, value in queued:
            if value is None:
                table.send_changelog(partition, key, None, value_serializer="raw")
            else:
                table.send_changelog(partition, key, value)
