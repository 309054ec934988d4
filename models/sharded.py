"""Data-parallel learning of the student: dense weights replicated, embedding rows sharded.

Each trainer of a group learns its own micro-batch in the same collective step
(:func:`learn_sharded`, called by :meth:`StudentLearner.learn_many` once the learner has joined a
group of more than one rank):

* **embedding rows** are owned by one rank each, chosen by a stable hash of the id
  (:func:`owner_of`), so FTRL's ``z`` and ``n`` of a row live in one place and are never split.
  A step sends every id it reads to its owner (one exchange for all tables), the owner admits,
  touches and reads the rows and answers with their values; after the backward pass the rows'
  gradients go back to their owners, which sum them over the group and apply FTRL (torchrec's
  row-wise sharding, over this project's dynamic tables: admission and eviction stay per owner);
* **dense weights** are the same on every rank: their gradients are all-reduced (weighted by each
  rank's pairs, so the step is the one a single learner takes on the union of the micro-batches),
  then every rank takes the same AdaGrad step.

All ranks read one clock (the group's latest event time), so admission and TTL agree. A rank
with nothing to learn still takes part (an empty micro-batch): it owns rows the others read.
:func:`shard_bytes` / :func:`assemble` turn every rank's rows into one model for publishing.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Sequence
from functools import lru_cache
from itertools import repeat

import msgpack
import numpy as np
import safetensors.torch
import torch
import torch.nn.functional as F

from models.embedding import EmbeddingTable
from models.features import RequestSample
from models.ftrl import FTRLProximal
from models.id_map import DynamicIdMap


@lru_cache(maxsize=1 << 20)  # ids recur step after step; a crc32 per sighting cost ~1 ms per step
def owner_of(raw_id: str, world_size: int) -> int:
    """The rank owning ``raw_id``'s rows: a hash that is the same in every process (not ``hash``).

    >>> owner_of("item-7", 2) == owner_of("item-7", 2), owner_of("x", 1)
    (True, 0)
    """
    return zlib.crc32(raw_id.encode()) % world_size if world_size > 1 else 0


class ShardedLookup:
    """The student's pooled lookups when each rank holds only the rows it owns.

    Implements :meth:`~models.sparse.SparseLookup.pool_slots` (what the student's ``forward``
    calls) with one exchange of ids and one of rows for all tables, and
    :meth:`apply_row_grads` for the optimiser step.
    """

    def __init__(self, tables: dict[str, EmbeddingTable], now: int, collective, pairs: int = 0) -> None:
        self.tables = tables
        self.now = now  # this rank's clock until the exchange, then the group's (the latest)
        self.pairs = pairs  # this rank's pairs until the exchange, then the group's
        self.collective = collective
        self.names = list(tables)  # the same order on every rank (models.tokens.TABLES)
        self._leaves: dict[str, tuple[torch.Tensor, list[int]]] = {}  # table -> (leaf, rows per owner)
        self._lent: dict[str, list[torch.Tensor]] = {}  # table -> per requesting rank, the unique rows lent

    def pool_slots(self, slots: Sequence[tuple[str, Sequence[Sequence[str]]]]) -> list[torch.Tensor]:
        """Mean of each list's rows for every ``(table_name, id_lists)`` slot, as ``SparseLookup``."""
        world = self.collective.world_size
        members: dict[str, list[int]] = {name: [] for name in self.names}
        for position, (table_name, _) in enumerate(slots):
            members[table_name].append(position)
        bags_by_table = {name: [ids for m in members[name] for ids in slots[m][1]] for name in self.names}
        flat_by_table, owner_positions = {}, {}
        requests: list[list[list[str]]] = [[] for _ in range(world)]
        for name in self.names:
            flat = [raw_id for ids in bags_by_table[name] for raw_id in ids]
            owners = np.fromiter(map(owner_of, flat, repeat(world)), dtype=np.int64, count=len(flat))
            flat_by_table[name] = flat
            for rank in range(world):
                positions = np.flatnonzero(owners == rank)
                owner_positions[name, rank] = positions
                requests[rank].append([flat[p] for p in positions.tolist()])
        # Every rank's clock and pair count ride with its ids: the step needs no other collective to agree on them.
        asked = [msgpack.unpackb(m) for m in self.collective.exchange(
            [msgpack.packb([self.now, self.pairs, *r]) for r in requests])]
        self.now, self.pairs = max(a[0] for a in asked), sum(a[1] for a in asked)
        asked = [a[2:] for a in asked]
        answers = [msgpack.unpackb(m) for m in self.collective.exchange(self._lend(asked))]

        out: list[torch.Tensor] = [torch.empty(0)] * len(slots)
        for t, name in enumerate(self.names):
            table, bags = self.tables[name], bags_by_table[name]
            if not members[name]:
                continue
            if not flat_by_table[name]:
                pooled = torch.zeros(len(bags), table.dim)
            else:
                index = np.empty(len(flat_by_table[name]), dtype=np.int64)
                vectors, counts, offset = [], [], 0
                for rank in range(world):
                    inverse_bytes, rows_bytes = answers[rank][t]
                    index[owner_positions[name, rank]] = np.frombuffer(inverse_bytes, dtype=np.int32) + offset
                    rows = np.frombuffer(rows_bytes, dtype=np.float32).reshape(-1, table.dim)
                    vectors.append(rows)
                    counts.append(rows.shape[0])
                    offset += rows.shape[0]
                leaf = torch.from_numpy(np.concatenate(vectors)).requires_grad_(True)
                self._leaves[name] = (leaf, counts)
                lengths = np.fromiter(map(len, bags), dtype=np.int64, count=len(bags))
                offsets = torch.from_numpy(np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64))
                pooled = F.embedding_bag(torch.from_numpy(index), leaf, offsets, mode="mean")
            for member, part in zip(members[name], pooled.split([len(slots[m][1]) for m in members[name]])):
                out[member] = part
        return out

    def _lend(self, asked: list[list[list[str]]]) -> list[bytes]:
        """As owner: admit and read the rows every rank asked for; one answer per rank."""
        answers: list[list[list[bytes]]] = [[] for _ in asked]
        for t, name in enumerate(self.names):
            table = self.tables[name]
            ids = [raw_id for request in asked for raw_id in request[t]]
            # One lookup of every rank's ids, in rank order: sightings count as one learner's would.
            rows = table.lookup(ids, now=self.now, learn=True) if ids else np.zeros(0, dtype=np.int64)
            lent, start = [], 0
            for rank, request in enumerate(asked):
                mine = rows[start:start + len(request[t])]
                start += len(request[t])
                unique, inverse = np.unique(mine, return_inverse=True)
                unique_rows = torch.from_numpy(unique)
                lent.append(unique_rows)
                values = table.weight.index_select(0, unique_rows).numpy()
                answers[rank].append([inverse.astype(np.int32).tobytes(), values.astype(np.float32).tobytes()])
            self._lent[name] = lent
        return [msgpack.packb(answer) for answer in answers]

    def apply_row_grads(self, ftrl: FTRLProximal, row_grad_scale: float) -> None:
        """Send each row's gradient (times ``row_grad_scale``) to its owner; owners apply FTRL
        to the group's summed gradients of their rows. Collective: every rank calls it."""
        world = self.collective.world_size
        outgoing: list[list[bytes]] = [[] for _ in range(world)]
        for name in self.names:
            leaf, counts = self._leaves.get(name, (None, [0] * world))
            grads = leaf.grad if leaf is not None and leaf.grad is not None else torch.zeros(sum(counts), self.tables[name].dim)
            for rank, part in enumerate(torch.split(grads * row_grad_scale, counts)):
                outgoing[rank].append(part.numpy().astype(np.float32).tobytes())
        received = [msgpack.unpackb(m) for m in self.collective.exchange([msgpack.packb(o) for o in outgoing])]
        for t, name in enumerate(self.names):
            table, lent = self.tables[name], self._lent[name]
            rows = torch.cat(lent)
            if rows.numel() == 0:
                continue
            grads = torch.from_numpy(np.concatenate([
                np.frombuffer(received[rank][t], dtype=np.float32).reshape(-1, table.dim) for rank in range(world)
            ]))
            unique, inverse = torch.unique(rows, return_inverse=True)
            summed = torch.zeros(unique.shape[0], table.dim)
            summed.index_add_(0, inverse, grads)
            ftrl.step(table, unique, summed)


