"""A group of data-parallel trainers: who owns what, the group's checkpoint manifest, the group.

Rank ``R`` of ``W`` learns the ``training-samples`` partitions ``p`` with ``p % W == R`` (assigned
explicitly, recorded in its checkpoints as their offsets) and owns the embedding rows whose id
hashes to ``R`` (:mod:`models.sharded`). Every rank checkpoints at the same group step, each with
its own partitions' offsets, in its own folder; once every rank has saved, rank 0 writes the
*manifest* naming the step and every shard. A restarted group loads the manifest's step on every
rank, so the group resumes from a step all its shards completed: nothing lost, nothing learned twice.

>>> owned_partitions([0, 1, 2, 3, 4], rank=1, world_size=2)
[1, 3]
>>> import tempfile, pathlib
>>> root = pathlib.Path(tempfile.mkdtemp())
>>> write_manifest(root, GroupManifest(step=7, world_size=2, shards=({"rank": 0, "folder": "ckpt-00000003"},)))
>>> read_manifest(root).step, read_manifest(pathlib.Path(tempfile.mkdtemp()))
(7, None)
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from datetime import timedelta
from pathlib import Path

from core.errors import PrerankError
from core.settings import WorkerSettings
from funnel.checkpoint import Checkpoint, fsync_path
from models.collective import Collective
from models.features import ItemFeatures

MANIFEST_FILE = "GROUP-MANIFEST.json"


class TrainerGroupError(PrerankError):
    """The trainer group cannot resume or form (a missing shard checkpoint, a wrong world size)."""


def owned_partitions(partitions: Iterable[int], rank: int, world_size: int) -> list[int]:
    return sorted(p for p in partitions if p % world_size == rank)


@dataclass(frozen=True)
class GroupManifest:
    """The last group step every rank checkpointed: ``shards`` holds each rank's folder and partitions."""

    step: int
    world_size: int
    shards: tuple[dict, ...]


def write_manifest(root: Path, manifest: GroupManifest) -> None:
    """Replace the manifest atomically (write, fsync, rename, fsync of the folder)."""
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / (MANIFEST_FILE + ".tmp")
    tmp.write_text(json.dumps({**asdict(manifest), "shards": list(manifest.shards)}))
    fsync_path(tmp)
    os.replace(tmp, root / MANIFEST_FILE)
    fsync_path(root)


def read_manifest(root: Path) -> GroupManifest | None:
    path = Path(root) / MANIFEST_FILE
    if not path.exists():
        return None
    data = json.loads(path.read_text())
    return GroupManifest(int(data["step"]), int(data["world_size"]), tuple(data["shards"]))


def open_group(worker: WorkerSettings) -> Collective:
    """Join the trainers' ``torch.distributed`` group (gloo, TCP rendezvous at rank 0's address);
    blocks until every rank has joined or ``trainer_group_timeout_s`` passes."""
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group(
            "gloo", init_method=f"tcp://{worker.trainer_master_addr}:{worker.trainer_master_port}",
            rank=worker.trainer_rank, world_size=worker.trainer_world_size,
            timeout=timedelta(seconds=worker.trainer_group_timeout_s),
        )
    return Collective.from_default_group()


class SeenItems:
    """Items a non-publishing rank learned since the last version, with how often: the
    publisher's hot set counts every rank's items.

    >>> seen = SeenItems()
    >>> seen.observe([ItemFeatures("a"), ItemFeatures("a", tags=("t",))])
    >>> seen.drain(), seen.drain()
    ([['a', '', ['t'], 0, 2]], [])
    """

    def __init__(self) -> None:
        self._seen: dict[str, list] = {}

    def observe(self, items: Iterable[ItemFeatures]) -> None:
        for item in items:
            entry = self._seen.get(item.item_id)
            if entry is None:
                self._seen[item.item_id] = [item, 1]
            else:
                entry[0], entry[1] = item, entry[1] + 1

    def drain(self) -> list[list]:
        """``[item_id, author_id, tags, duration_ms, count]`` per item (msgpack-able), then forget."""
        out = [[item.item_id, item.author_id, list(item.tags), item.duration_ms, count]
               for item, count in self._seen.values()]
        self._seen = {}
        return out


def seen_items(rows: Iterable[list]) -> list[ItemFeatures]:
    """The items of :meth:`SeenItems.drain` rows, each repeated by its count."""
    return [ItemFeatures(item_id, author_id, tuple(tags), int(duration_ms))
            for item_id, author_id, tags, duration_ms, count in rows for _ in range(int(count))]


def manifest_checkpoints(rank_roots: Sequence[Path]) -> list[Checkpoint] | None:
    """Every rank's checkpoint the manifest names, by rank (``None`` before the first manifest).

    ``rank_roots[r]`` is rank ``r``'s checkpoint folder, readable here (a test, a benchmark, an
    operator's copy); the manifest is in rank 0's.
    """
    manifest = read_manifest(Path(rank_roots[0]))
    if manifest is None:
        return None
    out = []
    for shard in sorted(manifest.shards, key=lambda s: s["rank"]):
        folder = Path(rank_roots[shard["rank"]]) / shard["folder"]
        state = json.loads((folder / "offsets.json").read_text())
        out.append(Checkpoint(folder, state["offsets"], state["counters"]))
    return out
