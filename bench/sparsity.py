"""FTRL's l1 against sparsity, quality and export size, side by side in one run.

For each ``l1`` a fresh student (impressions mode) learns the same KuaiRand requests in
event-time order (:mod:`replay.sparsity`); writes JSON and ``sparsity.png``.

    python -m bench.sparsity --data ../shared/data/kuairand-pure --json bench/results/sparsity.json
    prerank bench sparsity --quick       # synthetic data, a smoke run
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path


from core.threads import limit_threads
from replay.grouping import group_requests
from replay.load import load_dataset
from replay.sparsity import DEFAULT_L1, plot, request_samples, sweep


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.sparsity", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=None, help="KuaiRand-Pure folder (default: synthetic)")
    parser.add_argument("--l1", default=",".join(map(str, DEFAULT_L1)))
    parser.add_argument("--max-requests", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--warmup-share", type=float, default=0.5, help="requests learned before AUC counts")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    limit_threads(1)
    max_requests = 1500 if args.quick else args.max_requests
    dataset = load_dataset(args.data)
    samples = request_samples(dataset, group_requests(dataset.exposures)[:max_requests])
    results = sweep(samples, [float(x) for x in args.l1.split(",")], args.batch, args.warmup_share)
    report = {"bench": "sparsity", "requests": len(samples), "results": results,
              "data": str(args.data) if args.data else "synthetic"}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))
        plot(results, args.json.with_suffix(".png"))
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
