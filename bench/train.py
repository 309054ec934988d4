"""Training throughput of the student learner: (request, item) samples per second.

Batches of synthetic requests (default 32 requests x 20 items, default model sizes) are built
before timing; each run times ``learn_many`` over ``--batches`` batches after a warm-up, and the
JSON reports the median over ``--runs`` runs.

    python -m bench.train --json train.json          # or: prerank bench train --json PATH
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from models.learner import StudentLearner
from models.synthetic import SyntheticRequests
from models.two_tower import TwoTowerConfig


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
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    batches, runs, warmup = (10, 1, 2) if args.quick else (args.batches, args.runs, 5)
    result = measure(args.requests, args.items, batches, runs, warmup, args.seed)
    text = json.dumps(result, indent=2)
    if args.json:
        args.json.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
