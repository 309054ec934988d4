"""Scoring latency for 1000 candidates: the scorer that ships vs the naive item tower, with and
without version switches, side by side in one run.

Set-up: a default-size student (512-d towers) briefly trained on synthetic requests is published
(``funnel.publishing.Publisher``) with a hot set of ``--catalog`` items (default 20,000, the
default ``worker.hot_items``) to Redis under a private key prefix, ``--versions`` times (the
same model, distinct versions). A :class:`funnel.scoring.Scorer` reads the first one.

Arms, on the same requests, in alternating phases of ``--phase`` seconds:

- ``steady``: :meth:`~funnel.scoring.Scorer.score` with the version it holds (every candidate
  resident), the response included (top-k items, easy negatives);
- ``switches``: the same while ``current`` flips to the next published version every
  ``--switch-every`` seconds (2 s: the publisher's default interval) and a thread runs
  :meth:`~funnel.scoring.Scorer.refresh` every 0.5 s, as the scorer agent does: each switch reads
  the whole version (weights and every vector block) and swaps it in;
- ``naive``: the item tower over every candidate, then the same cosine and top-k.

The JSON has p50/p99 in ms per arm: ``p99_ms`` (steady), ``p99_ms_with_switches``,
``switch_p99_ratio`` (switches / steady), ``naive_p99_ms`` and ``speedup`` = naive p99 / steady
p99, the switches seen and how long a version took to load.

    python -m bench.score --json score.json          # or: prerank bench score --json PATH
    python -m bench.score --redis-cluster --json score-redis-cluster.json   # the same on a Redis Cluster
    python -m bench.score --compare-heads --json score-heads.json   # the cosine and the interaction head
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from bench.common import (
    delete_redis_keys,
    emit,
    environment,
    on_redis_cluster,
    redis_topology,
    require_stack,
    summarize,
    with_changes,
)
from core.settings import Settings, load_settings
from core.threads import limit_threads
from funnel.metrics import top_k
from funnel.publishing import Publisher
from funnel.scoring import Scorer
from funnel.store import open_store
from funnel.training import new_learner
from models.served import ServedStudent
from models.synthetic import SyntheticRequests
from streams.score_requests import ScoreRequest

TARGETS = {"p99_ms": 1.5, "speedup": 15.0, "switch_p99_ratio": 1.2}
REFRESH_EVERY_S = 0.5  # the scorer agent's version check (agents/serving.py)
SWITCH_DEADLINE_S = 60.0


@dataclass(frozen=True)
class ScoreBenchConfig:
    candidates: int = 1000
    k: int = 100
    catalog_items: int = 20_000
    phases: int = 6
    phase_s: float = 4.0
    switch_every_s: float = 2.0
    versions: int = 8
    naive_requests: int = 200
    distinct_requests: int = 1000
    seed: int = 0


class VersionFlipper(threading.Thread):
    """Points ``current`` at the next published version every ``every_s`` while ``on`` is set."""

    def __init__(self, store, versions: list[int], every_s: float) -> None:
        super().__init__(daemon=True)
        self.store, self.versions, self.every_s = store, versions, every_s
        self.on, self.halt = threading.Event(), threading.Event()
        self.flips = 0

    def run(self) -> None:
        while not self.halt.is_set():
            if self.on.wait(0.05):
                self.flips += 1
                self.store.client.set(self.store.key("current"), self.versions[self.flips % len(self.versions)])
                self.halt.wait(self.every_s)


class Refresher(threading.Thread):
    """The agent's version check: ``scorer.refresh()`` every 0.5 s, timing each switch."""

    def __init__(self, scorer: Scorer) -> None:
        super().__init__(daemon=True)
        self.scorer, self.halt = scorer, threading.Event()
        self.switch_s: list[float] = []

    def run(self) -> None:
        while not self.halt.wait(REFRESH_EVERY_S):
            started = time.perf_counter()
            if self.scorer.refresh():
                self.switch_s.append(time.perf_counter() - started)


