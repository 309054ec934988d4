"""Scoring latency for 1000 candidates: cached item vectors vs the naive item tower.

Fast path (the approach): the user tower once, one dict lookup per candidate id into a cache of
item vectors (an ``(n, d)`` float32 matrix), one matmul, ``np.argpartition`` top-k.
Scorer path (what ships): :meth:`funnel.scoring.Scorer.score` on a :class:`ScoreRequest`, its
local tier warm (every candidate's vector in the LRU), including the response it builds (top-k
items, easy negatives, version check).
Naive path: the item tower over every candidate of every request, then the same matmul and
top-k. All run in the same process on the same requests (default model sizes, a briefly
trained student); the JSON reports p50/p99 in ms, ``speedup`` = naive p99 / fast p99 and
``scorer_speedup`` = naive p99 / scorer p99.

    python -m bench.score --json score.json          # or: prerank bench score --json PATH
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from funnel.metrics import top_k
from funnel.scoring import Scorer
from funnel.store import ModelStore
from models.learner import StudentLearner
from models.synthetic import SyntheticRequests
from models.two_tower import TwoTowerConfig
from streams.score_requests import ScoreRequest


class _NoVersionChange:
    """The store's client for a warm scorer: the version check finds nothing new."""

    def get(self, key):
        return None

    def mget(self, keys):
        return [None] * len(keys)


def percentiles(samples_s: list[float]) -> tuple[float, float]:
    ms = np.asarray(samples_s) * 1000.0
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 99))


def measure(candidates: int, k: int, requests: int, naive_requests: int, seed: int) -> dict:
    generator = SyntheticRequests(seed=seed, n_items=max(5_000, 2 * candidates))
    learner = StudentLearner(TwoTowerConfig(min_count=1))
    for _ in range(5):
        learner.learn_many(generator.batch(32))
    catalog = [generator.item(i) for i in range(generator.n_items)]
    cache_rows = {item.item_id: row for row, item in enumerate(catalog)}
    cache = np.ascontiguousarray(learner.served.item_vectors(catalog), dtype=np.float32)

    rng = np.random.default_rng(seed)
    users = [generator.user(int(u)) for u in rng.integers(0, generator.n_users, requests)]
    requests_items = [
        [catalog[i] for i in rng.choice(len(catalog), candidates, replace=False)] for _ in range(requests)
    ]

    def fast(user, items):
        user_vector = learner.served.user_vector(user)
        rows = np.fromiter((cache_rows[item.item_id] for item in items), dtype=np.int64, count=len(items))
        return top_k(learner.served.logits_from_vectors(user_vector, cache[rows]), k)

    def naive(user, items):
        user_vector = learner.served.user_vector(user)
        return top_k(learner.served.logits_from_vectors(user_vector, learner.served.item_vectors(items)), k)

    scorer = Scorer(ModelStore(_NoVersionChange(), "bench"), lambda _: learner.served, lru_items=len(catalog))
    scorer.model, scorer.version = learner.served, 1
    scorer.lru.put_many([item.item_id for item in catalog], cache)
    score_requests = [
        ScoreRequest(request_id=f"r{index}", user_id=user.user_id, ts_ms=0, k=k,
                     candidates=[item.item_id for item in items])
        for index, (user, items) in enumerate(zip(users, requests_items))
    ]

    for path in (fast, naive):  # warm-up
        path(users[0], requests_items[0])
    scorer.score(score_requests[0], users[0])
    agree = all(
        np.array_equal(fast(u, items), naive(u, items)) for u, items in zip(users[:5], requests_items[:5])
    )

    def top_scores(user, items):  # ties (identical synthetic items) may be ordered differently
        rows = np.fromiter((cache_rows[item.item_id] for item in items), dtype=np.int64, count=len(items))
        logits = learner.served.logits_from_vectors(learner.served.user_vector(user), cache[rows])
        return np.sort(logits)[::-1][:k]

    agree = agree and all(
        np.array_equal([i.score for i in scorer.score(r, u).items], top_scores(u, items))
        for r, u, items in zip(score_requests[:5], users[:5], requests_items[:5])
    )
    fast_times, scorer_times, naive_times = [], [], []
    for index, (user, items) in enumerate(zip(users, requests_items)):
        start = time.perf_counter()
        fast(user, items)
        fast_times.append(time.perf_counter() - start)
        start = time.perf_counter()
        scorer.score(score_requests[index], user)
        scorer_times.append(time.perf_counter() - start)
        if index < naive_requests:
            start = time.perf_counter()
            naive(user, items)
            naive_times.append(time.perf_counter() - start)
    p50, p99 = percentiles(fast_times)
    scorer_p50, scorer_p99 = percentiles(scorer_times)
    naive_p50, naive_p99 = percentiles(naive_times)
    return {
        "p50_ms": p50,
        "p99_ms": p99,
        "scorer_p50_ms": scorer_p50,
        "scorer_p99_ms": scorer_p99,
        "scorer_speedup": naive_p99 / scorer_p99,
        "naive_p50_ms": naive_p50,
        "naive_p99_ms": naive_p99,
        "speedup": naive_p99 / p99,
        "speedup_p50": naive_p50 / p50,
        "candidates": candidates,
        "k": k,
        "requests": requests,
        "naive_requests": naive_requests,
        "output_dim": learner.config.output_dim,
        "top_k_agree": agree,
        "torch_threads": torch.get_num_threads(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.score", description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="write the result to this file")
    parser.add_argument("--quick", action="store_true", help="few requests (CI)")
    parser.add_argument("--candidates", type=int, default=1000)
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--naive-requests", type=int, default=200)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (one request is one row: 1 is best)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    requests, naive_requests = (50, 20) if args.quick else (args.requests, args.naive_requests)
    result = measure(args.candidates, args.k, requests, naive_requests, args.seed)
    text = json.dumps(result, indent=2)
    if args.json:
        args.json.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
