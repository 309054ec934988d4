"""Freshness: an impression produced -> an item vector of a newer model version readable in Redis.

Measured end to end on the local stack, the design's path: the bench produces a request's
``rank-scores`` and the ``impression`` of a brand-new item, the label joiner (worker 0) closes the
request's join window and emits its ``training-samples`` record, the trainer (worker 1) learns it,
the publisher writes a new version, and the bench polls Redis (``ModelStore.current_version`` then
``vectors``) until the current version holds a vector for that item. Freshness is the time from
just before the first produce to the first successful read.

The joiner closes a window when the event-time watermark passes ``ts + join_window_s``, so the
bench keeps steady background traffic (complete requests stamped with the wall clock) flowing,
as production traffic would; the window is part of what is measured and is reported. Each probe
waits a random fraction of the publish interval first, so probes sample the publisher's phase
uniformly instead of always starting just after a flip.

Alternating with those probes, the same run measures the trainer-side path alone (a
``training-samples`` record with a new item produced directly), and splits the full path at the
Kafka timestamp of the joiner's record: ``join_s`` (produce -> joined record on the topic) and
``after_join_s`` (joined record -> readable).

    python -m bench.freshness --json freshness.json      # or: prerank bench freshness --json PATH
    python -m bench.freshness --redis-cluster --json freshness-redis-cluster.json   # on a Redis Cluster
"""

from __future__ import annotations

import argparse
import random
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from bench.common import (
    BenchError,
    emit,
    environment,
    on_redis_cluster,
    private_stack,
    redis_topology,
    running_workers,
    summarize,
    wait_until,
)
from core.kafka import kafka_python_options
from core.settings import Settings, load_settings
from funnel.store import open_store

TARGET_P95_S = 5.0
POLL_S = 0.01
PATH = "rank-scores + impression -> joiner -> training-samples -> trainer -> publisher -> Redis"


@dataclass(frozen=True)
class FreshnessConfig:
    """One run: probes per path, the pipeline knobs that bound freshness, and the background load."""

    probes: int = 30
    direct_probes: int = 15
    warmup_probes: int = 2
    publish_interval_s: float = 0.5
    join_window_s: float = 1.0
    background_rps: float = 10.0
    pool_items: int = 500
    items_per_request: int = 20
    probe_timeout_s: float = 30.0
    seed: int = 0


@dataclass(frozen=True)
class Probe:
    path: str  # "impressions" or "training_samples"
    request_id: str
    item_id: str
    started_wall_s: float
    freshness_s: float
    version: int


class Events:
    """Builds the records the bench produces; all items are bare ids from a fixed pool plus new ones."""

    def __init__(self, settings: Settings, config: FreshnessConfig, run: str) -> None:
        from streams.registry import TOPIC_MODULES

        self.config = config
        self.run = run
        self.rng = random.Random(config.seed)
        self.pool = [f"pool{j}" for j in range(config.pool_items)]
        self.names = {key: settings.topics.name(module.TOPIC.name) for key, module in TOPIC_MODULES.items()}

    def request(self, request_id: str, user_id: str, ts_ms: int, first_item: str | None = None):
        """(topic, key, value) of a request's rank-scores and of its impression(s)."""
        from streams import impressions, rank_scores
        from streams.impressions import Impression
        from streams.rank_scores import RankScores
        from streams.training_samples import UserSnapshot

        n = self.config.items_per_request
        ranked = self.rng.sample(self.pool, n + 5)
        if first_item is not None:
            ranked[0] = first_item
        ranked, extra = ranked[:n], ranked[n:]
        scores = RankScores(
            request_id=request_id, user_id=user_id, ts_ms=ts_ms, candidates=ranked + extra,
            items=[{"item_id": item, "rank": j, "logits": {"click": 2.0 - 0.1 * j}} for j, item in enumerate(ranked)],
            user=UserSnapshot(user_id=user_id, tab=1, hour=12),
        )
        shown = [ranked[0]] if first_item is not None else [ranked[0], ranked[3]]
        key = user_id.encode()
        out = [(self.names["rank_scores"], key, rank_scores.CODEC.encode(scores))]
        for position, item in enumerate(shown):
            out.append((self.names["impressions"], key, impressions.CODEC.encode(Impression(
                request_id=request_id, user_id=user_id, item_id=item, ts_ms=ts_ms + 10, position=position,
                click=int(position == 0), play_ms=5000, duration_ms=10000,
            ))))
        return out

    def training_sample(self, request_id: str, user_id: str, ts_ms: int, first_item: str):
        from funnel.convert import record_from_sample
        from models.features import ItemFeatures, RequestSample, UserFeatures
        from streams import training_samples

        n = self.config.items_per_request
        items = [first_item] + self.rng.sample(self.pool, n - 1)
        unknown = (-1,) * (n - 1)
        sample = RequestSample(
            request_id=request_id, ts_ms=ts_ms, user=UserFeatures(user_id, tab=1, hour=12),
            items=tuple(ItemFeatures(item) for item in items), cascade=(1,) * 10 + (0,) * (n - 10),
            click=(1,) + unknown, long_view=(0,) + unknown, like=(0,) + unknown,
        )
        value = training_samples.CODEC.encode(record_from_sample(sample))
        return [(self.names["training_samples"], user_id.encode(), value)]


