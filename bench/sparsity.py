"""FTRL's l1 against sparsity, quality and export size, side by side in one run.

For each ``l1`` a fresh student (impressions mode: click and long-view labels) learns the same
KuaiRand requests in event-time order; the progressive AUC on long view (the learner's
pre-update logits, so every exposure is scored before it is learned) is compared with the
all-zero embedding-row ratio and the pruned export size. Writes JSON and ``sparsity.png``.

    python -m bench.sparsity --data ../shared/data/kuairand-pure --json bench/results/sparsity.json
    prerank bench sparsity --quick       # synthetic data, a smoke run
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from agents.labels import LabelConfig, build_request_sample
from models.export import size_report
from models.ftrl import FTRLConfig
from models.learner import StudentLearner
from models.losses import StudentObjective
from models.two_tower import TwoTowerConfig
from replay.grouping import group_requests
from replay.load import load_dataset
from replay.metrics import auc
from replay.stream import ReplayState, StreamConfig, feedback_of

DEFAULT_L1 = (0.0, 0.1, 0.5, 1.0, 2.0)


def samples_from(dataset, max_requests: int):
    """Training samples of the first ``max_requests`` requests (exposed items and their feedback)."""
    requests = group_requests(dataset.exposures)[:max_requests]
    state = ReplayState(dataset, StreamConfig(train_until_ms=0, eval_from_ms=0))
    samples = []
    for request in requests:
        items = [dataset.catalog[i] for i in request.item_ids]
        samples.append(build_request_sample(request.request_id, request.ts_ms, state.snapshot(request), items, (),
                                            feedback_of(request), LabelConfig(top_n=1, n_easy_negatives=0)))
        state.after(request)
    return samples


def run_one(samples, l1: float, batch: int, warmup_share: float) -> dict:
    learner = StudentLearner(TwoTowerConfig(min_count=1), objective=StudentObjective(mode="impressions"),
                             ftrl=FTRLConfig(l1=l1))
    labels, scores = [], []
    start_eval = int(len(samples) * warmup_share)
    started = time.perf_counter()
    for offset in range(0, len(samples), batch):
        chunk = samples[offset:offset + batch]
        learner.learn_many(chunk)
        if offset >= start_eval:
            position = 0
            for sample in chunk:
                for i in range(sample.n_items):
                    if sample.long_view[i] >= 0:
                        labels.append(sample.long_view[i])
                        scores.append(float(learner.last_pair_logits[position + i]))
                position += sample.n_items
    report = size_report(learner)
    return {"l1": l1, "auc_long_view": auc(labels, scores), "eval_exposures": len(labels),
            "zero_row_ratio": report["zero_row_ratio"], "export_bytes": report["bytes_after"],
            "export_bytes_unpruned": report["bytes_before"], "export_size_reduction": report["reduction"],
            "learn_s": time.perf_counter() - started}


def plot(results: Sequence[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    l1 = [r["l1"] for r in results]
    fig, left = plt.subplots(figsize=(7, 4))
    left.plot(l1, [r["zero_row_ratio"] for r in results], marker="o", label="all-zero rows")
    left.plot(l1, [r["export_size_reduction"] for r in results], marker="s", label="export size cut")
    left.set_xlabel("FTRL l1")
    left.set_ylim(0, 1)
    right = left.twinx()
    right.plot(l1, [r["auc_long_view"] for r in results], marker="^", color="black", label="AUC long view")
    right.set_ylabel("progressive AUC (long view)")
    fig.legend(loc="lower center", ncol=3, fontsize=8)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    fig.savefig(path)
    plt.close(fig)


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
    torch.set_num_threads(1)
    max_requests = 1500 if args.quick else args.max_requests
    samples = samples_from(load_dataset(args.data), max_requests)
    results = [run_one(samples, float(l1), args.batch, args.warmup_share) for l1 in args.l1.split(",")]
    baseline = next((r for r in results if r["l1"] == 0.0), results[0])
    for r in results:
        r["auc_loss_vs_l1_0"] = baseline["auc_long_view"] - r["auc_long_view"]
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