def learn_sharded(learner, samples: Sequence[RequestSample]) -> dict[str, float]:
    """One collective step of ``learner`` (a :class:`~models.learner.StudentLearner` that joined a
    group) on this rank's ``samples``; see the module docstring. Returns the local loss parts."""
    from models.learner import flatten_pairs
    from models.losses import PairLabels

    collective = learner.collective
    samples = [s for s in samples if s.n_items > 0]
    n_pairs = sum(s.n_items for s in samples)
    unique_items, request_index, item_index = flatten_pairs(samples)
    clock = max(learner.clock_ms, *(int(s.ts_ms) for s in samples)) if samples else learner.clock_ms
    lookup = ShardedLookup(learner.student.tables, clock, collective, n_pairs)
    logits = learner.student([s.user for s in samples], unique_items, request_index, item_index, lookup)
    learner.clock_ms = lookup.now
    if lookup.pairs == 0:  # nothing anywhere (no id was sighted either): no step, as a lone learner
        return {"loss": 0.0, "n_pairs": 0.0}
    learner.last_pair_logits = logits.detach().numpy().copy()
    grads = _flat_grads(learner.student)
    metrics: dict[str, float] = {"loss": 0.0}
    if n_pairs:
        loss, metrics = learner.objective(logits, PairLabels.from_samples(samples), learner.step, None)
        # This rank's share of the mean over the group's pairs: the all-reduced sum is the gradient
        # of one step on the union of the micro-batches.
        (loss * (n_pairs / lookup.pairs)).backward()
        _keep_in(grads, learner.student)
    # The dense all-reduce runs in the background while the rows go to their owners.
    reduction = collective.sum_in_background(grads)
    lookup.apply_row_grads(learner.optimizer.ftrl, float(lookup.pairs))  # summed per-pair gradients
    reduction.wait()
    learner.optimizer.dense.step()
    learner.end_step()
    metrics["n_pairs"] = float(n_pairs)
    return metrics