class Background(threading.Thread):
    """Complete requests at a steady rate, stamped with the wall clock: they move the join watermark."""

    def __init__(self, producer, events: Events, rps: float) -> None:
        super().__init__(name="background-traffic", daemon=True)
        self.producer = producer
        self.events = events
        self.interval_s = 1.0 / rps
        self.halt = threading.Event()
        self.sent = 0

    def run(self) -> None:
        due = time.monotonic()
        while not self.halt.is_set():
            for topic, key, value in self.events.request(
                f"bg{self.events.run}-{self.sent}", f"bu{self.sent % 50}", int(time.time() * 1000)
            ):
                self.producer.send(topic, key=key, value=value)
            self.sent += 1
            due += self.interval_s
            self.halt.wait(max(0.0, due - time.monotonic()))


def wait_readable(store, item_id: str, timeout_s: float, workers) -> tuple[float, int] | None:
    """(perf_counter when first read, version) once the current version has the item's vector."""
    deadline = time.monotonic() + timeout_s
    checks = 0
    looked_at = None  # a version is read whole once: it never changes
    while time.monotonic() < deadline:
        version = store.current_version()
        if version is not None and version != looked_at:
            looked_at = version
            published = store.version_vectors(version)
            if published is not None and item_id in published[0]:
                return time.perf_counter(), version
        checks += 1
        if checks % 50 == 0:
            for worker in workers:
                worker.check()
        time.sleep(POLL_S)
    return None


def record_times_ms(settings: Settings, topic: str, request_ids: set[str]) -> dict[str, int]:
    """Kafka timestamp (ms, the producer's wall clock) of the first record of each wanted request."""
    from kafka import KafkaConsumer, TopicPartition

    from streams import training_samples

    consumer = KafkaConsumer(**kafka_python_options(settings.kafka), enable_auto_commit=False, group_id=None)
    found: dict[str, int] = {}
    try:
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        ends = consumer.end_offsets(partitions)
        deadline = time.monotonic() + 60
        while any(consumer.position(tp) < ends[tp] for tp in partitions) and time.monotonic() < deadline:
            for messages in consumer.poll(timeout_ms=500).values():
                for message in messages:
                    request_id = training_samples.CODEC.decode(message.value).request_id
                    if request_id in request_ids and request_id not in found:
                        found[request_id] = message.timestamp
    finally:
        consumer.close()
    return found


def measure(settings: Settings, config: FreshnessConfig, folder: Path) -> dict:
    from kafka import KafkaProducer

    run = settings.redis.key_prefix
    events = Events(settings, config, run)
    store = open_store(settings.redis)
    dtype = settings.worker.vector_dtype
    producer = KafkaProducer(**kafka_python_options(settings.kafka), acks="all", linger_ms=0)
    background = Background(producer, events, config.background_rps)
    probes: list[Probe] = []
    missed = {"impressions": 0, "training_samples": 0}
    phase = random.Random(config.seed + 1)
    started = time.monotonic()
    with running_workers(settings, folder, ("joiner", 0), ("trainer,publisher", 1)) as workers:
        try:
            background.start()
            wait_until(store.current_version, 180, "a first published version", workers, interval_s=0.2)
            plan = ["impressions", "training_samples"] * config.warmup_probes
            plan += ["impressions"] * config.probes + ["training_samples"] * config.direct_probes
            order = plan[: 2 * config.warmup_probes] + _interleave(plan[2 * config.warmup_probes:])
            for index, path in enumerate(order):
                time.sleep(phase.uniform(0.0, config.publish_interval_s))
                request_id, item_id = f"probe{run}-{index}", f"new{run}-{index}"
                now_ms = int(time.time() * 1000)
                records = (events.request(request_id, f"pu{index}", now_ms, first_item=item_id)
                           if path == "impressions" else
                           events.training_sample(request_id, f"pu{index}", now_ms, first_item=item_id))
                started_wall, started_perf = time.time(), time.perf_counter()
                for topic, key, value in records:
                    producer.send(topic, key=key, value=value)
                producer.flush()
                readable = wait_readable(store, item_id, config.probe_timeout_s, workers)
                if index < 2 * config.warmup_probes:
                    continue
                if readable is None:
                    missed[path] += 1
                    continue
                probes.append(Probe(path, request_id, item_id, started_wall, readable[0] - started_perf, readable[1]))
        finally:
            background.halt.set()
            background.join(5)
            producer.flush()
            producer.close()
    joined_ms = record_times_ms(settings, events.names["training_samples"],
                                {p.request_id for p in probes if p.path == "impressions"})
    return _result(config, probes, missed, joined_ms, background.sent, time.monotonic() - started)


