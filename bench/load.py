"""Sustained load on the scoring topic, then overload: latency, worker memory, backlog, drain.

One scorer worker (a real ``prerank worker`` process) serves a published student (default
sizes, 5000 hot items). Requests go to ``score-requests`` at a fixed rate (warm-up, then the
sustained phase, then an overload phase), answers are read from ``score-responses``; latency is
answer arrival minus send time, both on this process's clock. Every second the worker's RSS and
the backlog (sent minus answered) are sampled. Past saturation nothing is shed: Kafka holds the
backlog, the worker pulls at its own pace (bounded prefetch), so memory stays flat while
latency grows with the backlog; the drain time says how long the backlog takes to clear.

    python -m bench.load --json load.json                  # 60 s sustained (the issue's figure)
    python -m bench.load --duration 10 --overload-s 5      # a short run

Needs the local stack (``prerank stack up``); topics and Redis keys get a fresh prefix.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from prerank.ports import free_port


@dataclass(frozen=True)
class LoadConfig:
    rate: float = 10.0
    duration_s: float = 60.0
    overload_rate: float = 50.0
    overload_s: float = 15.0
    warmup_s: float = 5.0
    candidates: int = 1000
    k: int = 100
    n_items: int = 5000
    drain_timeout_s: float = 180.0
    seed: int = 0


def isolated_settings(base, folder: Path):
    """``base`` with a fresh topic prefix, app id, Redis key prefix, folders and ports."""
    run = uuid.uuid4().hex[:8]
    data = base.model_dump()
    data["topics"] = {**data["topics"], "prefix": f"load{run}.", "partitions": 2}
    data["redis"] = {**data["redis"], "key_prefix": f"load{run}"}
    data["worker"] = {**data["worker"], "app_id": f"prerank-load{run}", "data_dir": folder / "faust",
                      "checkpoint_dir": folder / "checkpoints", "web_port": free_port(), "metrics_port": free_port()}
    return type(base)(**data)


def publish_model(settings, n_items: int = 300, seed: int = 0, small: bool = True) -> int:
    """Train a student briefly on synthetic requests, publish it with items ``i0..`` all hot."""
    from agents.publishing import Publisher
    from agents.serving import redis_client
    from agents.store import ModelStore
    from models.export import export_bytes
    from models.learner import StudentLearner
    from models.synthetic import SyntheticRequests
    from models.two_tower import TwoTowerConfig

    generator = SyntheticRequests(seed=seed, n_items=n_items, n_users=50)
    config = TwoTowerConfig(hidden_sizes=(32, 32), output_dim=16, min_count=1) if small else TwoTowerConfig(min_count=1)
    learner = StudentLearner(config)
    for _ in range(3):
        learner.learn_many(generator.batch(16))
    store = ModelStore(redis_client(settings), settings.redis.key_prefix)
    publisher = Publisher(store, lambda model: export_bytes(model, prune=True), hot_items=n_items,
                          dtype=settings.worker.vector_dtype, ttl_s=3600)
    publisher.resume_from_store()
    publisher.hot.observe([generator.item(i) for i in range(n_items)], 0.0)
    return publisher.publish(learner, samples_learned=48)["version"]


def _rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def _summary(latencies_s: list[float]) -> dict:
    if not latencies_s:
        return {"p50_ms": None, "p99_ms": None, "max_ms": None}
    ms = np.asarray(latencies_s) * 1000
    return {"p50_ms": round(float(np.percentile(ms, 50)), 1), "p99_ms": round(float(np.percentile(ms, 99)), 1),
            "max_ms": round(float(ms.max()), 1)}


class _Traffic:
    """Sends the phases' requests on schedule and records send and answer times."""

    def __init__(self, settings, config: LoadConfig) -> None:
        from kafka import KafkaConsumer, KafkaProducer

        self.settings, self.config = settings, config
        kafka = settings.kafka.kafka_python_config()
        self.producer = KafkaProducer(**kafka, linger_ms=1, max_request_size=8 * 1024 * 1024)
        self.consumer = KafkaConsumer(settings.topics.name("score-responses"), **kafka, group_id=None,
                                      auto_offset_reset="earliest", enable_auto_commit=False, consumer_timeout_ms=200)
        self.sent: dict[str, tuple[str, float]] = {}  # request id -> (phase, send time)
        self.answered: dict[str, float] = {}
        self.errors = 0
        self.phase = "starting"
        self.sent_all_at: float | None = None
        self.stop = threading.Event()

    def send_phases(self, phases: list[tuple[str, float, float]]) -> None:
        from streams import score_requests
        from streams.score_requests import ScoreRequest

        rng = np.random.default_rng(self.config.seed)
        topic = self.settings.topics.name("score-requests")
        for phase, rate, seconds in phases:
            self.phase = phase
            start = time.monotonic()
            for i in range(int(rate * seconds)):
                delay = start + i / rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                rid = f"{phase}-{i}"
                candidates = [f"i{j}" for j in rng.choice(self.config.n_items, self.config.candidates, replace=False)]
                request = ScoreRequest(request_id=rid, user_id=f"u{int(rng.integers(0, 1000))}", ts_ms=int(time.time() * 1000),
                                       candidates=candidates, k=self.config.k)
                self.sent[rid] = (phase, time.time())
                self.producer.send(topic, key=request.user_id.encode(), value=score_requests.CODEC.encode(request))
        self.producer.flush()
        self.sent_all_at = time.monotonic()
        self.phase = "drain"

    def read_answers(self) -> None:
        from streams import score_responses

        while not self.stop.is_set():
            for message in self.consumer:
                response = score_responses.CODEC.decode(message.value)
                self.answered.setdefault(response.request_id, time.time())
                self.errors += response.error is not None
                if self.stop.is_set():
                    break


