"""A long hostile run: malformed and maximal records on every input topic and ``POST /score``.

Starts a serving worker (catalog, profiles, history, joiner, scorer) and a trainer on private
topics, publishes a model, then for ``--minutes`` sends, every tick: malformed records drawn
from the property-based hostile suite (``tests/reliability/hostile.py``) on every input topic,
valid score requests (some at the size bounds: 5000 candidates of long multi-byte ids, audited),
and hostile ``POST /score`` bodies. It judges the run as the hardening issue states it:

- ``worker_restarts``: the worker processes never exited (same pids, alive at the end);
- ``dead_letters_missing``: every malformed record became one dead letter per agent that reads
  its topic (read back from ``dead-letters``), each with a reason;
- ``unanswered``: every valid score request got an answer (an answer may be an error response);
- ``http_failures``: every ``POST /score`` got an HTTP status below 500;
- ``metrics_series``: the count of series on the serving worker's ``/metrics``, first and last;
- ``rss_mb``: the serving worker's memory at the start of the traffic and after it drained.

    python -m bench.hostile --minutes 10 --json bench/results/hostile.json
    python -m bench.hostile --minutes 1        # a short run

Needs the local stack (``prerank stack up``). Run from the repository root (it reads the hostile
suite's generators from ``tests/``).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

from bench.common import emit, environment, require_stack
from bench.load import _rss_bytes, isolated_settings, publish_model
from core.kafka import kafka_python_options

TICK_S = 0.5
MAX_HTTP_BODY = 1024 * 1024


@dataclass(frozen=True)
class HostileConfig:
    minutes: float = 10.0
    hostile_per_tick: int = 20
    requests_per_tick: int = 4
    maximal_every_ticks: int = 20  # one request at the size bounds every N ticks
    http_per_tick: int = 2
    drain_timeout_s: float = 180.0
    seed: int = 0


def _cases(n: int, seed: int):
    from tests.reliability.hostile import any_hostile_record, draw_examples, http_bodies

    return draw_examples(any_hostile_record(), n), draw_examples(http_bodies(), max(50, n // 10))


def _request(request_id: str, user_id: str, candidates: list[str], k: int, ts_ms: int) -> bytes:
    from streams import score_requests
    from streams.score_requests import ScoreRequest

    return score_requests.CODEC.encode(
        ScoreRequest(request_id=request_id, user_id=user_id, ts_ms=ts_ms, candidates=candidates, k=k))


def _maximal_request(request_id: str, ts_ms: int) -> bytes:
    """A valid request at the bounds: the most candidates, long multi-byte ids, the largest k."""
    from streams.score_requests import MAX_CANDIDATES
    from streams.types import MAX_ID_CHARS

    stem = "候選-ß-🎬-"
    candidates = [(f"{i}-" + stem * MAX_ID_CHARS)[:MAX_ID_CHARS] for i in range(MAX_CANDIDATES)]
    return _request(request_id, "maximal-user", candidates, min(1000, MAX_CANDIDATES), ts_ms)


def _send_at_the_bounds(producer, settings, tick: int, now_ms: int, expected: Counter) -> list[str]:
    """Size amplification: valid records at the schemas' bounds and records just past them (the
    hostile suite's builders); returns the ids of the score requests that must be answered."""
    from tests.reliability import hostile

    name = settings.topics.name
    user = f"bound-user-{tick}"
    audited = hostile.audited_request_id(f"oversized-{tick}-", settings.worker.audit_every or 20)
    producer.send(name("score-requests"), key=user.encode(),
                  value=hostile.oversized_response_request(audited, user, now_ms))
    producer.send(name("score-requests"), key=b"maximal-user", value=_maximal_request(f"maximal-{tick}", now_ms))
    producer.send(name("rank-scores"), key=user.encode(),
                  value=hostile.maximal_rank_scores(f"ranked-{tick}", user, now_ms))
    producer.send(name("impressions"), key=user.encode(), value=hostile.over_the_input_limit())
    for agent in ("history", "joiner"):
        expected[(name("impressions"), agent)] += 1
    for value in [*hostile.unknown_field_records(user, 20, prefix=f"injected{tick}"),
                  hostile.huge_field_name_record(user)]:
        producer.send(name("user-profiles"), key=user.encode(), value=value)
        expected[(name("user-profiles"), "profiles")] += 1
    return [audited, f"maximal-{tick}"]


