"""Scoring through the topic at a steady rate, and in process, side by side in one run.

Set-up: a student (default sizes: 512-d towers) briefly trained on synthetic requests is published
as a model version (``funnel.publishing.Publisher``: item vectors of the whole catalog and the
pruned weights in Redis, catalog features too), then a scorer worker is started.

Through the topic: the bench produces ``score-requests`` (1000 candidates drawn from the catalog,
k=100) at a steady rate for a bounded time, and one aiokafka consumer matches ``score-responses``
by request id. Round trip = send call -> response fetched, in this process's clock. Warm-up
requests (at the same rate) first cover the catalog so the scorer's in-process LRU is warm, as in
steady state. The scorer's own ``latency_ms`` (decode excluded) is reported next to it.

In process, after the worker is stopped (so it does not compete for the 2 cores), on the same
requests: :meth:`funnel.scoring.Scorer.score` with a warm LRU, the same with no LRU (every
vector from one Redis MGET), and the naive path (the item tower over every candidate, then the
same cosine and top-k), with the naive / LRU ratios.

    python -m bench.scoring_topic --json scoring.json     # or: prerank bench scoring-topic --json PATH
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from bench.common import (
    BenchError,
    emit,
    environment,
    private_stack,
    running_workers,
    summarize,
)
from core.settings import Settings, load_settings
from funnel.store import open_store

TARGETS = {"topic_p99_ms": 25.0, "in_process_p99_ms": 2.0, "speedup_vs_naive": 10.0}


@dataclass(frozen=True)
class ScoringConfig:
    rate_rps: float = 100.0
    duration_s: float = 30.0
    warmup_requests: int = 100
    candidates: int = 1000
    k: int = 100
    catalog_items: int = 5000
    in_process_requests: int = 1000
    naive_requests: int = 200
    drain_timeout_s: float = 15.0
    seed: int = 0


def publish_model(settings: Settings, config: ScoringConfig, store):
    """Train a default-size student a little and publish it with the whole catalog; (generator, catalog, meta)."""
    from funnel.publishing import Publisher
    from funnel.training import new_learner
    from models.synthetic import SyntheticRequests

    generator = SyntheticRequests(seed=config.seed, n_items=config.catalog_items)
    learner = new_learner(settings)
    for _ in range(10):
        learner.learn_many(generator.batch(32))
    catalog = [generator.item(i) for i in range(config.catalog_items)]
    store.put_items(catalog)
    worker = settings.worker
    publisher = Publisher(store, hot_items=len(catalog), dtype=worker.vector_dtype, ttl_s=worker.version_ttl_s)
    publisher.hot.observe(catalog, time.monotonic())
    return generator, catalog, publisher.publish(learner, learner.step)


def build_requests(config: ScoringConfig, catalog, n_warm: int, n_timed: int, tag: str):
    """Warm-up requests that sweep the catalog (fills the LRU), then random candidate sets."""
    from streams.score_requests import ScoreRequest

    ids = [item.item_id for item in catalog]
    rng = np.random.default_rng(config.seed)
    now_ms = int(time.time() * 1000)
    out = []
    for index in range(n_warm + n_timed):
        if index < n_warm:
            start = (index * config.candidates) % len(ids)
            candidates = (ids + ids)[start:start + config.candidates]
        else:
            candidates = [ids[i] for i in rng.choice(len(ids), config.candidates, replace=False)]
        out.append(ScoreRequest(request_id=f"{tag}-{index}", user_id=f"u{index % 200}", ts_ms=now_ms + index,
                                candidates=candidates, k=config.k))
    return out


async def through_topic(settings: Settings, requests, n_warm: int, config: ScoringConfig, worker) -> dict:
    """Send at a steady rate, match responses; returns send/receive times and the responses."""
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

    from streams import score_requests, score_responses

    names = {key: settings.topics.name(module.TOPIC.name) for key, module in
             (("requests", score_requests), ("responses", score_responses))}
    servers = settings.kafka.bootstrap_servers
    consumer = AIOKafkaConsumer(bootstrap_servers=servers, enable_auto_commit=False, group_id=None,
                                fetch_max_wait_ms=100, max_partition_fetch_bytes=8 * 1024 * 1024)
    producer = AIOKafkaProducer(bootstrap_servers=servers, linger_ms=0, max_request_size=8 * 1024 * 1024)
    await consumer.start()
    await producer.start()
    payloads = [(r.request_id, r.user_id.encode(), score_requests.CODEC.encode(r)) for r in requests]
    sent_at: dict[str, float] = {}
    sent_wall_ms: dict[str, float] = {}
    received: dict[str, tuple[float, object]] = {}
    legs: dict[str, tuple[float, float]] = {}  # request id -> (send -> response produced, -> fetched), ms
    try:
        count = score_responses.TOPIC.partitions or settings.topics.partitions  # as create_topics made it
        partitions = [TopicPartition(names["responses"], p) for p in range(count)]
        consumer.assign(partitions)
        await consumer.seek_to_end(*partitions)

        async def receive(stop: asyncio.Event) -> None:
            while not stop.is_set():
                batches = await consumer.getmany(timeout_ms=50)
                arrived, arrived_wall_ms = time.perf_counter(), time.time() * 1000
                for messages in batches.values():
                    for message in messages:
                        response = score_responses.CODEC.decode(message.value)
                        if response.request_id in sent_at and response.request_id not in received:
                            received[response.request_id] = (arrived, response)
                            # the response's CreateTime splits the round trip into its two legs
                            legs[response.request_id] = (message.timestamp - sent_wall_ms[response.request_id],
                                                         arrived_wall_ms - message.timestamp)

        async def send(batch, rate: float) -> float:
            started = time.perf_counter()
            for index, (request_id, key, value) in enumerate(batch):
                delay = started + index / rate - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                sent_at[request_id] = time.perf_counter()
                sent_wall_ms[request_id] = time.time() * 1000
                await producer.send(names["requests"], value=value, key=key)
            return time.perf_counter() - started

        async def drain(ids: list[str], timeout_s: float) -> None:
            deadline = time.monotonic() + timeout_s
            while any(i not in received for i in ids) and time.monotonic() < deadline:
                worker.check()
                await asyncio.sleep(0.05)

        stop = asyncio.Event()
        receiver = asyncio.create_task(receive(stop))
        ready = payloads[:1]  # the worker joins its group and loads the version first
        await send(ready, config.rate_rps)
        await drain([ready[0][0]], 180)
        if ready[0][0] not in received:
            raise BenchError("the scorer worker never answered a first request")
        warm = payloads[1:n_warm]
        await send(warm, config.rate_rps)
        await drain([w[0] for w in warm], config.drain_timeout_s)
        timed = payloads[n_warm:]
        send_s = await send(timed, config.rate_rps)
        await drain([t[0] for t in timed], config.drain_timeout_s)
        stop.set()
        await receiver
    finally:
        await producer.stop()
        await consumer.stop()
    timed_ids = [t[0] for t in payloads[n_warm:]]
    return {"sent_at": sent_at, "received": received, "timed_ids": timed_ids, "send_s": send_s, "legs": legs}


def topic_result(outcome: dict, config: ScoringConfig) -> dict:
    timed = outcome["timed_ids"]
    got = [(outcome["received"][i], outcome["sent_at"][i]) for i in timed if i in outcome["received"]]
    ok = [(arrived - sent, response) for (arrived, response), sent in got if response.error is None]
    tiers = {tier: sum(r.cache_tiers.get(tier, 0) for _, r in ok) for tier in ("local", "redis", "computed")}
    round_trip = summarize([rt for rt, _ in ok], scale=1000.0, unit="ms")
    return {
        "rate_rps": config.rate_rps,
        "achieved_rps": len(timed) / outcome["send_s"] if outcome["send_s"] > 0 else 0.0,
        "sent": len(timed),
        "answered": len(ok),
        "errors": len(got) - len(ok),
        **{key: value for key, value in round_trip.items() if key != "n"},
        "scorer_in_worker_ms": summarize([r.latency_ms / 1000 for _, r in ok], scale=1000.0, unit="ms"),
        # wall clock at millisecond resolution: request sent -> response produced by the worker
        # (Kafka in, decode, score, encode), and response produced -> fetched here (Kafka out)
        "leg_to_response_produced_ms": summarize(
            [outcome["legs"][i][0] / 1000 for i in timed if i in outcome["legs"]], scale=1000.0, unit="ms"),
        "leg_response_to_client_ms": summarize(
            [outcome["legs"][i][1] / 1000 for i in timed if i in outcome["legs"]], scale=1000.0, unit="ms"),
        "cache_tiers": tiers,
        "versions_served": sorted({r.model_version for _, r in ok}),
    }


def in_process(settings: Settings, config: ScoringConfig, store, generator, catalog, requests, n_warm: int) -> dict:
    """Scorer.score with a warm LRU, with Redis only, and the naive item tower, on the same requests."""
    from funnel.metrics import top_k
    from funnel.scoring import Scorer
    from models.served import ServedStudent

    by_id = {item.item_id: item for item in catalog}
    users = {r.user_id: generator.user(int(r.user_id[1:])) for r in requests}

    def scorer(lru_items: int) -> Scorer:
        made = Scorer(store, ServedStudent.from_bytes, dtype=settings.worker.vector_dtype, lru_items=lru_items,
                      max_candidates=settings.worker.max_candidates, max_k=settings.worker.max_k,
                      easy_negatives=settings.model.easy_negatives)
        made.refresh(force=True)
        return made

    def timed(score, batch) -> list[float]:
        out = []
        for request in batch:
            started = time.perf_counter()
            score(request)
            out.append(time.perf_counter() - started)
        return out

    warm, rest = requests[:n_warm], requests[n_warm:]
    measured = [rest[i % len(rest)] for i in range(config.in_process_requests)]
    cached = scorer(settings.worker.local_cache_items)
    timed(lambda r: cached.score(r, users[r.user_id]), warm)
    lru = timed(lambda r: cached.score(r, users[r.user_id]), measured)
    tiers = cached.score(measured[0], users[measured[0].user_id]).cache_tiers
    redis_only = scorer(0)
    redis = timed(lambda r: redis_only.score(r, users[r.user_id]), measured[: config.naive_requests])
    model = cached.model

    def naive(request, stored_dtype: str | None = None):
        vectors = np.asarray(model.item_vectors([by_id[c] for c in request.candidates]), dtype=np.float32)
        if stored_dtype is not None:  # what the cache holds: the same vectors, rounded to the stored dtype
            vectors = vectors.astype(stored_dtype).astype(np.float32)
        user_vector = model.user_vector(users[request.user_id])
        return top_k(np.asarray(model.logits_from_vectors(user_vector, vectors)), request.k)

    agree = [
        [i.item_id for i in cached.score(r, users[r.user_id]).items]
        == [r.candidates[j] for j in naive(r, settings.worker.vector_dtype)] for r in measured[:5]
    ]
    naive_s = timed(naive, measured[: config.naive_requests])
    out = {
        "lru": summarize(lru, scale=1000.0, unit="ms"),
        "redis_mget": summarize(redis, scale=1000.0, unit="ms"),
        "naive": summarize(naive_s, scale=1000.0, unit="ms"),
        "lru_tiers": tiers,
        "top_k_agree_with_naive": all(agree),  # vectors rounded to the stored dtype on both sides
    }
    out["speedup_p99"] = out["naive"]["p99_ms"] / out["lru"]["p99_ms"]
    out["speedup_p50"] = out["naive"]["p50_ms"] / out["lru"]["p50_ms"]
    out["redis_over_lru_p50"] = out["redis_mget"]["p50_ms"] / out["lru"]["p50_ms"]
    return out


def measure(settings: Settings, config: ScoringConfig, folder: Path, worker_threads: int | None = None) -> dict:

    started = time.monotonic()
    store = open_store(settings.redis)
    generator, catalog, published = publish_model(settings, config, store)
    n_timed = max(1, int(config.rate_rps * config.duration_s))
    requests = build_requests(config, catalog, config.warmup_requests, n_timed, settings.redis.key_prefix)
    # The load generator holds ~3M candidate strings for the whole run. Unfrozen, each full
    # collection scans them (~0.2 s here), the sender stalls and then fires its backlog as one
    # burst, and the scorer's queue behind that burst is the client's pause, not the system's.
    gc.freeze()
    extra_env = {"OMP_NUM_THREADS": str(worker_threads)} if worker_threads else None
    with running_workers(settings, folder, ("scorer", 0), extra_env=extra_env) as (worker,):
        outcome = asyncio.run(through_topic(settings, requests, config.warmup_requests, config, worker))
    topic = topic_result(outcome, config)
    local = in_process(settings, config, store, generator, catalog, requests, config.warmup_requests)
    return {
        "bench": "scoring-topic",
        **topic,
        "in_process": local,
        "candidates": config.candidates,
        "k": config.k,
        "catalog_items": config.catalog_items,
        "output_dim": settings.model.output_dim,
        "vector_dtype": settings.worker.vector_dtype,
        "model_version": published.version,
        "in_process_torch_threads": torch.get_num_threads(),
        "worker_torch_threads": worker_threads or "default",
        "targets": TARGETS,
        "meets": {
            "topic_p99_ms": topic["answered"] == topic["sent"] and topic.get("p99_ms", 1e9) <= TARGETS["topic_p99_ms"],
            "in_process_p99_ms": local["lru"]["p99_ms"] <= TARGETS["in_process_p99_ms"],
            "speedup_vs_naive": local["speedup_p99"] >= TARGETS["speedup_vs_naive"],
        },
        "wall_s": time.monotonic() - started,
        "config": asdict(config),
        "environment": environment(),
    }


def main(argv: list[str] | None = None) -> int:
    defaults = ScoringConfig()
    parser = argparse.ArgumentParser(prog="bench.scoring_topic", description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="write the result to this file")
    parser.add_argument("--quick", action="store_true", help="50 rps for 5 s, 100 in-process requests (CI)")
    parser.add_argument("--rate", type=float, default=defaults.rate_rps, help="requests per second")
    parser.add_argument("--duration", type=float, default=defaults.duration_s, help="seconds of timed load")
    parser.add_argument("--candidates", type=int, default=defaults.candidates)
    parser.add_argument("--k", type=int, default=defaults.k)
    parser.add_argument("--catalog", type=int, default=defaults.catalog_items, help="items published")
    # One thread: a single request's towers gain nothing from two, and with other processes on
    # the 2 cores two OpenMP threads made the user tower ~50x slower (measured).
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the in-process part")
    parser.add_argument("--worker-threads", type=int, default=None,
                        help="OMP_NUM_THREADS of the scorer worker (default: unset, as deployed)")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    args = parser.parse_args(argv)
    if args.rate <= 0 or args.duration <= 0 or not 1 <= args.candidates <= args.catalog:
        raise BenchError("--rate and --duration must be positive and 1 <= --candidates <= --catalog")
    torch.set_num_threads(args.threads)
    config = ScoringConfig(rate_rps=args.rate, duration_s=args.duration, candidates=args.candidates, k=args.k,
                           catalog_items=args.catalog, seed=args.seed)
    if args.quick:
        config = ScoringConfig(**{**asdict(config), "rate_rps": 50.0, "duration_s": 5.0, "warmup_requests": 30,
                                  "in_process_requests": 100, "naive_requests": 20})
    with private_stack(load_settings(), "score") as settings:
        folder = settings.worker.checkpoint_dir.parent
        result = {**measure(settings, config, folder, args.worker_threads), "run_prefix": settings.topics.prefix}
    emit(result, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
