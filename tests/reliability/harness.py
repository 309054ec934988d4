"""What the reliability tests share: derived settings, private services, workers with secrets,
metrics scraping, HTTP calls, a published model and a reader that counts answers.

Private services (a Redis with a password, a Kafka to restart) run under the test's temp folder
on free loopback ports, started and stopped through :mod:`prerank.stack` by their own pid; the
shared stack is never touched.
"""

from __future__ import annotations

import http.client
import json
import time
import zlib
from collections.abc import Callable, Iterable
from pathlib import Path

from kafka import KafkaConsumer

from core import processes
from core.kafka import kafka_python_options
from core.ports import free_port
from core.processes import REPO
from core.settings import Settings
from funnel.store import open_store
from prerank.stack import Kafka, Redis


def derive(settings: Settings, **sections: dict) -> Settings:
    """A copy of ``settings`` with some fields of some sections replaced.

    >>> s = derive(Settings(_env_file=None), worker={"web_port": 7000})
    >>> s.worker.web_port, s.worker.metrics_port
    (7000, 9464)
    """
    data = settings.model_dump()
    for section, values in sections.items():
        data[section] = {**data[section], **values}
    return type(settings)(**data)


class Worker(processes.Worker):
    """A ``prerank worker`` child process (credentials included) that knows its ports."""

    def __init__(self, settings: Settings, agents: str, log_path: Path, index: int = 0, **env: object) -> None:
        super().__init__(settings, agents, log_path, index, **env)
        self.metrics_port = settings.worker.metrics_port + index
        self.web_port = settings.worker.web_port + index

    def rss_bytes(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError(f"no VmRSS for pid {self.pid}")


# --- private services ---------------------------------------------------------------------
def private_redis(settings: Settings, home: Path, password: str | None = None) -> tuple[Redis, Settings]:
    """A Redis of our own (not started yet) and settings pointing at it."""
    port = free_port()
    redis_section = {"url": f"redis://127.0.0.1:{port}/0"}
    if password is not None:
        redis_section["password"] = password
    private = derive(settings, redis=redis_section, stack={"home": home, "redis_port": port})
    return Redis("redis", private), private


def private_kafka(settings: Settings, home: Path, service: type[Kafka] = Kafka, **kafka) -> tuple[Kafka, Settings]:
    """A single-node KRaft broker of our own (not started yet), reusing the shared jar cache."""
    port, controller = free_port(), free_port()
    private = derive(
        settings,
        kafka={"bootstrap_servers": f"127.0.0.1:{port}", **kafka},
        stack={"home": home, "cache": (REPO / ".cache").resolve(), "kafka_port": port,
               "kafka_controller_port": controller, "kafka_heap": "384m"},
    )
    return service("kafka", private), private


# --- observation --------------------------------------------------------------------------
def post(port: int, body: bytes, *, chunked: bool = False, timeout_s: float = 30.0) -> tuple[int, dict]:
    """POST ``body`` to a worker's ``/score``; returns (status, decoded JSON body)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout_s)
    try:
        if chunked:
            connection.request("POST", "/score", body=iter([body]), encode_chunked=True,
                                headers={"Content-Type": "application/json"})
        else:
            connection.request("POST", "/score", body=body, headers={"Content-Type": "application/json"})
        response = connection.getresponse()
        raw = response.read()
    finally:
        connection.close()
    try:
        return response.status, json.loads(raw)
    except ValueError:
        return response.status, {"raw": raw[:200].decode(errors="replace")}


def wait_for(predicate: Callable[[], object], timeout_s: float, what: str, workers_: Iterable = ()):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for worker in workers_:
            if not worker.alive():
                raise AssertionError(f"worker {worker.pid} died while waiting for {what}:\n{worker.log_tail()}")
        value = predicate()
        if value:
            return value
        time.sleep(0.25)
    raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what}")


class TopicReader:
    """Reads one topic from the beginning, keeping every message; poll it as often as needed."""

    def __init__(self, settings: Settings, topic_key: str) -> None:
        from streams.registry import TOPIC_MODULES

        self.consumer = KafkaConsumer(
            settings.topics.name(TOPIC_MODULES[topic_key].TOPIC.name),
            **kafka_python_options(settings.kafka), auto_offset_reset="earliest",
            enable_auto_commit=False, group_id=None, consumer_timeout_ms=200,
        )
        self.messages: list = []
        self.arrived_at: list[float] = []

    def poll(self) -> list:
        fresh = list(self.consumer)
        now = time.time()
        self.messages += fresh
        self.arrived_at += [now] * len(fresh)
        return fresh

    def until(self, done: Callable[[list], bool], timeout_s: float, workers_: Iterable = ()) -> list:
        """Poll until ``done(messages)``; returns every message read, raises at the deadline."""
        deadline = time.monotonic() + timeout_s
        while not done(self.messages):
            for worker in workers_:
                if not worker.alive():
                    raise AssertionError(f"worker {worker.pid} died:\n{worker.log_tail()}")
            if time.monotonic() >= deadline:
                tails = "".join(f"\n--- worker {w.pid}:\n{w.log_tail()}" for w in workers_)
                raise AssertionError(f"timed out after {timeout_s:.0f}s with {len(self.messages)} messages read"
                                     f"{tails}")
            self.poll()
        return self.messages

    def read_for(self, timeout_s: float, done: Callable[[list], bool] = lambda got: False) -> list:
        """Poll for ``timeout_s`` or until ``done(messages)``; returns every message read, never raises."""
        deadline = time.monotonic() + timeout_s
        while not done(self.messages) and time.monotonic() < deadline:
            self.poll()
        return self.messages

    def read_to_end(self, timeout_s: float = 60.0) -> list:
        """Every message up to the topic's end offsets as of now (no transactions write these topics)."""
        deadline = time.monotonic() + timeout_s
        ends = None
        while True:
            self.poll()
            assigned = self.consumer.assignment()
            if assigned and ends is None:
                ends = self.consumer.end_offsets(list(assigned))
            if ends and all(self.consumer.position(tp) >= end for tp, end in ends.items()):
                return self.messages
            if time.monotonic() >= deadline:
                raise AssertionError(f"timed out after {timeout_s:.0f}s reading to the end offsets {ends}")

    def close(self) -> None:
        self.consumer.close()


def response_ids(messages: list) -> list[str]:
    from streams import score_responses

    return [score_responses.CODEC.decode(m.value).request_id for m in messages]


# --- a model to serve ---------------------------------------------------------------------
def publish_model(settings: Settings, n_items: int = 300, seed: int = 0, small: bool = True) -> int:
    """A briefly trained student published with items ``i0 .. i{n_items-1}`` hot; returns its version."""
    from bench.load import publish_model as publish

    return publish(settings, n_items=n_items, seed=seed, small=small)


# --- settings for a module-scoped scenario ----------------------------------------------------
def fresh_settings(base: Settings, folder: Path, partitions: int = 2) -> Settings:
    """Like the ``stack_settings`` fixture, for scenarios that outlive one test: own topic prefix,
    app id, Redis key prefix, folders and ports (topics are not created here)."""
    import uuid

    run = uuid.uuid4().hex[:8]
    return derive(
        base,
        topics={"prefix": f"r{run}.", "partitions": partitions},
        redis={"key_prefix": f"r{run}"},
        worker={"app_id": f"prerank-r{run}", "data_dir": folder / "faust", "checkpoint_dir": folder / "checkpoints",
                "web_port": free_port(), "metrics_port": free_port()},
        model={"hidden_dim": 32, "output_dim": 16, "embedding_dim": 8},
    )


def create_topics(settings: Settings) -> None:
    from streams.registry import create_topics as create

    create(kafka_python_options(settings.kafka), settings.topics)


# --- traffic ----------------------------------------------------------------------------------
T0 = 1_651_000_000_000


def funnel_events(n_requests: int, start: int = 0, n_ranked: int = 15):
    """Rank scores (with a user snapshot) and two impressions per request, ids ``req{start+r}``.

    A copy of ``tests.integration.test_pipeline.funnel_events`` with a first request number.
    """
    from streams.impressions import Impression
    from streams.rank_scores import RankScores
    from streams.training_samples import UserSnapshot

    ranks, shows = [], []
    for r in range(start, start + n_requests):
        user, ts = f"u{r % 7}", T0 + r * 1000
        ranked = [f"i{(r + j) % 50}" for j in range(n_ranked)]
        ranks.append(RankScores(
            request_id=f"req{r}", user_id=user, ts_ms=ts, candidates=ranked,
            items=[{"item_id": item, "rank": j, "logits": {"click": 2.0 - 0.1 * j}} for j, item in enumerate(ranked)],
            user=UserSnapshot(user_id=user, tab=1, hour=12, history_items=[f"i{r % 3}"]),
        ))
        shows += [
            Impression(request_id=f"req{r}", user_id=user, item_id=ranked[0], ts_ms=ts + 10, position=0, click=1),
            Impression(request_id=f"req{r}", user_id=user, item_id=ranked[3], ts_ms=ts + 20, position=1),
        ]
    return ranks, shows


def send_funnel(settings: Settings, n_requests: int, start: int = 0) -> None:
    from streams import impressions, rank_scores
    from tests.integration.workers import send_all

    ranks, shows = funnel_events(n_requests, start)
    send_all(settings, "rank_scores", [(r.user_id.encode(), rank_scores.CODEC.encode(r)) for r in ranks])
    send_all(settings, "impressions", [(i.user_id.encode(), impressions.CODEC.encode(i)) for i in shows])


def score_request(request_id: str, user: str, n_candidates: int = 50, k: int = 10, ts_ms: int | None = None):
    from streams.score_requests import ScoreRequest

    return ScoreRequest(
        request_id=request_id, user_id=user, ts_ms=int(time.time() * 1000) if ts_ms is None else ts_ms,
        candidates=[f"i{(zlib.crc32(request_id.encode()) + j) % 300}" for j in range(n_candidates)], k=k,
    )


def send_requests(settings: Settings, requests) -> dict[str, float]:
    """Send score requests; returns request id -> wall-clock send time."""
    from streams import score_requests
    from tests.integration.workers import send_all

    sent = {r.request_id: time.time() for r in requests}
    send_all(settings, "score_requests", [(r.user_id.encode(), score_requests.CODEC.encode(r)) for r in requests])
    return sent


def checkpoint_counters(settings: Settings) -> dict[str, int]:
    latest = settings.worker.checkpoint_dir / "LATEST"
    if not latest.exists():
        return {"records": 0, "samples": 0}
    folder = settings.worker.checkpoint_dir / latest.read_text().strip()
    return json.loads((folder / "offsets.json").read_text())["counters"]


class Sender:
    """One producer for many sends (a producer per send costs a connection and a metadata round trip)."""

    def __init__(self, settings: Settings) -> None:
        from tests.integration.workers import producer

        self.settings = settings
        self.producer = producer(settings)
        self.futures: list = []

    def send(self, topic_key: str, key: bytes | None, value: bytes | None):
        """Send one record; returns the future of its metadata (partition, offset)."""
        from streams.registry import TOPIC_MODULES

        future = self.producer.send(self.settings.topics.name(TOPIC_MODULES[topic_key].TOPIC.name), key=key, value=value)
        self.futures.append(future)
        return future

    def failed_sends(self) -> list[str]:
        """Why each send that did not reach the broker failed (after a flush): an unanswered
        request is then the system's loss, not the test's."""
        self.flush()
        return [repr(f.exception) for f in self.futures if f.failed()]

    def request(self, request) -> float:
        from streams import score_requests

        self.send("score_requests", request.user_id.encode(), score_requests.CODEC.encode(request))
        return time.time()

    def flush(self) -> None:
        self.producer.flush()

    def close(self) -> None:
        self.producer.close()


def redis_store(settings: Settings):

    return open_store(settings.redis)