def _flat_grads(module: torch.nn.Module) -> torch.Tensor:
    """One zeroed buffer holding every dense gradient (each ``.grad`` a view into it), so the
    backward pass accumulates straight into what the all-reduce sends: no copy either way."""
    parameters = list(module.parameters())
    buffer = getattr(module, "_flat_grad_buffer", None)
    if buffer is None or buffer.numel() != sum(p.numel() for p in parameters):
        buffer = torch.zeros(sum(p.numel() for p in parameters))
        module._flat_grad_buffer = buffer
    buffer.zero_()
    start = 0
    for parameter in parameters:
        view = buffer[start:start + parameter.numel()].view_as(parameter)
        if parameter.grad is None or parameter.grad.data_ptr() != view.data_ptr():
            parameter.grad = view
        start += parameter.numel()
    return buffer


def _keep_in(buffer: torch.Tensor, module: torch.nn.Module) -> None:
    """Copy back any gradient autograd replaced instead of accumulating into its view."""
    start = 0
    for parameter in module.parameters():
        view = buffer[start:start + parameter.numel()].view_as(parameter)
        if parameter.grad.data_ptr() != view.data_ptr():
            view.copy_(parameter.grad)
            parameter.grad = view
        start += parameter.numel()


# ---------------------------------------------------------------------------- publishing
SHARD_FORMAT = "prerank.student_shard/1"


def shard_bytes(tables: dict[str, EmbeddingTable]) -> bytes:
    """This rank's rows of every table (fallback row first, then admitted rows), for :func:`assemble`."""
    tensors, ids = {}, {}
    for name, table in tables.items():
        pairs = table.id_map.items()
        rows = torch.tensor([row for _, row in pairs], dtype=torch.int64)
        tensors[name] = torch.cat([table.weight[:1], table.weight.index_select(0, rows)]).contiguous()
        ids[name] = [raw_id for raw_id, _ in pairs]
    return safetensors.torch.save(tensors, metadata={"format": SHARD_FORMAT, "ids": json.dumps(ids)})


def assemble(template: dict[str, EmbeddingTable], shards: Sequence[bytes]) -> dict[str, EmbeddingTable]:
    """One set of tables from every rank's :func:`shard_bytes` (ids are disjoint across ranks; the
    fallback row is the ranks' mean). ``template`` gives each table's ``dim`` and ``ttl``."""
    from models.learner import _read_metadata

    loaded = [(safetensors.torch.load(blob), json.loads(_read_metadata(blob, SHARD_FORMAT)["ids"])) for blob in shards]
    tables = {}
    for name, like in template.items():
        fallback = torch.stack([weights[name][0] for weights, _ in loaded]).mean(dim=0, keepdim=True)
        weight = torch.cat([fallback, *(weights[name][1:] for weights, _ in loaded)])
        all_ids = [raw_id for _, ids in loaded for raw_id in ids[name]]
        id_map = DynamicIdMap.frozen({raw_id: row + 1 for row, raw_id in enumerate(all_ids)}, weight.shape[0])
        table = EmbeddingTable(like.dim, id_map, like.ttl)
        table.weight = weight
        tables[name] = table
    return tables


def assembled_learner(learner, shards: Sequence[bytes]):
    """A :class:`~models.learner.StudentLearner` holding every rank's rows and ``learner``'s dense
    weights (equal on every rank): the model a group publishes. Not for training (no optimiser state)."""
    from models.learner import StudentLearner

    whole = StudentLearner(learner.config, learner.objective)
    whole.student.load_state_dict(learner.student.state_dict())
    whole.student.tables = assemble(learner.student.tables, shards)
    whole.step, whole.clock_ms = learner.step, learner.clock_ms
    return whole
