"""The Redis layout of published model versions and of the item catalog.

Keys under one prefix ``p``::

    p:current               the serving version (an integer), flipped last and atomically
    p:versions              sorted set of live versions (score = creation time)
    p:v{N}:meta             JSON: created_at_ms, n_items, dtype, dim, samples_learned
    p:v{N}:weights          the exported student (safetensors bytes, pruned)
    p:v{N}:vec:{item_id}    one item vector, raw little-endian float16 or float32
    p:item:{item_id}        catalog entry (JSON), written by the catalog agent

Everything of version N is written before ``current`` points at N, so a scorer that reads
``current`` and then version-N keys never mixes versions. Every key of a version expires.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence

import numpy as np

from core.redis import redis_client
from core.settings import RedisSettings
from models.features import ItemFeatures

CHUNK = 2000  # keys per pipelined MSET / MGET round trip


class ModelStore:
    """Reads and writes versions and the catalog; the client is injected (no settings here)."""

    def __init__(self, client, prefix: str) -> None:
        self.client = client
        self.prefix = prefix

    def key(self, *parts: object) -> str:
        return ":".join([self.prefix, *map(str, parts)])

    def vector_key(self, version: int, item_id: str) -> str:
        return f"{self.prefix}:v{version}:vec:{item_id}"

    # --- versions -------------------------------------------------------------------------
    def current_version(self) -> int | None:
        value = self.client.get(self.key("current"))
        return int(value) if value is not None else None

    def meta(self, version: int) -> dict | None:
        value = self.client.get(self.key(f"v{version}", "meta"))
        return json.loads(value) if value is not None else None

    def weights(self, version: int) -> bytes | None:
        return self.client.get(self.key(f"v{version}", "weights"))

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
        deleted_ids: Iterable[str] = (),
    ) -> None:
        """Write version ``version`` completely, then flip ``current`` to it.

        ``vectors`` has shape ``(len(item_ids), dim)`` and the dtype to store. ``deleted_ids``
        (evicted or pruned items) are removed from every older live version so no scorer can
        read them stale.
        """
        if vectors.shape[0] != len(item_ids):
            raise ValueError(f"{vectors.shape[0]} vectors for {len(item_ids)} item ids")
        prefix = self.key(f"v{version}")
        pipe = self.client.pipeline(transaction=False)
        pipe.set(f"{prefix}:weights", weights, ex=ttl_s)
        for start in range(0, len(item_ids), CHUNK):
            # execute_command skips set()'s option handling: about a quarter of the client's CPU per key.
            for item_id, row in zip(item_ids[start:start + CHUNK], vectors[start:start + CHUNK]):
                pipe.execute_command("SET", self.vector_key(version, item_id), row.tobytes(), "EX", ttl_s)
            pipe.execute()
        deleted = list(deleted_ids)
        older = [v for v in self.live_versions() if v != version]
        for old in older:
            for start in range(0, len(deleted), CHUNK):
                pipe.delete(*[self.vector_key(old, item) for item in deleted[start:start + CHUNK]])
        pipe.set(f"{prefix}:meta", json.dumps(meta), ex=ttl_s)
        pipe.execute()
        flip = self.client.pipeline(transaction=True)
        flip.set(self.key("current"), version)
        flip.zadd(self.key("versions"), {str(version): meta.get("created_at_ms", 0)})
        flip.execute()
        self._forget_expired(older)

    def _forget_expired(self, versions: Iterable[int]) -> None:
        gone = [str(v) for v in versions if not self.client.exists(self.key(f"v{v}", "meta"))]
        if gone:
            self.client.zrem(self.key("versions"), *gone)

    def vectors(self, version: int, item_ids: Sequence[str], dtype: str) -> list[np.ndarray | None]:
        """One pipelined MGET per chunk; ``None`` where the version has no vector."""
        found: list[np.ndarray | None] = []
        for start in range(0, len(item_ids), CHUNK):
            keys = [self.vector_key(version, item) for item in item_ids[start:start + CHUNK]]
            for raw in self.client.mget(keys):
                found.append(None if raw is None else np.frombuffer(raw, dtype=dtype).astype(np.float32))
        return found

    def vector_rows(self, version: int, item_ids: Sequence[str], dtype: str) -> tuple[np.ndarray, np.ndarray]:
        """The same MGETs as :meth:`vectors`, decoded at once.

        Returns ``found`` (bool ``(len(item_ids),)``) and the found vectors as float32
        ``(found.sum(), dim)``, in order: one join and one conversion instead of one
        ``frombuffer`` + ``astype`` per item and a stack in the caller.
        """
        raws: list[bytes | None] = []
        for start in range(0, len(item_ids), CHUNK):
            raws.extend(self.client.mget([self.vector_key(version, item) for item in item_ids[start:start + CHUNK]]))
        found = np.fromiter((raw is not None for raw in raws), dtype=bool, count=len(raws))
        present = [raw for raw in raws if raw is not None]
        if not present:
            return found, np.zeros((0, 0), dtype=np.float32)
        if len({len(raw) for raw in present}) != 1:
            raise ValueError(f"version {version}: item vectors of different sizes")
        flat = np.frombuffer(b"".join(present), dtype=dtype)
        return found, flat.reshape(len(present), -1).astype(np.float32)

    # --- catalog --------------------------------------------------------------------------
    def put_items(self, items: Iterable[ItemFeatures]) -> None:
        pipe = self.client.pipeline(transaction=False)
        for item in items:
            pipe.set(self.key("item", item.item_id), json.dumps(
                {"author_id": item.author_id, "tags": list(item.tags), "duration_ms": item.duration_ms}
            ))
        pipe.execute()

    def delete_item(self, item_id: str) -> None:
        self.client.delete(self.key("item", item_id))

    def items(self, item_ids: Sequence[str]) -> list[ItemFeatures | None]:
        if not item_ids:
            return []
        values = self.client.mget([self.key("item", item) for item in item_ids])
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
