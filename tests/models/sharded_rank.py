"""One rank of the two-rank learning test (``test_sharded.py`` starts it as a process).

Rank r learns every step's requests ``r::world`` (rank 1 none in the steps listed by ``--idle``);
rank 0 then assembles the group's model, learns the same steps' whole batches with a lone learner,
and writes both models' scores on held-out requests to ``--out`` (``.npz``, no pickle).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def main() -> None:
    import numpy as np
    import torch
    import torch.distributed as dist

    from models.collective import Collective
    from models.learner import StudentLearner
    from models.losses import StudentObjective
    from models.sharded import assemble, shard_bytes
    from models.synthetic import SyntheticRequests
    from models.two_tower import TwoTowerConfig

    parser = argparse.ArgumentParser()
    parser.add_argument("--rank", type=int, required=True)
    parser.add_argument("--world-size", type=int, required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--idle", default="")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    torch.set_num_threads(1)
    idle = {int(step) for step in args.idle.split(",") if step}
    config = TwoTowerConfig(embedding_dim=8, hidden_sizes=(32, 32), output_dim=16, min_count=1)
    generator = SyntheticRequests(seed=5, items_per_request=10, n_items=600)
    steps = [generator.batch(16) for _ in range(args.steps)]
    held_out = generator.batch(4)

    def learner() -> StudentLearner:
        return StudentLearner(config, objective=StudentObjective(mode="cascade"))

    def part(step: int, batch: list, rank: int) -> list:
        if step in idle:
            return batch if rank == 0 else []
        return batch[rank::args.world_size]

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{args.port}", rank=args.rank,
                            world_size=args.world_size)
    group = learner().join(Collective.from_default_group())
    for step, batch in enumerate(steps):
        group.learn_many(part(step, batch, args.rank))
    shards = group.collective.gather(shard_bytes(group.student.tables))
    owned = {name: len(table.id_map) for name, table in group.student.tables.items()}
    dist.destroy_process_group()
    if args.rank != 0:
        return
    group.student.tables = assemble(group.student.tables, shards)
    alone = learner()
    for step, batch in enumerate(steps):
        alone.learn_many([s for rank in range(args.world_size) for s in part(step, batch, rank)])
    score = lambda model: np.concatenate([model.score(s.user, s.items) for s in held_out])  # noqa: E731
    np.savez(args.out, group=score(group), alone=score(alone), steps=np.array([group.step, alone.step]),
             rows_group=np.array([len(t.id_map) for t in group.student.tables.values()]),
             rows_alone=np.array([len(t.id_map) for t in alone.student.tables.values()]),
             rows_rank0=np.array(list(owned.values())))


if __name__ == "__main__":
    main()
