"""FTRL's l1 against all-zero embedding rows, export size and quality, on one request stream.

For each ``l1`` a fresh student (impressions mode: click and long-view labels) learns the same
requests in event-time order; the progressive AUC on long view (the learner's pre-update logits,
so every exposure is scored before it is learned) is set against the share of all-zero embedding
rows and the pruned export's size. ``prerank replay`` runs it on the replayed requests for the
report's "zero-row ratio vs l1" plot; ``prerank bench sparsity`` runs it alone.

>>> import warnings
>>> from replay.synthetic import SyntheticConfig, generate
>>> with warnings.catch_warnings():
...     warnings.simplefilter("ignore")
...     data = generate(SyntheticConfig(n_users=40, n_items=200, days=2))
>>> from replay.grouping import group_requests
>>> samples = request_samples(data, group_requests(data.exposures)[:150])
>>> loose, sparse = (run_one(samples, l1) for l1 in (0.0, 5.0))
>>> loose["zero_row_ratio"], sparse["zero_row_ratio"] > 0.5
(0.0, True)
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

from funnel.metrics import auc
from models.export import size_report
from models.ftrl import FTRLConfig
from models.learner import StudentLearner
from models.losses import StudentObjective
from models.two_tower import TwoTowerConfig
from replay.state import ReplayState
from replay.stream import StreamConfig

DEFAULT_L1 = (0.0, 0.1, 0.5, 1.0, 2.0)


def request_samples(dataset, requests) -> list:
    """Training samples of ``requests`` (exposed items and their feedback), users' histories built
    from the requests before each one."""
    state = ReplayState(dataset, StreamConfig(train_until_ms=0, eval_from_ms=0))
    samples = []
    for request in requests:
        samples.append(state.logged_sample(request, state.snapshot(request)))
        state.after(request)
    return samples


def learn_progressively(learner: StudentLearner, samples, batch: int = 64,
                        warmup_share: float = 0.5) -> tuple[list[int], list[float]]:
    """Learn ``samples`` in order in micro-batches of ``batch``; return the long-view labels and the
    pre-update logits (scored before learned) of the exposures after the first ``warmup_share``."""
    labels, scores = [], []
    start_eval = int(len(samples) * warmup_share)
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
    return labels, scores


def run_one(samples, l1: float, batch: int = 64, warmup_share: float = 0.5) -> dict:
    """One fresh student at ``l1``; AUC counts the exposures after the first ``warmup_share``."""
    learner = StudentLearner(TwoTowerConfig(min_count=1), objective=StudentObjective(mode="impressions"),
                             ftrl=FTRLConfig(l1=l1))
    started = time.perf_counter()
    labels, scores = learn_progressively(learner, samples, batch, warmup_share)
    report = size_report(learner)
    return {"l1": l1, "auc_long_view": auc(labels, scores), "eval_exposures": len(labels),
            "zero_row_ratio": report["zero_row_ratio"], "export_bytes": report["bytes_after"],
            "export_bytes_unpruned": report["bytes_before"], "export_size_reduction": report["reduction"],
            "learn_s": time.perf_counter() - started}


def sweep(samples, l1_values: Sequence[float] = DEFAULT_L1, batch: int = 64, warmup_share: float = 0.5) -> list[dict]:
    """:func:`run_one` per ``l1``, with each one's AUC loss against the smallest ``l1``."""
    results = [run_one(samples, float(l1), batch, warmup_share) for l1 in l1_values]
    reference = min(results, key=lambda r: r["l1"])
    for result in results:
        result["auc_loss_vs_smallest_l1"] = reference["auc_long_view"] - result["auc_long_view"]
    return results


def plot(results: Sequence[dict], path: Path, modes: dict[str, dict] | None = None) -> None:
    """Zero-row ratio and export cut (left axis) and AUC (right) against l1; the streamed modes'
    own zero-row ratio at their l1 as extra points."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    l1 = [r["l1"] for r in results]
    fig, left = plt.subplots(figsize=(7, 4))
    left.plot(l1, [r["zero_row_ratio"] for r in results], marker="o", label="all-zero rows")
    left.plot(l1, [r["export_size_reduction"] for r in results], marker="s", label="export size cut")
    for name, point in (modes or {}).items():
        left.scatter([point["l1"]], [point["zero_row_ratio"]], marker="x", s=60, label=f"{name} (streamed)")
    left.set_xlabel("FTRL l1")
    left.set_ylim(0, 1.05)
    right = left.twinx()
    right.plot(l1, [r["auc_long_view"] for r in results], marker="^", color="black", label="AUC long view")
    right.set_ylabel("progressive AUC (long view)")
    fig.legend(loc="lower center", ncol=3, fontsize=8)
    fig.tight_layout(rect=(0, 0.12, 1, 1))
    fig.savefig(path)
    plt.close(fig)