def publish_versions(settings: Settings, config: ScoreBenchConfig, store):
    """A briefly trained default-size student, published ``versions`` times with the whole catalog."""
    generator = SyntheticRequests(seed=config.seed, n_items=config.catalog_items)
    learner = new_learner(settings)
    for _ in range(5):
        learner.learn_many(generator.batch(32))
    catalog = [generator.item(i) for i in range(config.catalog_items)]
    store.put_items(catalog)
    worker = settings.worker
    publisher = Publisher(store, hot_items=len(catalog), dtype=worker.vector_dtype, ttl_s=worker.version_ttl_s)
    publisher.hot.observe(catalog, time.monotonic())
    for _ in range(config.versions):
        published = publisher.publish(learner, learner.step)
    return generator, catalog, list(range(1, published.version + 1))


def measure(settings: Settings, config: ScoreBenchConfig) -> dict:
    store = open_store(settings.redis)
    generator, catalog, versions = publish_versions(settings, config, store)
    store.client.set(store.key("current"), versions[0])
    scorer = Scorer(store, ServedStudent.from_bytes, max_candidates=settings.worker.max_candidates,
                    max_k=settings.worker.max_k, easy_negatives=settings.model.easy_negatives)
    started = time.perf_counter()
    scorer.refresh()
    first_load_s = time.perf_counter() - started
    rng = np.random.default_rng(config.seed)
    requests = [
        ScoreRequest(request_id=f"r{index}", user_id=f"u{index % generator.n_users}", ts_ms=0, k=config.k,
                     candidates=[catalog[i].item_id for i in rng.choice(len(catalog), config.candidates, replace=False)])
        for index in range(config.distinct_requests)
    ]
    users = {r.user_id: generator.user(int(r.user_id[1:])) for r in requests}
    by_id = {item.item_id: item for item in catalog}
    for request in requests[:20]:  # warm-up
        scorer.score(request, users[request.user_id])

    model = scorer.model

    def naive(request: ScoreRequest) -> np.ndarray:
        vectors = model.item_vectors([by_id[c] for c in request.candidates])
        return top_k(model.logits_from_vectors(model.user_vector(users[request.user_id]), vectors), request.k)

    def agrees(request: ScoreRequest) -> bool:  # the vectors rounded to the stored dtype on both sides
        response = scorer.score(request, users[request.user_id])
        vectors = model.item_vectors([by_id[c] for c in request.candidates])
        vectors = vectors.astype(settings.worker.vector_dtype).astype(np.float32)
        logits = model.logits_from_vectors(model.user_vector(users[request.user_id]), vectors)
        return np.allclose([i.score for i in response.items], np.sort(logits)[::-1][: request.k], atol=1e-5)

    agree = all(agrees(r) for r in requests[:5])
    naive_s = []
    for request in requests[: config.naive_requests]:
        begun = time.perf_counter()
        naive(request)
        naive_s.append(time.perf_counter() - begun)

    flipper, refresher = VersionFlipper(store, versions, config.switch_every_s), Refresher(scorer)
    flipper.start()
    refresher.start()
    timings: dict[str, list[float]] = {"steady": [], "switches": []}
    served: dict[str, set[int]] = {"steady": set(), "switches": set()}
    index = 0
    try:
        for phase in range(config.phases):
            arm = "switches" if phase % 2 else "steady"
            (flipper.on.set if arm == "switches" else flipper.on.clear)()
            ends = time.monotonic() + config.phase_s
            # a switching phase lasts until it has seen a switch, on a machine of any speed
            while time.monotonic() < ends or (arm == "switches" and len(refresher.switch_s) < phase // 2 + 1
                                              and time.monotonic() < ends + SWITCH_DEADLINE_S):
                request = requests[index % len(requests)]
                index += 1
                begun = time.perf_counter()
                response = scorer.score(request, users[request.user_id])
                timings[arm].append(time.perf_counter() - begun)
                served[arm].add(response.model_version)
    finally:
        flipper.halt.set()
        refresher.halt.set()
        flipper.join()
        refresher.join()
    steady = summarize(timings["steady"], scale=1000.0, unit="ms")
    switching = summarize(timings["switches"], scale=1000.0, unit="ms")
    naive_summary = summarize(naive_s, scale=1000.0, unit="ms")
    result = {
        "p50_ms": steady["p50_ms"],
        "p99_ms": steady["p99_ms"],
        "p50_ms_with_switches": switching["p50_ms"],
        "p99_ms_with_switches": switching["p99_ms"],
        "switch_p99_ratio": switching["p99_ms"] / steady["p99_ms"],
        "naive_p50_ms": naive_summary["p50_ms"],
        "naive_p99_ms": naive_summary["p99_ms"],
        "speedup": naive_summary["p99_ms"] / steady["p99_ms"],
        "speedup_p50": naive_summary["p50_ms"] / steady["p50_ms"],
        "requests": {"steady": len(timings["steady"]), "switches": len(timings["switches"]),
                     "naive": len(naive_s)},
        "switches": len(refresher.switch_s),
        "versions_served_during_switches": len(served["switches"]),
        "version_load_ms": summarize(refresher.switch_s or [first_load_s], scale=1000.0, unit="ms"),
        "resident_items": len(catalog),
        "output_dim": settings.model.output_dim,
        "vector_dtype": settings.worker.vector_dtype,
        "top_k_agree": agree,
        "torch_threads": torch.get_num_threads(),
        "targets": TARGETS,
    }
    result["meets"] = {"p99_ms": result["p99_ms"] <= TARGETS["p99_ms"],
                       "speedup": result["speedup"] >= TARGETS["speedup"],
                       "switch_p99_ratio": result["switch_p99_ratio"] <= TARGETS["switch_p99_ratio"]}
    return result