def _interleave(plan: list[str]) -> list[str]:
    """Spread the two paths evenly over the run (so drift affects both alike).

    >>> _interleave(["a", "a", "a", "a", "b", "b"])
    ['a', 'a', 'b', 'a', 'a', 'b']
    """
    counts = {path: plan.count(path) for path in dict.fromkeys(plan)}
    done = dict.fromkeys(counts, 0)
    out = []
    for _ in plan:
        path = min(counts, key=lambda p: ((done[p] + 1) / counts[p], p))
        done[path] += 1
        out.append(path)
    return out


def _result(config, probes: list[Probe], missed: dict, joined_ms: dict, background_sent: int, wall_s: float) -> dict:
    full = [p for p in probes if p.path == "impressions"]
    direct = [p for p in probes if p.path == "training_samples"]
    join_s = [joined_ms[p.request_id] / 1000 - p.started_wall_s for p in full if p.request_id in joined_ms]
    after_join_s = [p.freshness_s - (joined_ms[p.request_id] / 1000 - p.started_wall_s)
                    for p in full if p.request_id in joined_ms]
    headline = summarize([p.freshness_s for p in full], quantiles=(50, 95))
    return {
        "bench": "freshness",
        "path": PATH,
        **headline,
        "missed": missed["impressions"],
        "target_p95_s": TARGET_P95_S,
        "meets_target": bool(full) and missed["impressions"] == 0 and headline["p95_s"] <= TARGET_P95_S,
        "join_s": summarize(join_s, quantiles=(50, 95)),
        "after_join_s": summarize(after_join_s, quantiles=(50, 95)),
        "training_samples_path": {
            "path": "training-samples -> trainer -> publisher -> Redis",
            **summarize([p.freshness_s for p in direct], quantiles=(50, 95)),
            "missed": missed["training_samples"],
        },
        "publish_interval_s": config.publish_interval_s,
        "join_window_s": config.join_window_s,
        "versions_seen": len({p.version for p in probes}),
        "background_requests": background_sent,
        "wall_s": wall_s,
        "config": asdict(config),
        "probes": [{"path": p.path, "freshness_s": p.freshness_s, "version": p.version} for p in probes],
        "environment": environment(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.freshness", description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="write the result to this file")
    parser.add_argument("--quick", action="store_true", help="10 probes of the full path, 4 direct (CI)")
    defaults = FreshnessConfig()
    parser.add_argument("--probes", type=int, default=defaults.probes)
    parser.add_argument("--direct-probes", type=int, default=defaults.direct_probes)
    parser.add_argument("--publish-interval", type=float, default=defaults.publish_interval_s)
    parser.add_argument("--join-window", type=float, default=defaults.join_window_s)
    parser.add_argument("--background-rps", type=float, default=defaults.background_rps)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--redis-cluster", action="store_true",
                        help="against the local Redis Cluster (`prerank stack up --redis-cluster`)")
    args = parser.parse_args(argv)
    probes, direct = (10, 4) if args.quick else (args.probes, args.direct_probes)
    config = FreshnessConfig(
        probes=probes, direct_probes=direct, warmup_probes=1 if args.quick else defaults.warmup_probes,
        publish_interval_s=args.publish_interval, join_window_s=args.join_window,
        background_rps=args.background_rps, seed=args.seed,
    )
    if config.probes < 1 or config.publish_interval_s <= 0 or config.background_rps <= 0:
        raise BenchError("--probes, --publish-interval and --background-rps must be positive")
    base = load_settings()
    if args.redis_cluster:
        base = on_redis_cluster(base)
    with private_stack(base, "fresh", publish_interval_s=config.publish_interval_s,
                       join_window_s=config.join_window_s) as settings:
        folder = settings.worker.checkpoint_dir.parent
        result = {**measure(settings, config, folder), "redis": redis_topology(settings),
                  "run_prefix": settings.topics.prefix}
    emit(result, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
