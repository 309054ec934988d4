"""One trainer vs a data-parallel group of trainers on the real broker: same stream, same run.

Both arms learn the same synthetic ``training-samples`` records (produced once per arm to its own
topics, keyed by user as the joiner keys them) with the real trainer workers: ``single`` is one
``prerank worker --agents trainer``, ``group`` is ``--world-size W`` processes over gloo on loopback
(rank 0 also publishing). An arm ends when its checkpoints (the group's manifest) hold every
record; its model is then read back from them (the group's assembled from every rank's shard) and
scored on the same held-out requests of 1000 candidates each:

- long-view AUC over the exposed candidates;
- consistency recall@100: the share of the reference ranker's top-10 (the generator's hidden
  affinity, which drives feedback and the teacher logits) kept in the student's top-100.

The JSON has both arms, the differences (targets: |AUC| <= 0.002, |recall| <= 0.01, issue 16) and
each arm's records/s from its first to its last learned record.

    prerank bench trainer-group --json bench/results/trainer-group.json
"""

from __future__ import annotations

import argparse
import sys
import time
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from bench.common import (
    emit,
    environment,
    private_stack,
    produce_training_samples,
    running_workers,
    wait_until,
    with_changes,
)
from core.ports import free_port
from core.settings import Settings, load_settings
from funnel.metrics import auc, consistency_recall
from funnel.checkpoint import Checkpoint, CheckpointDir
from funnel.trainer_group import manifest_checkpoints
from funnel.training import MODEL_FILE
from models.learner import StudentLearner
from models.sharded import assemble, shard_bytes
from models.synthetic import SyntheticRequests

TARGETS = {"long_view_auc_abs_diff": 0.002, "recall_at_100_abs_diff": 0.01}


@dataclass(frozen=True)
class GroupBenchConfig:
    requests: int = 8000
    items_per_request: int = 20
    users: int = 300  # ~27 requests per user: enough for the user rows to learn each user's taste
    eval_requests: int = 500
    eval_candidates: int = 1000
    world_size: int = 2
    seed: int = 0
    timeout_s: float = 900.0


def stream(config: GroupBenchConfig):
    """The training records and the held-out requests (one hidden world: the same seed)."""
    from funnel.convert import record_from_sample

    world = {"seed": config.seed, "n_users": config.users}
    train = SyntheticRequests(**world, items_per_request=config.items_per_request).batch(config.requests)
    held_out = SyntheticRequests(**world, items_per_request=config.eval_candidates)
    held_out._clock_ms = train[-1].ts_ms  # after the stream, in the same world
    return [record_from_sample(s) for s in train], held_out.batch(config.eval_requests)


def rank_roots(settings: Settings, world_size: int) -> list[Path]:
    root = settings.worker.checkpoint_dir
    return [root] if world_size == 1 else [root / f"rank-{rank}" for rank in range(world_size)]


def checkpoints(settings: Settings, world_size: int) -> list[Checkpoint] | None:
    """The single trainer's latest checkpoint, or the ones the group's manifest names."""
    roots = rank_roots(settings, world_size)
    if world_size == 1:
        latest = CheckpointDir(roots[0]).latest()
        return None if latest is None else [latest]
    return manifest_checkpoints(roots)


def learned_records(settings: Settings, world_size: int) -> int:
    return sum(c.counters["records"] for c in checkpoints(settings, world_size) or [])


def trained_model(settings: Settings, world_size: int) -> StudentLearner:
    """The model in the checkpoints; a group's assembled from every rank's shard."""
    shards = [StudentLearner.load(c.folder / MODEL_FILE) for c in checkpoints(settings, world_size)]
    whole = shards[0]
    if len(shards) > 1:
        whole.student.tables = assemble(whole.student.tables, [shard_bytes(s.student.tables) for s in shards])
    return whole


def evaluate(model: StudentLearner, held_out) -> dict:
    labels, scores, recalls = [], [], []
    for sample in held_out:
        s = model.score(sample.user, sample.items)
        shown = np.asarray(sample.long_view) >= 0
        labels.append(np.asarray(sample.long_view)[shown])
        scores.append(s[shown])
        recalls.append(consistency_recall(sample.teacher_logits["long_view"], s, n=10, k=100))
    return {"long_view_auc": auc(np.concatenate(labels), np.concatenate(scores)),
            "recall_at_100": float(np.mean(recalls)), "evaluated_exposures": int(sum(len(x) for x in labels))}


def run_arm(base: Settings, config: GroupBenchConfig, world_size: int, records, held_out) -> dict:
    from streams.training_samples import CODEC

    label = "single" if world_size == 1 else f"group{world_size}"
    with private_stack(base, label, checkpoint_interval_s=1.0, publish_interval_s=5.0) as settings:
        produce_training_samples(settings, [(r.user_id.encode(), CODEC.encode(r)) for r in records])
        folder, port = settings.worker.checkpoint_dir, free_port()
        ranks = [with_changes(settings, worker={
            "trainer_world_size": world_size, "trainer_rank": rank, "trainer_master_port": port, "checkpoint_dir": root,
        }) for rank, root in enumerate(rank_roots(settings, world_size))]
        specs = [("trainer,publisher" if rank == 0 else "trainer", rank) for rank in range(world_size)]
        started = time.monotonic()
        with _group_workers(ranks, folder.parent, specs) as workers:
            first = wait_until(lambda: learned_records(settings, world_size) > 0 and time.monotonic(), config.timeout_s,
                               f"{label}: a first checkpoint", workers)
            at_first = learned_records(settings, world_size)
            wait_until(lambda: learned_records(settings, world_size) >= len(records), config.timeout_s,
                       f"{label}: every record learned", workers, interval_s=0.2)
            done = time.monotonic()
        model = trained_model(settings, world_size)
        return {"world_size": world_size, **evaluate(model, held_out), "learn_steps": model.step,
                "records_per_s": (len(records) - at_first) / max(done - first, 1e-9),
                "wall_s": done - started, "records": len(records), "run_prefix": settings.topics.prefix}


@contextmanager
def _group_workers(ranks: list[Settings], folder: Path, specs):
    """Each rank's worker with its own settings (rank, checkpoint folder); all stopped on exit."""
    with ExitStack() as stack:
        workers = []
        for settings, spec in zip(ranks, specs):
            workers.extend(stack.enter_context(running_workers(settings, folder, spec)))
        yield workers


def measure(settings: Settings, config: GroupBenchConfig) -> dict:
    records, held_out = stream(config)
    single = run_arm(settings, config, 1, records, held_out)
    group = run_arm(settings, config, config.world_size, records, held_out)
    diffs = {"long_view_auc_abs_diff": abs(group["long_view_auc"] - single["long_view_auc"]),
             "recall_at_100_abs_diff": abs(group["recall_at_100"] - single["recall_at_100"])}
    return {"config": asdict(config), "single": single, "group": group, **diffs,
            "records_per_s_ratio": group["records_per_s"] / single["records_per_s"],
            "targets": TARGETS, "met": {key: diffs[key] <= limit for key, limit in TARGETS.items()},
            "environment": environment()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.trainer_group", description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="write the result to this file")
    parser.add_argument("--requests", type=int, default=GroupBenchConfig.requests)
    parser.add_argument("--world-size", type=int, default=GroupBenchConfig.world_size)
    parser.add_argument("--quick", action="store_true", help="a short stream (CI)")
    args = parser.parse_args(argv)
    config = GroupBenchConfig(requests=400 if args.quick else args.requests, world_size=args.world_size,
                              eval_requests=40 if args.quick else GroupBenchConfig.eval_requests)
    result = measure(load_settings(), config)
    emit(result, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
