"""The Redis layout of published model versions and of the item catalog.

Keys under one prefix ``p``::

    p:current               the serving version (an integer), flipped last
    p:versions              sorted set of live versions (score = creation time)
    p:{vN}:meta             JSON: created_at_ms, n_items, dtype, dim, blocks, samples_learned, ...
    p:{vN}:weights          the exported student (safetensors bytes, pruned)
    p:{vN}:block:{b}        block b of the version's item vectors: msgpack ``{"ids": [...],
                            "rows": bytes}``, rows raw little-endian float16 or float32, row i the
                            vector of ids[i]
    p:item:{item_id}        catalog entry (JSON), written by the catalog agent
    p:catalog_ids           set of the catalog's item ids

The vectors are written in blocks because scorers read a version whole (it stays resident in
their process, ``funnel.scoring``): one MGET of a few large values instead of one key per item,
and a block's ids and rows can never disagree. Everything of version N is written before
``current`` points at N, so a scorer that reads ``current`` and then version-N keys never mixes
versions. Every key of a version expires.

On a Redis Cluster (``redis.cluster``) a version's keys share one hash slot, the ``{vN}`` hash
tag, so its pipeline of writes and the MGET of its blocks go to one node; ``current`` is a plain SET
after them (no MULTI across slots). Catalog entries spread over the slots and are read with
:func:`core.redis.mget_any`, one MGET per slot.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence

import msgpack
import numpy as np

from core.redis import mget_any, redis_client
from core.settings import RedisSettings
from models.features import ItemFeatures

BLOCK_ITEMS = 2048  # item vectors per block: ~2 MiB at 512-d float16


class ModelStore:
    """Reads and writes versions and the catalog; the client is injected (no settings here)."""

    def __init__(self, client, prefix: str) -> None:
        self.client = client
        self.prefix = prefix

    def key(self, *parts: object) -> str:
        return ":".join([self.prefix, *map(str, parts)])

    def version_key(self, version: int, part: str) -> str:
        """A key of version ``version``: hash-tagged ``{vN}``, so all of them share one cluster slot."""
        return f"{self.prefix}:{{v{version}}}:{part}"

    def block_key(self, version: int, block: int) -> str:
        return self.version_key(version, f"block:{block}")

    # --- versions -------------------------------------------------------------------------
    def current_version(self) -> int | None:
        value = self.client.get(self.key("current"))
        return int(value) if value is not None else None

    def meta(self, version: int) -> dict | None:
        value = self.client.get(self.version_key(version, "meta"))
        return json.loads(value) if value is not None else None

    def weights(self, version: int) -> bytes | None:
        return self.client.get(self.version_key(version, "weights"))

    def live_versions(self) -> list[int]:
        return [int(v) for v in self.client.zrange(self.key("versions"), 0, -1)]

    def publish(
        self,
        version: int,
        weights: bytes,
        item_ids: Sequence[str],
        vectors: np.ndarray,
        meta: dict,
        ttl_s: int,
    ) -> None:
        """Write version ``version`` completely, then flip ``current`` to it.

        ``vectors`` has shape ``(len(item_ids), dim)`` and the dtype to store; ``meta`` gains
        ``blocks`` (the number of vector blocks written), ``dim`` and ``dtype`` as written.
        """
        if vectors.shape[0] != len(item_ids):
            raise ValueError(f"{vectors.shape[0]} vectors for {len(item_ids)} item ids")
        blocks = range(0, len(item_ids), BLOCK_ITEMS)
        pipe = self.client.pipeline(transaction=False)
        pipe.set(self.version_key(version, "weights"), weights, ex=ttl_s)
        for block, start in enumerate(blocks):
            value = msgpack.packb({"ids": list(item_ids[start:start + BLOCK_ITEMS]),
                                   "rows": np.ascontiguousarray(vectors[start:start + BLOCK_ITEMS]).tobytes()},
                                  use_bin_type=True)
            pipe.set(self.block_key(version, block), value, ex=ttl_s)
        written = {"blocks": len(blocks), "dim": int(vectors.shape[1]) if vectors.ndim == 2 else 0,
                   "dtype": str(vectors.dtype) if len(item_ids) else meta.get("dtype", str(vectors.dtype))}
        pipe.set(self.version_key(version, "meta"), json.dumps({**meta, **written}), ex=ttl_s)
        pipe.execute()
        older = [v for v in self.live_versions() if v != version]
        # listed first, then served: a version in the set that is not current yet is harmless
        self.client.zadd(self.key("versions"), {str(version): meta.get("created_at_ms", 0)})
        self.client.set(self.key("current"), version)
        self._forget_expired(older)

    def _forget_expired(self, versions: Iterable[int]) -> None:
        gone = [str(v) for v in versions if not self.client.exists(self.version_key(v, "meta"))]
        if gone:
            self.client.zrem(self.key("versions"), *gone)

    def version_vectors(self, version: int, meta: dict | None = None) -> tuple[list[str], np.ndarray] | None:
        """Every item vector of a version: ``(ids, rows)``, rows of the stored dtype, shape
        ``(len(ids), dim)``, in one MGET of its blocks; None when the version (or a block of it)
        has expired. ``meta`` saves its read when the caller has it."""
        meta = self.meta(version) if meta is None else meta
        if meta is None:
            return None
        dtype, dim = meta.get("dtype", "float16"), int(meta.get("dim", 0))
        keys = [self.block_key(version, block) for block in range(int(meta.get("blocks", 0)))]
        raws = self.client.mget(keys) if keys else []
        if any(raw is None for raw in raws):
            return None
        ids: list[str] = []
        parts = []
        for raw in raws:
            block = msgpack.unpackb(raw, raw=False)
            ids.extend(block["ids"])
            parts.append(block["rows"])
        rows = np.frombuffer(b"".join(parts), dtype=dtype)
        if len(ids) and rows.size != len(ids) * dim:
            raise ValueError(f"version {version}: {rows.size} values for {len(ids)} vectors of {dim}")
        return ids, rows.reshape(len(ids), dim)

    def delete_everything(self) -> int:
        """Delete every key under the prefix (a finished run's versions and catalog); the count."""
        deleted = 0
        batch: list = []
        for key in self.client.scan_iter(match=f"{self.prefix}:*", count=1000):
            batch.append(key)
            if len(batch) == 1000:
                deleted += self.client.delete(*batch)
                batch = []
        if batch:
            deleted += self.client.delete(*batch)
        return deleted

    # --- catalog --------------------------------------------------------------------------
    def put_items(self, items: Iterable[ItemFeatures]) -> None:
        """Write items' features, and their ids into the catalog's id set (:meth:`catalog_ids`)."""
        pipe = self.client.pipeline(transaction=False)
        ids = []
        for item in items:
            pipe.set(self.key("item", item.item_id), json.dumps(
                {"author_id": item.author_id, "tags": list(item.tags), "duration_ms": item.duration_ms}
            ))
            ids.append(item.item_id)
        if ids:
            pipe.sadd(self.key("catalog_ids"), *ids)
        pipe.execute()

    def delete_item(self, item_id: str) -> None:
        pipe = self.client.pipeline(transaction=False)
        pipe.delete(self.key("item", item_id))
        pipe.srem(self.key("catalog_ids"), item_id)
        pipe.execute()

    def catalog_ids(self) -> list[str]:
        """Every item id the catalog holds (written by :meth:`put_items`), in no order."""
        return [raw.decode() if isinstance(raw, bytes) else raw for raw in self.client.smembers(self.key("catalog_ids"))]

    def items(self, item_ids: Sequence[str]) -> list[ItemFeatures | None]:
        if not item_ids:
            return []
        values = mget_any(self.client, [self.key("item", item) for item in item_ids])
        out: list[ItemFeatures | None] = []
        for item_id, raw in zip(item_ids, values):
            if raw is None:
                out.append(None)
                continue
            data = json.loads(raw)
            out.append(ItemFeatures(item_id, data["author_id"], tuple(data["tags"]), data["duration_ms"]))
        return out


def open_store(settings: RedisSettings) -> ModelStore:
    """The store on a client from the one Redis factory, under the configured key prefix."""
    return ModelStore(redis_client(settings), settings.key_prefix)
