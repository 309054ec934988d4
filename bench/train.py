"""Training throughput of the student learner: (request, item) samples per second.

Batches of synthetic requests (default 32 requests x 20 items, default model sizes) are built
before timing; each run times ``learn_many`` over ``--batches`` batches after a warm-up, and the
JSON reports the median over ``--runs`` runs.

With ``--world-size W`` the same is measured for a data-parallel group (``models.sharded``): W
processes on loopback (gloo), each learning its own batches of the same size in lock-step; the
group's rate is every rank's samples over the slowest rank's time. A single learner is measured
in the same run, before and after the group, and ``speedup`` is the group's rate over its mean.

    python -m bench.train --json train.json          # or: prerank bench train --json PATH
    prerank bench train --world-size 2 --json train-group.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from core.ports import free_port
from models.learner import StudentLearner
from models.synthetic import SyntheticRequests
from models.two_tower import TwoTowerConfig

REPO = Path(__file__).resolve().parent.parent


def measure(requests: int, items: int, batches: int, runs: int, warmup: int, seed: int) -> dict:
    config = TwoTowerConfig()
    generator = SyntheticRequests(seed=seed, items_per_request=items)
    data = [generator.batch(requests) for _ in range(warmup + batches)]
    samples_per_batch = [sum(s.n_items for s in batch) for batch in data]
    rates = []
    for _ in range(runs):
        learner = StudentLearner(config)
        for batch in data[:warmup]:
            learner.learn_many(batch)
        start = time.perf_counter()
        for batch in data[warmup:]:
            learner.learn_many(batch)
        elapsed = time.perf_counter() - start
        rates.append(sum(samples_per_batch[warmup:]) / elapsed)
    return {
        "samples_per_s": statistics.median(rates),
        "samples_per_s_runs": rates,
        "requests_per_batch": requests,
        "items_per_request": items,
        "batches_timed": batches,
        "runs": runs,
        "embedding_dim": config.embedding_dim,
        "hidden_sizes": list(config.hidden_sizes),
        "output_dim": config.output_dim,
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


def measure_rank(requests: int, items: int, batches: int, warmup: int, seed: int, rank: int, world_size: int,
                 master_port: int) -> dict:
    """One rank of a group: its samples and its time over the timed batches (run in a child process)."""
    import torch.distributed as dist

    from models.collective import Collective

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{master_port}", rank=rank, world_size=world_size)
    try:
        collective = Collective.from_default_group()
        generator = SyntheticRequests(seed=seed + rank, items_per_request=items)
        data = [generator.batch(requests) for _ in range(warmup + batches)]
        learner = StudentLearner(TwoTowerConfig()).join(collective)
        for batch in data[:warmup]:
            learner.learn_many(batch)
        collective.all_ints([0])  # every rank starts the clock together
        start = time.perf_counter()
        for batch in data[warmup:]:
            learner.learn_many(batch)
        collective.all_ints([0])
        elapsed = time.perf_counter() - start
    finally:
        dist.destroy_process_group()
    return {"rank": rank, "samples": sum(s.n_items for batch in data[warmup:] for s in batch), "elapsed_s": elapsed}


def measure_group(requests: int, items: int, batches: int, warmup: int, seed: int, world_size: int,
                  threads: int) -> dict:
    """Every rank in a child process of its own; the group's rate over the slowest rank."""
    port = free_port()
    children = [
        subprocess.Popen(
            [sys.executable, "-m", "bench.train", "--rank", str(rank), "--world-size", str(world_size),
             "--master-port", str(port), "--requests", str(requests), "--items", str(items),
             "--batches", str(batches), "--warmup", str(warmup), "--seed", str(seed), "--threads", str(threads)],
            cwd=REPO, stdout=subprocess.PIPE, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        for rank in range(world_size)
    ]
    ranks = []
    for child in children:
        out, _ = child.communicate(timeout=1800)
        if child.returncode != 0:
            raise RuntimeError(f"bench.train rank exited with {child.returncode}")
        ranks.append(json.loads(out.decode().strip().splitlines()[-1]))
    slowest = max(r["elapsed_s"] for r in ranks)
    return {"samples_per_s": sum(r["samples"] for r in ranks) / slowest, "ranks": ranks}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.train", description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="write the result to this file")
    parser.add_argument("--quick", action="store_true", help="few batches, one run (CI)")
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--items", type=int, default=20)
    parser.add_argument("--batches", type=int, default=100)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--world-size", type=int, default=1, help="trainers in a data-parallel group")
    parser.add_argument("--rank", type=int, default=None, help=argparse.SUPPRESS)  # a group's child process
    parser.add_argument("--master-port", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--warmup", type=int, default=5, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    batches, runs, warmup = (10, 1, 2) if args.quick else (args.batches, args.runs, args.warmup)
    if args.rank is not None:
        torch.set_num_threads(args.threads)
        print(json.dumps(measure_rank(args.requests, args.items, batches, warmup, args.seed, args.rank,
                                      args.world_size, args.master_port)))
        return 0
    if args.world_size > 1:
        # Each rank gets a core of its own: one torch thread per process, as the trainer workers run.
        torch.set_num_threads(1)
        before = measure(args.requests, args.items, batches, 1, warmup, args.seed)
        group = measure_group(args.requests, args.items, batches, warmup, args.seed, args.world_size, 1)
        after = measure(args.requests, args.items, batches, 1, warmup, args.seed)
        single = (before["samples_per_s"] + after["samples_per_s"]) / 2
        result = {**before, "samples_per_s": group["samples_per_s"], "single_samples_per_s": single,
                  "single_samples_per_s_runs": [before["samples_per_s"], after["samples_per_s"]],
                  "speedup": group["samples_per_s"] / single, "world_size": args.world_size,
                  "ranks": group["ranks"], "torch_threads_per_process": 1, "cpu_count": os.cpu_count()}
        del result["samples_per_s_runs"], result["runs"]
    else:
        torch.set_num_threads(args.threads)
        result = measure(args.requests, args.items, batches, runs, warmup, args.seed)
    text = json.dumps(result, indent=2)
    if args.json:
        args.json.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