class _Reader:
    """Reads answers and dead letters back, on a thread of its own."""

    def __init__(self, settings) -> None:
        from kafka import KafkaConsumer

        topics = [settings.topics.name("score-responses"), settings.topics.name("dead-letters")]
        self.consumer = KafkaConsumer(*topics, **kafka_python_options(settings.kafka), group_id=None,
                                      auto_offset_reset="earliest", enable_auto_commit=False,
                                      consumer_timeout_ms=200, max_partition_fetch_bytes=8 * 1024 * 1024)
        self.responses_topic = topics[0]
        self.answered: set[str] = set()
        self.dead_letters: Counter[tuple[str, str]] = Counter()  # (source topic, agent)
        self.without_reason = 0
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            for message in self.consumer:
                payload = json.loads(message.value)
                if message.topic == self.responses_topic:
                    self.answered.add(payload.get("request_id", ""))
                else:
                    self.dead_letters[(payload.get("source_topic", "?"), payload.get("agent", "?"))] += 1
                    self.without_reason += not payload.get("reason")
                if self.stop.is_set():
                    break


def _post(port: int, body: bytes) -> int:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/score", data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status
    except urllib.error.HTTPError as error:
        return error.code
    except OSError:
        return 599  # no HTTP answer at all


def _series(port: int) -> int:
    from monitoring.scrape import scrape

    return len(scrape(port))