def _wait(predicate, timeout_s: float, worker) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if not worker.alive() or time.monotonic() > deadline:
            raise RuntimeError(f"scorer worker not answering:\n{worker.log_tail()}")
        time.sleep(0.2)


def run(config: LoadConfig, settings=None) -> dict:
    """Run the phases against a fresh scorer worker; returns the JSON-ready results."""
    from prerank.processes import Worker
    from prerank.settings import load_settings
    from streams.registry import create_topics

    folder = Path(tempfile.mkdtemp(prefix="prerank-load-"))
    settings = isolated_settings(settings or load_settings(), folder)
    create_topics(settings.kafka.kafka_python_config(), settings.topics)
    version = publish_model(settings, n_items=config.n_items, seed=config.seed, small=False)
    worker = Worker(settings, "scorer", folder / "scorer.log")
    traffic = _Traffic(settings, config)
    phases = [("warmup", config.rate, config.warmup_s), ("sustained", config.rate, config.duration_s),
              ("overload", config.overload_rate, config.overload_s)]
    reader = threading.Thread(target=traffic.read_answers, daemon=True)
    sender = threading.Thread(target=traffic.send_phases, args=(phases,), daemon=True)
    timeline = []
    started = time.monotonic()
    try:
        reader.start()
        traffic.send_phases([("ready", 1.0, 1.0)])  # one probe: the worker has joined and answers
        _wait(lambda: "ready-0" in traffic.answered, 180, worker)
        traffic.sent.clear()
        traffic.answered.clear()
        traffic.sent_all_at = None
        sender.start()
        deadline, drain_s = None, None
        while True:
            time.sleep(1.0)
            if not worker.alive():
                raise RuntimeError(f"scorer worker died:\n{worker.log_tail()}")
            timeline.append({"t_s": round(time.monotonic() - started, 1), "phase": traffic.phase,
                             "rss_mb": round(_rss_bytes(worker.pid) / 2**20, 1),
                             "backlog": len(traffic.sent) - len(traffic.answered)})
            if traffic.sent_all_at is not None:
                deadline = deadline or time.monotonic() + config.drain_timeout_s
                if len(traffic.answered) >= len(traffic.sent):
                    drain_s = round(time.monotonic() - traffic.sent_all_at, 1)
                    break
                if time.monotonic() > deadline:
                    break
    finally:
        traffic.stop.set()
        worker.stop()
        reader.join(5)
    return {"config": asdict(config), "model_version": version, "phases": _phases(traffic, phases, timeline),
            "drain_s_after_overload": drain_s, "error_answers": traffic.errors, "timeline": timeline}


def _phases(traffic: _Traffic, phases, timeline) -> dict:
    out = {}
    for phase, rate, seconds in phases:
        ids = [rid for rid, (p, _) in traffic.sent.items() if p == phase]
        latencies = [traffic.answered[rid] - traffic.sent[rid][1] for rid in ids if rid in traffic.answered]
        rss = [t["rss_mb"] for t in timeline if t["phase"] == phase]
        out[phase] = {
            "rate_per_s": rate, "seconds": seconds, "sent": len(ids), "answered": len(latencies),
            "lost": len(ids) - len(latencies), **_summary(latencies),
            "rss_mb_first": rss[0] if rss else None, "rss_mb_max": max(rss) if rss else None,
            "rss_mb_last": rss[-1] if rss else None,
            "backlog_max": max((t["backlog"] for t in timeline if t["phase"] == phase), default=0),
        }
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.load", description=__doc__.splitlines()[0])
    defaults = LoadConfig()
    parser.add_argument("--json", type=Path)
    parser.add_argument("--rate", type=float, default=defaults.rate)
    parser.add_argument("--duration", type=float, default=defaults.duration_s)
    parser.add_argument("--overload-rate", type=float, default=defaults.overload_rate)
    parser.add_argument("--overload-s", type=float, default=defaults.overload_s)
    parser.add_argument("--candidates", type=int, default=defaults.candidates)
    args = parser.parse_args(argv)
    config = LoadConfig(rate=args.rate, duration_s=args.duration, overload_rate=args.overload_rate,
                        overload_s=args.overload_s, candidates=args.candidates)
    result = run(config)
    print(json.dumps({k: v for k, v in result.items() if k != "timeline"}, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