def main(argv: list[str] | None = None) -> int:
    defaults = ScoreBenchConfig()
    parser = argparse.ArgumentParser(prog="bench.score", description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="write the result to this file")
    parser.add_argument("--quick", action="store_true", help="2 phases of 2 s, 2,000 items, few requests (CI)")
    parser.add_argument("--candidates", type=int, default=defaults.candidates)
    parser.add_argument("--k", type=int, default=defaults.k)
    parser.add_argument("--catalog", type=int, default=defaults.catalog_items, help="items published per version")
    parser.add_argument("--phases", type=int, default=defaults.phases, help="alternating steady / switching phases")
    parser.add_argument("--phase", type=float, default=defaults.phase_s, help="seconds per phase")
    parser.add_argument("--switch-every", type=float, default=defaults.switch_every_s)
    parser.add_argument("--naive-requests", type=int, default=defaults.naive_requests)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (one request is one row: 1 is best)")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--compare-heads", action="store_true",
                        help="measure the interaction head too, in the same run (interaction_head, *_over_cosine)")
    parser.add_argument("--redis-cluster", action="store_true",
                        help="against the local Redis Cluster (`prerank stack up --redis-cluster`)")
    args = parser.parse_args(argv)
    limit_threads(args.threads)
    config = ScoreBenchConfig(candidates=args.candidates, k=args.k, catalog_items=args.catalog, phases=args.phases,
                              phase_s=args.phase, switch_every_s=args.switch_every,
                              naive_requests=args.naive_requests, seed=args.seed)
    if args.quick:
        config = ScoreBenchConfig(**{**asdict(config), "catalog_items": 2000, "phases": 2, "phase_s": 2.0,
                                     "switch_every_s": 0.6, "versions": 3, "naive_requests": 20,
                                     "distinct_requests": 50})
    settings = load_settings()
    if args.redis_cluster:
        settings = on_redis_cluster(settings)
    require_stack(settings)
    settings = with_changes(settings, redis={"key_prefix": f"bscore{uuid.uuid4().hex[:8]}"})
    started = time.monotonic()
    try:
        result = measure(settings, config)
        if args.compare_heads:
            interaction = measure(with_changes(settings, model={"head": "interaction"}), config)
            result["interaction_head"] = {key: interaction[key] for key in (
                "p50_ms", "p99_ms", "p50_ms_with_switches", "p99_ms_with_switches", "naive_p99_ms", "speedup")}
            result["interaction_over_cosine_p50"] = interaction["p50_ms"] / result["p50_ms"]
            result["interaction_over_cosine_p99"] = interaction["p99_ms"] / result["p99_ms"]
    finally:
        delete_redis_keys(settings)
    emit({"bench": "score", "redis": redis_topology(settings), **result, "wall_s": time.monotonic() - started, "config": asdict(config),
          "environment": environment()}, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