def run(config: HostileConfig, settings=None) -> dict:
    from kafka import KafkaProducer

    from core.processes import Worker
    from core.settings import load_settings
    from streams.registry import TOPIC_MODULES, create_topics
    from tests.reliability.hostile import CONSUMERS

    settings = settings or load_settings()
    require_stack(settings)
    folder = Path(tempfile.mkdtemp(prefix="prerank-hostile-"))
    settings = isolated_settings(settings, folder)
    create_topics(kafka_python_options(settings.kafka), settings.topics)
    publish_model(settings, n_items=300, seed=config.seed)
    serving = Worker(settings, "history,joiner,scorer", folder / "serving.log", index=0)
    trainer = Worker(settings, "trainer", folder / "trainer.log", index=1)
    workers = {"serving": serving, "trainer": trainer}
    pids = {name: worker.pid for name, worker in workers.items()}
    producer = KafkaProducer(**kafka_python_options(settings.kafka), linger_ms=5, max_request_size=8 * 1024 * 1024)
    reader = _Reader(settings)
    thread = threading.Thread(target=reader.run, daemon=True)
    thread.start()
    n_ticks = max(1, int(config.minutes * 60 / TICK_S))
    hostile, bodies = _cases(min(5000, n_ticks * config.hostile_per_tick), config.seed)
    expected: Counter[tuple[str, str]] = Counter()
    sent_requests: list[str] = []
    http_status: Counter[int] = Counter()
    rng = random.Random(config.seed)
    result: dict = {"config": asdict(config)}
    try:
        probe = "probe-0"
        producer.send(settings.topics.name("score-requests"), key=b"u0",
                      value=_request(probe, "u0", ["i1", "i2"], 1, int(time.time() * 1000)))
        _wait(lambda: probe in reader.answered, 180, workers)
        result["metrics_series_start"] = _series(settings.worker.metrics_port)
        result["rss_mb_start"] = round(_rss_bytes(serving.pid) / 2**20, 1)
        started = time.monotonic()
        for tick in range(n_ticks):
            for i in range(config.hostile_per_tick):
                case = hostile[(tick * config.hostile_per_tick + i) % len(hostile)]
                topic = settings.topics.name(TOPIC_MODULES[case.topic].TOPIC.name)
                producer.send(topic, key=case.key, value=case.value)
                for agent in CONSUMERS[case.topic]:
                    expected[(topic, agent)] += 1
            now_ms = int(time.time() * 1000)
            for i in range(config.requests_per_tick):
                request_id, user = f"valid-{tick}-{i}", f"u{rng.randrange(1000)}"
                candidates = [f"i{rng.randrange(300)}" for _ in range(rng.randrange(1, 200))]
                producer.send(settings.topics.name("score-requests"), key=user.encode(),
                              value=_request(request_id, user, candidates, rng.randrange(1, 120), now_ms))
                sent_requests.append(request_id)
            if tick % config.maximal_every_ticks == 0:
                sent_requests.extend(_send_at_the_bounds(producer, settings, tick, now_ms, expected))
            for i in range(config.http_per_tick):
                _, body = bodies[(tick * config.http_per_tick + i) % len(bodies)]
                http_status[_post(settings.worker.web_port, body[:MAX_HTTP_BODY])] += 1
            for name, worker in workers.items():
                if not worker.alive():
                    raise RuntimeError(f"the {name} worker exited:\n{worker.log_tail()}")
            delay = started + (tick + 1) * TICK_S - time.monotonic()
            if delay > 0:
                time.sleep(delay)  # the send schedule, not a wait for progress
        producer.flush()
        sent_s = time.monotonic() - started
        deadline = time.monotonic() + config.drain_timeout_s
        while time.monotonic() < deadline and not (
                set(sent_requests) <= reader.answered and all(reader.dead_letters[k] >= n for k, n in expected.items())):
            time.sleep(1.0)  # re-checks the condition; bounded by the deadline
        result.update({
            "sent_s": round(sent_s, 1),
            "malformed_records": n_ticks * config.hostile_per_tick,
            "valid_requests": len(sent_requests),
            "unanswered": len(set(sent_requests) - reader.answered),
            "dead_letters_expected": sum(expected.values()),
            "dead_letters_missing": sum(max(0, n - reader.dead_letters[k]) for k, n in expected.items()),
            "dead_letters_without_reason": reader.without_reason,
            "http_status": {str(code): n for code, n in sorted(http_status.items())},
            "http_failures": sum(n for code, n in http_status.items() if code >= 500),
            "worker_restarts": sum(1 for name, w in workers.items() if not w.alive() or w.pid != pids[name]),
            "metrics_series_end": _series(settings.worker.metrics_port),
            "rss_mb_end": round(_rss_bytes(serving.pid) / 2**20, 1),
        })
        result["rss_growth_mb"] = round(result["rss_mb_end"] - result["rss_mb_start"], 1)
        result["passed"] = (result["worker_restarts"] == 0 and result["unanswered"] == 0
                            and result["dead_letters_missing"] == 0 and result["dead_letters_without_reason"] == 0
                            and result["http_failures"] == 0 and result["rss_growth_mb"] <= 100)
    finally:
        reader.stop.set()
        thread.join(timeout=10)
        for worker in workers.values():
            worker.stop()
        result["logs"] = str(folder)
    return result


def _wait(predicate, timeout_s: float, workers: dict) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        for name, worker in workers.items():
            if not worker.alive():
                raise RuntimeError(f"the {name} worker exited:\n{worker.log_tail()}")
        if time.monotonic() > deadline:
            raise RuntimeError("the serving worker did not answer its first request")
        time.sleep(0.2)  # re-checks the condition; bounded by the deadline


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.hostile", description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    result = run(HostileConfig(minutes=args.minutes, seed=args.seed))
    result["environment"] = environment()
    emit(result, args.json)
    return 0 if result.get("passed") else 1


if __name__ == "__main__":
    sys.exit(main())
