"""The few collectives a data-parallel learner needs, over a ``torch.distributed`` process group.

Messages between trainers are bytes (msgpack and raw little-endian arrays, never pickle), moved
by ``all_to_all_single`` over ``uint8`` tensors: first every rank's sizes, then the payloads.
The group itself (``gloo`` on CPU, ``nccl`` where GPUs exist) is made by the caller, so models
never read the environment or open sockets themselves.

With ``world_size == 1`` every collective is the identity and needs no process group:

>>> solo = Collective.solo()
>>> solo.exchange([b"to myself"]), solo.all_ints([7, 1])
([b'to myself'], [[7, 1]])
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist


class Collective:
    """One rank's view of its trainer group.

    Parameters
    ----------
    rank, world_size
        This rank and the group's size.
    group
        The ``torch.distributed`` group (``None``: the default group; unused when ``world_size == 1``).
    """

    def __init__(self, rank: int, world_size: int, group: dist.ProcessGroup | None = None,
                 background_group: dist.ProcessGroup | None = None) -> None:
        self.rank = rank
        self.world_size = world_size
        self.group = group
        # A second group for the one collective that runs beside the others (the dense
        # all-reduce, overlapping the row exchange), so the two never share a channel.
        self.background_group = background_group

    @classmethod
    def solo(cls) -> Collective:
        return cls(0, 1)

    @classmethod
    def from_default_group(cls) -> Collective:
        """The default process group (``torch.distributed.init_process_group`` was called).

        Collective itself: every rank must call it (it makes the background group)."""
        return cls(dist.get_rank(), dist.get_world_size(), background_group=dist.new_group(backend="gloo"))

    def exchange(self, parts: Sequence[bytes]) -> list[bytes]:
        """Send ``parts[j]`` to rank ``j``; returns what every rank sent to this one, by rank."""
        if len(parts) != self.world_size:
            raise ValueError(f"exchange needs one part per rank ({self.world_size}), got {len(parts)}")
        if self.world_size == 1:
            return list(parts)
        sizes = torch.tensor([len(part) for part in parts], dtype=torch.int64)
        incoming = torch.empty(self.world_size, dtype=torch.int64)
        dist.all_to_all_single(incoming, sizes, group=self.group)
        payload = torch.frombuffer(bytearray(b"".join(parts)), dtype=torch.uint8) if sizes.sum() else torch.empty(0, dtype=torch.uint8)
        received = torch.empty(int(incoming.sum()), dtype=torch.uint8)
        dist.all_to_all_single(received, payload, output_split_sizes=incoming.tolist(),
                               input_split_sizes=sizes.tolist(), group=self.group)
        data = received.numpy().tobytes()
        out, start = [], 0
        for size in incoming.tolist():
            out.append(data[start:start + size])
            start += size
        return out

    def gather(self, part: bytes, root: int = 0) -> list[bytes] | None:
        """Every rank's ``part`` at ``root`` (by rank); ``None`` elsewhere."""
        received = self.exchange([part if rank == root else b"" for rank in range(self.world_size)])
        return received if self.rank == root else None

    def all_ints(self, values: Sequence[int]) -> list[list[int]]:
        """Every rank's ``values`` (the same length everywhere), by rank."""
        if self.world_size == 1:
            return [list(values)]
        mine = torch.tensor(list(values), dtype=torch.int64)
        out = [torch.empty_like(mine) for _ in range(self.world_size)]
        dist.all_gather(out, mine, group=self.group)
        return [tensor.tolist() for tensor in out]

    def sum_in_background(self, tensor: torch.Tensor):
        """Start summing ``tensor`` over the group in place; returns an object whose ``wait()``
        finishes it. The other collectives may run meanwhile."""
        if self.world_size == 1:
            return _Done()
        return dist.all_reduce(tensor, group=self.background_group, async_op=True)


class _Done:
    """What :meth:`Collective.sum_in_background` returns alone: nothing to wait for."""

    def wait(self) -> None:
        return None
