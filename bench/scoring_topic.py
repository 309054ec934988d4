"""Scoring through the topic: steady rates against a real scorer worker, its CPU per stage, and
the highest rate it sustains.

Set-up: a student (default sizes: 512-d towers) briefly trained on synthetic requests is published
as a model version (``funnel.publishing.Publisher``: the item vectors of a 20,000-item hot set and
the pruned weights in Redis, catalog features too), then ``--workers`` scorer workers are started
(one consumer group: Kafka splits the request partitions between them; a step starts once every
worker has answered a request).

A step sends ``score-requests`` (1000 candidates drawn from the hot set, k=100) at a steady rate
for a bounded time, and one aiokafka consumer matches ``score-responses`` by request id. Round
trip = send call -> response fetched, in this process's clock. A step passes when every request
is answered and the round trip's p99 is at most 50 ms (``--find-max``) or when every request is
answered (``--rate``). Each step reports the workers' CPU per request split by stage (their
``prerank_scorer_stage_seconds_total``, scraped before and after, summed over workers), and the
CPU shares of the workers (together) and of this load generator over the step.

``--find-max`` tries rising rates (doubling from ``--rate``, then bisecting between the last pass
and the first failure) and writes ``max_rate_rps``, the highest rate that passed.

    python -m bench.scoring_topic --rate 200 --json scoring.json   # or: prerank bench scoring-topic ...
    python -m bench.scoring_topic --find-max --json scoring-max.json
    python -m bench.scoring_topic --find-max --workers 2 --json scoring-max-2.json   # both cores
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import msgspec
import numpy as np

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
from monitoring.metrics import SCORER_STAGES
from monitoring.scrape import metric_sum, scrape

TARGETS = {"p99_ms_at_200_rps": 25.0, "max_rate_rps": 500.0}
MAX_P99_MS = 50.0  # what --find-max calls sustained


@dataclass(frozen=True)
class ScoringConfig:
    rate_rps: float = 200.0
    duration_s: float = 20.0
    warmup_requests: int = 200
    candidates: int = 1000
    k: int = 100
    catalog_items: int = 20_000
    distinct_requests: int = 4000
    drain_timeout_s: float = 15.0
    max_rate_rps: float = 2000.0
    bisect_steps: int = 2
    seed: int = 0


class ResponseHead(msgspec.Struct, frozen=True):
    """What the load generator reads of a response. Decoding only these fields in C keeps the
    client off the cores it shares with the system it measures (a full validated decode of 100
    items and a user snapshot costs about as much as the scorer's own work)."""

    request_id: str
    model_version: int = -1
    error: str | None = None
    latency_ms: float = 0.0
    cache_tiers: dict[str, int] = {}


HEAD = msgspec.json.Decoder(ResponseHead)


def publish_model(settings: Settings, config: ScoringConfig, store):
    """Train a default-size student a little and publish it with the whole catalog; (catalog, version)."""
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
    return catalog, publisher.publish(learner, learner.step)


def encoded_requests(config: ScoringConfig, catalog, tag: str) -> list[tuple[bytes, bytes]]:
    """``distinct_requests`` encoded requests (key, value) of random candidate sets; a step sends
    them round-robin under fresh request ids."""
    from streams import score_requests
    from streams.score_requests import ScoreRequest

    ids = [item.item_id for item in catalog]
    rng = np.random.default_rng(config.seed)
    now_ms = int(time.time() * 1000)
    out = []
    for index in range(config.distinct_requests):
        candidates = [ids[i] for i in rng.choice(len(ids), config.candidates, replace=False)]
        request = ScoreRequest(request_id=f"{tag}-@", user_id=f"u{index % 200}", ts_ms=now_ms + index,
                               candidates=candidates, k=config.k)
        out.append((request.user_id.encode(), score_requests.CODEC.encode(request)))
    return out


class TopicClient:
    """Sends requests at a steady rate and matches responses by request id, over the workers' life."""

    def __init__(self, settings: Settings, config: ScoringConfig, payloads, workers) -> None:
        from streams import score_requests, score_responses

        self.settings, self.config, self.payloads, self.workers = settings, config, payloads, workers
        self.requests_topic = settings.topics.name(score_requests.TOPIC.name)
        self.responses_topic = settings.topics.name(score_responses.TOPIC.name)
        self.response_partitions = score_responses.TOPIC.partitions or settings.topics.partitions
        self.sent_at: dict[str, float] = {}
        self.received: dict[str, tuple[float, ResponseHead]] = {}
        self.sent = 0

    async def __aenter__(self) -> TopicClient:
        from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

        servers = self.settings.kafka.bootstrap_servers
        self.consumer = AIOKafkaConsumer(bootstrap_servers=servers, enable_auto_commit=False, group_id=None,
                                         fetch_max_wait_ms=20, max_partition_fetch_bytes=8 * 1024 * 1024)
        self.producer = AIOKafkaProducer(bootstrap_servers=servers, linger_ms=0, max_request_size=8 * 1024 * 1024)
        await self.consumer.start()
        await self.producer.start()
        partitions = [TopicPartition(self.responses_topic, p) for p in range(self.response_partitions)]
        self.consumer.assign(partitions)
        await self.consumer.seek_to_end(*partitions)
        self.stop = asyncio.Event()
        self.receiver = asyncio.create_task(self._receive())
        return self

    async def __aexit__(self, *exc) -> None:
        self.stop.set()
        await self.receiver
        await self.producer.stop()
        await self.consumer.stop()

    async def _receive(self) -> None:
        while not self.stop.is_set():
            batches = await self.consumer.getmany(timeout_ms=20)
            arrived = time.perf_counter()
            for messages in batches.values():
                for message in messages:
                    head = HEAD.decode(message.value)
                    if head.request_id in self.sent_at and head.request_id not in self.received:
                        self.received[head.request_id] = (arrived, head)

    async def send(self, count: int, rate: float, tag: str) -> tuple[list[str], float]:
        """Send ``count`` requests at ``rate``; their ids and the seconds the sending took."""
        ids = []
        started = time.perf_counter()
        for index in range(count):
            delay = started + index / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            key, value = self.payloads[self.sent % len(self.payloads)]
            request_id = f"{tag}-{index}"
            self.sent += 1
            ids.append(request_id)
            self.sent_at[request_id] = time.perf_counter()
            # the template's id replaced in its bytes: the sender does not re-encode 1000 candidates
            await self.producer.send(self.requests_topic, key=key, value=_with_id(value, request_id))
        return ids, time.perf_counter() - started

    async def drain(self, ids: list[str], timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while any(i not in self.received for i in ids) and time.monotonic() < deadline:
            for worker in self.workers:
                worker.check()
            await asyncio.sleep(0.05)


def _with_id(template: bytes, request_id: str) -> bytes:
    """The encoded request with its ``request_id`` replaced (the template's is a placeholder)."""
    head, rest = template.split(b'"request_id":"', 1)
    return head + b'"request_id":' + msgspec.json.encode(request_id) + rest.split(b'"', 1)[1]


def stage_seconds(port: int) -> tuple[dict[str, float], float]:
    """One worker's scorer stage seconds so far and its requests handled."""
    samples = scrape(port)
    stages = {stage: metric_sum(samples, "prerank_scorer_stage_seconds_total", stage=stage) for stage in SCORER_STAGES}
    return stages, metric_sum(samples, "prerank_scorer_requests_total")


def all_stage_seconds(ports: Sequence[int]) -> tuple[dict[str, float], float]:
    """:func:`stage_seconds` summed over the workers."""
    per_worker = [stage_seconds(port) for port in ports]
    return ({stage: sum(stages[stage] for stages, _ in per_worker) for stage in SCORER_STAGES},
            sum(handled for _, handled in per_worker))


async def run_step(client: TopicClient, rate: float, config: ScoringConfig, ports: Sequence[int], tag: str) -> dict:
    """One steady-rate step: round trips, the workers' CPU per stage and the CPU shares."""
    def workers_cpu() -> float:
        return sum(worker.cpu_seconds() for worker in client.workers)

    before, requests_before = all_stage_seconds(ports)
    worker_cpu, client_cpu, wall = workers_cpu(), time.process_time(), time.perf_counter()
    ids, send_s = await client.send(max(1, int(rate * config.duration_s)), rate, tag)
    await client.drain(ids, config.drain_timeout_s)
    wall = time.perf_counter() - wall
    worker_cpu, client_cpu = workers_cpu() - worker_cpu, time.process_time() - client_cpu
    after, requests_after = all_stage_seconds(ports)
    handled = max(requests_after - requests_before, 1.0)
    answered = [(client.received[i][0] - client.sent_at[i], client.received[i][1]) for i in ids if i in client.received]
    ok = [(seconds, head) for seconds, head in answered if head.error is None]
    round_trip = summarize([seconds for seconds, _ in ok], scale=1000.0, unit="ms")
    breakdown = {stage: (after[stage] - before[stage]) * 1000 / handled for stage in SCORER_STAGES}
    result = {
        "rate_rps": rate,
        "achieved_rps": len(ids) / send_s if send_s > 0 else 0.0,
        "sent": len(ids),
        "answered": len(ok),
        "errors": len(answered) - len(ok),
        **{key: value for key, value in round_trip.items() if key != "n"},
        "scorer_in_worker_ms": summarize([head.latency_ms / 1000 for _, head in ok], scale=1000.0, unit="ms"),
        "cpu_breakdown_ms_per_request": {**breakdown, "total_staged": sum(breakdown.values()),
                                         "worker_process": worker_cpu * 1000 / handled},
        "cpu_share": {"worker": worker_cpu / wall, "load_generator": client_cpu / wall},
        "cache_tiers": {tier: sum(head.cache_tiers.get(tier, 0) for _, head in ok) for tier in ("local", "computed")},
        "versions_served": sorted({head.model_version for _, head in ok}),
    }
    result["passed"] = result["answered"] == result["sent"] and result.get("p99_ms", 1e9) <= MAX_P99_MS
    return result


async def warm_up(client: TopicClient, config: ScoringConfig, ports: Sequence[int]) -> None:
    """Send rounds until every worker has answered requests (each joined the group, holds
    partitions and loaded the version) and a whole round is answered, then the warm-up requests;
    :class:`BenchError` after 180 s."""
    deadline = time.monotonic() + 180
    round_ = 0
    while True:
        # A round's requests reach every partition; one answered late (a rebalance while the group
        # forms: measured up to ~10 s) only means another round.
        ready, _ = await client.send(max(8, 4 * len(ports)), config.rate_rps, f"ready{round_}")
        await client.drain(ready, min(30.0, max(0.0, deadline - time.monotonic())))
        idle = [port for port in ports if stage_seconds(port)[1] == 0]
        unanswered = sum(i not in client.received for i in ready)
        if not unanswered and not idle:
            break
        if time.monotonic() >= deadline:
            raise BenchError(f"after 180 s of warm-up, scorer workers with metrics ports {idle} had answered nothing "
                             f"and {unanswered} of the last {len(ready)} requests were unanswered")
        round_ += 1
    warm, _ = await client.send(config.warmup_requests, config.rate_rps, "warm")
    await client.drain(warm, config.drain_timeout_s)


async def through_topic(settings: Settings, config: ScoringConfig, payloads, workers, find_max: bool) -> dict:
    ports = [settings.worker.metrics_port + index for index in range(len(workers))]
    async with TopicClient(settings, config, payloads, workers) as client:
        await warm_up(client, config, ports)
        steps = [await run_step(client, config.rate_rps, config, ports, "r0")]
        if not find_max:
            return {"steps": steps}
        rate, passed, failed = config.rate_rps, None, None
        while steps[-1]["passed"] and rate < config.max_rate_rps:
            passed, rate = rate, min(rate * 2, config.max_rate_rps)
            steps.append(await run_step(client, rate, config, ports, f"r{len(steps)}"))
        if steps[-1]["passed"]:
            passed = rate
        else:
            failed = rate
        for _ in range(config.bisect_steps if passed is not None and failed is not None else 0):
            rate = (passed + failed) / 2
            steps.append(await run_step(client, rate, config, ports, f"r{len(steps)}"))
            passed, failed = (rate, failed) if steps[-1]["passed"] else (passed, rate)
        return {"steps": steps, "max_rate_rps": passed or 0.0}


def measure(settings: Settings, config: ScoringConfig, folder: Path, find_max: bool,
            worker_threads: int | None = None, workers: int = 1) -> dict:
    started = time.monotonic()
    store = open_store(settings.redis)
    catalog, published = publish_model(settings, config, store)
    payloads = encoded_requests(config, catalog, settings.redis.key_prefix)
    # The load generator holds ~4M candidate bytes for the whole run. Unfrozen, each full
    # collection scans them, the sender stalls and then fires its backlog as one burst.
    gc.freeze()
    extra_env = {"OMP_NUM_THREADS": str(worker_threads)} if worker_threads else None
    specs = [("scorer", index) for index in range(workers)]
    with running_workers(settings, folder, *specs, extra_env=extra_env) as started_workers:
        outcome = asyncio.run(through_topic(settings, config, payloads, started_workers, find_max))
    first = outcome["steps"][0]
    result = {
        "bench": "scoring-topic",
        **{key: value for key, value in first.items()},
        "cpu_breakdown": first["cpu_breakdown_ms_per_request"],
        "steps": outcome["steps"],
        "candidates": config.candidates,
        "k": config.k,
        "hot_items": config.catalog_items,
        "output_dim": settings.model.output_dim,
        "vector_dtype": settings.worker.vector_dtype,
        "scorer_batch": settings.worker.scorer_batch,
        "scorer_workers": workers,
        "model_version": published.version,
        "worker_torch_threads": worker_threads or "default",
        "targets": TARGETS,
        "wall_s": time.monotonic() - started,
        "config": asdict(config),
        "environment": environment(),
    }
    meets = {}
    if config.rate_rps == 200.0:
        meets["p99_ms_at_200_rps"] = first["answered"] == first["sent"] and \
            first.get("p99_ms", 1e9) <= TARGETS["p99_ms_at_200_rps"]
    if find_max:
        result["max_rate_rps"] = outcome["max_rate_rps"]
        meets["max_rate_rps"] = outcome["max_rate_rps"] >= TARGETS["max_rate_rps"]
    result["meets"] = meets
    return result


def main(argv: list[str] | None = None) -> int:
    defaults = ScoringConfig()
    parser = argparse.ArgumentParser(prog="bench.scoring_topic", description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="write the result to this file")
    parser.add_argument("--quick", action="store_true", help="50 rps for 5 s, 2,000 items (CI)")
    parser.add_argument("--rate", type=float, default=defaults.rate_rps, help="requests per second (first step)")
    parser.add_argument("--duration", type=float, default=defaults.duration_s, help="seconds per step")
    parser.add_argument("--find-max", action="store_true",
                        help=f"raise the rate until a step misses a request or p99 > {MAX_P99_MS:.0f} ms")
    parser.add_argument("--max-rate", type=float, default=defaults.max_rate_rps, help="--find-max stops here")
    parser.add_argument("--candidates", type=int, default=defaults.candidates)
    parser.add_argument("--k", type=int, default=defaults.k)
    parser.add_argument("--catalog", type=int, default=defaults.catalog_items, help="items published")
    parser.add_argument("--worker-threads", type=int, default=None,
                        help="OMP_NUM_THREADS of the scorer worker (default: unset, as deployed)")
    parser.add_argument("--workers", type=int, default=1,
                        help="scorer worker processes, one consumer group (at most the request partitions)")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    args = parser.parse_args(argv)
    if args.rate <= 0 or args.duration <= 0 or not 1 <= args.candidates <= args.catalog:
        raise BenchError("--rate and --duration must be positive and 1 <= --candidates <= --catalog")
    if args.workers < 1:
        raise BenchError("--workers must be at least 1")
    config = ScoringConfig(rate_rps=args.rate, duration_s=args.duration, candidates=args.candidates, k=args.k,
                           catalog_items=args.catalog, max_rate_rps=args.max_rate, seed=args.seed)
    if args.quick:
        config = ScoringConfig(**{**asdict(config), "rate_rps": 50.0, "duration_s": 5.0, "warmup_requests": 30,
                                  "catalog_items": 2000, "distinct_requests": 100, "bisect_steps": 0})
    with private_stack(load_settings(), "score") as settings:
        folder = settings.worker.checkpoint_dir.parent
        result = {**measure(settings, config, folder, args.find_max, args.worker_threads, args.workers),
                  "run_prefix": settings.topics.prefix}
    emit(result, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
