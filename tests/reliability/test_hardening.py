"""Issue 13 on the real broker: no record, valid or not, crashes a worker, silences the joiner or
escapes a bound.

One serving worker (``history,joiner,scorer``, a model published) receives each class of hostile
input; after each the test checks the worker is the same process, that Faust never restarted one
of its agents (no "Crashed" in its log) and that it answers a valid score request:

- a maximal valid ``rank-scores`` record (5000 ranked items with 16 objectives, 5000 candidates):
  the joiner's idle-flush timer used to raise on the sample it built, and the worker exited;
- a valid score request whose audited answer JSON-escapes past the producer's limit: the send
  used to crash the scorer agent, unanswered;
- a 7 MB record (over the 4 MiB input limit): its dead letter used to be too large to send;
- one impression stamped 23 h ahead: it used to move the watermark and make every later event late;
- 300 records with distinct unknown field names and one with a 1 MiB field name: they used to
  make 300 metric series and a 1 MiB log line;
- records keyed by another user than their ``user_id`` (and a snapshot of another user): they
  used to be joined where that other user lives;
- Faust's table API (``/table/...`` returned a stored profile) and a client that disconnects in
  the middle of ``POST /score``.
"""

from __future__ import annotations

import json
import socket
import time

import pytest
from kafka import KafkaProducer

from core.kafka import kafka_python_options
from monitoring.scrape import metric_sum, scrape
from streams import dead_letters, score_requests, score_responses, training_samples
from streams.registry import TOPIC_MODULES
from tests.reliability.harness import (
    Sender,
    TopicReader,
    Worker,
    create_topics,
    derive,
    fresh_settings,
    publish_model,
    score_request,
    wait_for,
)
from tests.reliability.hostile import (
    audited_request_id,
    huge_field_name_record,
    maximal_rank_scores,
    over_the_input_limit,
    oversized_response_request,
    unknown_field_records,
)

pytestmark = pytest.mark.integration

HOUR_MS = 3_600_000


class Serving:
    """The module's worker, its topics' readers and its log, read from where a test starts."""

    def __init__(self, settings, worker, folder) -> None:
        self.settings = settings
        self.worker = worker
        self.pid = worker.pid
        self.folder = folder
        self.readers = {key: TopicReader(settings, key) for key in ("dead_letters", "score_responses",
                                                                     "training_samples")}
        self.probes = 0

    def topic(self, key: str) -> str:
        return self.settings.topics.name(TOPIC_MODULES[key].TOPIC.name)

    def log_size(self) -> int:
        return self.worker.log_path.stat().st_size

    def log_since(self, offset: int) -> str:
        with self.worker.log_path.open("rb") as log:
            log.seek(offset)
            return log.read().decode(errors="replace")

    def _read(self, key: str, codec, timeout_s: float, done, what: str | None) -> list:
        """Every record of a topic read so far, once ``done(records)`` (raises after ``timeout_s``
        naming ``what``; with ``what=None``, reads for ``timeout_s`` and returns what came)."""
        reader = self.readers[key]
        decoded_done = lambda got: done([codec.decode(m.value) for m in got])  # noqa: E731
        try:
            messages = (reader.until(decoded_done, timeout_s, [self.worker]) if what is not None
                        else reader.read_for(timeout_s, decoded_done))
        except AssertionError as timed_out:
            raise AssertionError(f"waiting for {what}: {timed_out}") from None
        return [codec.decode(m.value) for m in messages]

    def letters(self, timeout_s: float, done=lambda got: False, what: str | None = None) -> list:
        return self._read("dead_letters", dead_letters.CODEC, timeout_s, done, what)

    def responses(self, timeout_s: float, done=lambda got: False, what: str | None = None) -> list:
        return self._read("score_responses", score_responses.CODEC, timeout_s, done, what)

    def samples(self, timeout_s: float, done=lambda got: False, what: str | None = None) -> list:
        return self._read("training_samples", training_samples.CODEC, timeout_s, done, what)

    def metrics(self) -> dict:
        return scrape(self.worker.metrics_port)

    def send(self, topic_key: str, key: bytes | None, value: bytes | None):
        """Send one record (up to the broker's 8 MiB); returns its metadata."""
        producer = KafkaProducer(**kafka_python_options(self.settings.kafka), acks="all",
                                 max_request_size=8 * 1024 * 1024)
        try:
            return producer.send(self.topic(topic_key), key=key, value=value).get(timeout=60)
        finally:
            producer.close()

    def assert_alive_and_answering(self, log_from: int) -> None:
        """Same process, no agent restarted since ``log_from``, and a valid request answered."""
        assert self.worker.alive(), self.worker.log_tail()
        assert self.worker.pid == self.pid
        self.probes += 1
        probe = score_request(f"probe-{self.probes}", "probe-user", n_candidates=20, k=5)
        sender = Sender(self.settings)
        try:
            sender.request(probe)
            sender.flush()
        finally:
            sender.close()
        answered = self.responses(90, lambda got: any(r.request_id == probe.request_id for r in got),
                                  f"the answer to {probe.request_id}")
        (response,) = [r for r in answered if r.request_id == probe.request_id]
        assert response.error is None and len(response.items) == 5, response.error
        logged = self.log_since(log_from)
        assert "Crashed" not in logged, logged[-3000:]
        assert self.worker.alive() and self.worker.pid == self.pid


@pytest.fixture(scope="module")
def serving(base_settings, tmp_path_factory):
    from streams.registry import delete_topics
    from tests.conftest import need_service

    need_service("Kafka", base_settings.stack.host, base_settings.stack.kafka_port)
    need_service("Redis", base_settings.stack.host, base_settings.stack.redis_port)
    folder = tmp_path_factory.mktemp("hardening")
    stack = derive(fresh_settings(base_settings, folder), worker={"join_idle_flush_s": 2.0, "audit_every": 20})
    create_topics(stack)
    publish_model(stack)
    worker = Worker(stack, "history,joiner,scorer", folder / "serving.log")
    state = None
    try:
        wait_for(lambda: _up(worker), 90, "the serving worker's /metrics", [worker])
        state = Serving(stack, worker, folder)
        state.assert_alive_and_answering(0)  # warm: the scorer holds the model
        yield state
    finally:
        if state is not None:
            for reader in state.readers.values():
                reader.close()
        worker.stop()
        delete_topics(kafka_python_options(stack.kafka), (stack.topics.prefix, stack.worker.app_id))


def _up(worker) -> bool:
    try:
        scrape(worker.metrics_port)
        return True
    except OSError:
        return False


# --- 1. no exception escapes an agent or a timer ------------------------------------------------
def test_a_maximal_rank_scores_record_does_not_stop_the_worker(serving, measure):
    start = serving.log_size()
    now = int(time.time() * 1000)
    value = maximal_rank_scores("maximal", "max-user", now)
    assert len(value) < 4 * 1024 * 1024
    meta = serving.send("rank_scores", b"max-user", value)

    def outcome() -> str | None:  # a (cut) training sample, or a dead letter naming the record
        if any(s.request_id == "maximal" for s in serving.samples(0.5)):
            return "sample"
        if any(d.source_topic == meta.topic and d.offset == meta.offset for d in serving.letters(0.5)):
            return "dead letter"
        return None

    found = wait_for(outcome, 120, "a training sample or a dead letter of the maximal record", [serving.worker])
    measure("rank_scores_bytes", len(value))
    measure("emitted_as", found)
    serving.assert_alive_and_answering(start)


def test_a_response_over_the_producers_limit_is_answered_and_the_scorer_survives(serving, measure):
    start = serving.log_size()
    request_id = audited_request_id("huge-answer-")
    value = oversized_response_request(request_id, "wide-user", int(time.time() * 1000))
    assert len(value) < 4 * 1024 * 1024
    serving.send("score_requests", b"wide-user", value)
    answered = serving.responses(180, lambda got: any(r.request_id == request_id for r in got), "the wide answer")
    (response,) = [r for r in answered if r.request_id == request_id]
    measure("request_bytes", len(value))
    measure("answered_with_error", int(response.error is not None))
    serving.assert_alive_and_answering(start)


def test_a_record_over_the_input_limit_becomes_a_bounded_dead_letter(serving, measure):
    start = serving.log_size()
    before = metric_sum(serving.metrics(), "prerank_dead_letters_total", topic=serving.topic("score_requests"))
    meta = serving.send("score_requests", b"u-big", over_the_input_limit())
    def mine(letters) -> list:
        return [d for d in letters if d.offset == meta.offset and d.source_topic == meta.topic]

    (letter,) = mine(serving.letters(90, lambda got: bool(mine(got)), "the 7 MB record's dead letter"))
    assert letter.partition == meta.partition and "bytes" in letter.reason
    metrics = serving.metrics()
    assert metric_sum(metrics, "prerank_dead_letters_total", topic=serving.topic("score_requests"),
                      reason="too_large") >= 1  # the size is not in the label
    assert metric_sum(metrics, "prerank_dead_letters_total", topic=serving.topic("score_requests")) == before + 1
    measure("dead_letter_value_b64_chars", len(letter.value_b64 or ""))
    serving.assert_alive_and_answering(start)


# --- 2. a watermark one event cannot move far ------------------------------------------------------
def test_one_impression_23_hours_ahead_does_not_make_on_time_events_late(serving, measure):
    from streams import impressions, rank_scores
    from streams.impressions import Impression
    from streams.rank_scores import RankScores
    from streams.training_samples import UserSnapshot

    start = serving.log_size()
    user = "clock-user"  # every event of this test on one partition: one watermark
    late_before = metric_sum(serving.metrics(), "prerank_joiner_events_total", event="late")
    now = int(time.time() * 1000)

    def request(name: str, ts: int) -> list[tuple[str, bytes]]:
        ranked = RankScores(request_id=name, user_id=user, ts_ms=ts, candidates=["i1", "i2", "i3"],
                            items=[{"item_id": "i1", "rank": 0, "logits": {"click": 1.0}}],
                            user=UserSnapshot(user_id=user))
        shown = Impression(request_id=name, user_id=user, item_id="i1", ts_ms=ts + 10, click=1)
        return [("rank_scores", rank_scores.CODEC.encode(ranked)), ("impressions", impressions.CODEC.encode(shown))]

    sender = Sender(serving.settings)
    try:
        for r in range(20):
            for topic, value in request(f"before{r}", now - 20_000 + 1000 * r):
                sender.send(topic, user.encode(), value)
        sender.flush()
        sender.send("impressions", user.encode(), impressions.CODEC.encode(Impression(
            request_id="evil", user_id=user, item_id="x", ts_ms=now + 23 * HOUR_MS)))  # < max_future_ms (24 h)
        sender.flush()
        for r in range(10):
            for topic, value in request(f"after{r}", now + 1000 + 100 * r):
                sender.send(topic, user.encode(), value)
        sender.flush()
    finally:
        sender.close()
    wanted = {f"after{r}" for r in range(10)}
    samples = serving.samples(90, lambda got: wanted <= {s.request_id for s in got}, "the on-time requests' samples")
    joined = {s.request_id: s for s in samples if s.request_id in wanted}
    assert all(sample.click[0] == 1 for sample in joined.values())  # each with its impression
    late = metric_sum(serving.metrics(), "prerank_joiner_events_total", event="late") - late_before
    measure("late_after_the_outlier", late)
    assert late == 0
    assert metric_sum(serving.metrics(), "prerank_joiner_events_total", event="ahead") >= 1
    serving.assert_alive_and_answering(start)


# --- 3. closed label sets, bounded logs ------------------------------------------------------------
def test_distinct_bad_field_names_make_no_new_series_and_no_huge_log_line(serving, measure):
    start = serving.log_size()
    topic = serving.topic("user_profiles")
    sender = Sender(serving.settings)
    try:
        futures = [sender.send("user_profiles", b"label-user", value) for value in unknown_field_records("label-user", 300)]
        sender.flush()
        offsets = {(f.get(timeout=30).partition, f.get(timeout=30).offset) for f in futures}
    finally:
        sender.close()
    huge = serving.send("user_profiles", b"label-user", huge_field_name_record("label-user"))
    offsets.add((huge.partition, huge.offset))
    serving.letters(120, lambda got: offsets <= {(d.partition, d.offset) for d in got if d.source_topic == topic},
                    "a dead letter of every record")
    metrics = serving.metrics()
    series = [labels for (name, labels), _ in metrics.items()
              if name == "prerank_dead_letters_total" and ("topic", topic) in labels]
    longest = max(len(line) for line in serving.log_since(start).splitlines())
    measure("dead_letter_series", len(series))
    measure("longest_log_line", longest)
    assert metric_sum(metrics, "prerank_dead_letters_total", topic=topic, reason="unknown_field") >= 301
    assert len(series) <= 3, series
    assert longest < 20_000
    serving.assert_alive_and_answering(start)


# --- 6. keys --------------------------------------------------------------------------------------
def test_records_keyed_by_another_user_are_refused(serving, measure):
    from streams import impressions, user_profiles
    from streams.impressions import Impression
    from streams.user_profiles import UserProfile

    start = serving.log_size()
    now = int(time.time() * 1000)
    ranked = {"request_id": "stolen", "user_id": "owner", "ts_ms": now, "candidates": ["i1"],
              "items": [{"item_id": "i1", "rank": 0, "logits": {"click": 1.0}}], "user": {"user_id": "owner"}, "v": 1}
    other_snapshot = {**ranked, "request_id": "borrowed", "user": {"user_id": "someone-else"}}
    bad = [
        ("user_profiles", b"intruder", user_profiles.CODEC.encode(UserProfile(user_id="owner", fields={"age": "30"})),
         {"profiles"}),
        ("impressions", b"intruder", impressions.CODEC.encode(Impression(request_id="stolen", user_id="owner",
                                                                         item_id="i1", ts_ms=now)),
         {"history", "joiner"}),
        ("rank_scores", b"intruder", json.dumps(ranked).encode(), {"joiner"}),
        ("rank_scores", b"owner", json.dumps(other_snapshot).encode(), {"joiner"}),
        ("score_requests", b"intruder", score_requests.CODEC.encode(score_request("stolen-request", "owner")),
         {"scorer"}),
    ]
    expected = set()
    for topic, key, value, agents in bad:
        meta = serving.send(topic, key, value)
        expected |= {(meta.topic, meta.partition, meta.offset, agent) for agent in agents}
    letters = serving.letters(90, lambda got: expected <= {(d.source_topic, d.partition, d.offset, d.agent)
                                                           for d in got}, "a dead letter per agent and record")
    mine = [d for d in letters if (d.source_topic, d.partition, d.offset, d.agent) in expected]
    assert len(mine) == len(expected) == 6
    metrics = serving.metrics()
    refused = metric_sum(metrics, "prerank_dead_letters_total", reason="key_mismatch")
    measure("key_mismatch_dead_letters", refused)
    assert refused >= 6
    serving.assert_alive_and_answering(start)
    answered = {r.request_id for r in serving.responses(1)}
    assert "stolen-request" not in answered
    trained = {s.request_id for s in serving.samples(5)}
    assert not {"stolen", "borrowed"} & trained


# --- 4 and 5. Faust's table API off; a client that disconnects mid-body --------------------------
def test_fausts_table_api_is_off(serving):
    import http.client

    from streams import user_profiles
    from streams.user_profiles import UserProfile

    serving.send("user_profiles", b"tabled", user_profiles.CODEC.encode(UserProfile(user_id="tabled",
                                                                                   fields={"age": "30"})))
    time.sleep(2)
    statuses = {}
    for path in ("/table/user-profiles/tabled/", "/table/", "/router/"):
        connection = http.client.HTTPConnection("127.0.0.1", serving.worker.web_port, timeout=10)
        try:
            connection.request("GET", path)
            response = connection.getresponse()
            statuses[path] = (response.status, response.read()[:200])
        finally:
            connection.close()
    assert all(status == 404 for status, _ in statuses.values()), statuses
    assert all(b"30" not in body for _, body in statuses.values())


def test_a_client_that_disconnects_mid_body_leaves_no_error(serving):
    start = serving.log_size()
    for _ in range(5):
        client = socket.create_connection(("127.0.0.1", serving.worker.web_port), timeout=10)
        client.sendall(b"POST /score HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                       b"Content-Length: 100000\r\n\r\n" + b'{"request_id": "cut", "candidates": [')
        time.sleep(0.2)
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")  # RST
        client.close()
    time.sleep(2)
    logged = serving.log_since(start)
    assert "Traceback" not in logged and "ConnectionResetError" not in logged, logged[-3000:]
    assert "Error handling request" not in logged, logged[-3000:]
    serving.assert_alive_and_answering(start)


# --- the trainer's loop: a record that cannot be learned (no broker needed) --------------------
def test_a_record_the_trainer_cannot_learn_is_set_aside_and_the_others_are_learned(monkeypatch):
    from prometheus_client import CollectorRegistry

    from agents import trainer as trainer_module
    from agents.trainer import Trainer, TrainerState
    from core.settings import Settings
    from funnel.dedupe import RecentIds
    from funnel.training import ProgressiveAUC, new_learner
    from monitoring.metrics import PrerankMetrics
    from tests.reliability.harness import funnel_events

    settings = derive(Settings(_env_file=None), model={"hidden_dim": 16, "output_dim": 8, "embedding_dim": 4})
    trainer = Trainer.__new__(Trainer)
    trainer.settings, trainer.publisher = settings, None
    trainer.metrics = PrerankMetrics(CollectorRegistry())
    trainer.state = TrainerState(new_learner(settings), RecentIds(100))
    trainer.progressive = ProgressiveAUC()
    records = [_record(rank) for rank in funnel_events(4)[0]]
    real = trainer_module.sample_from_record

    def poisoned(record):
        if record.request_id == "req2":
            raise ValueError("this record cannot be learned")
        return real(record)

    monkeypatch.setattr(trainer_module, "sample_from_record", poisoned)
    result = trainer.learn(records)
    assert [(index, type(exc).__name__) for index, exc in result["failed"]] == [(2, "ValueError")]
    assert trainer.state.counters["records"] == 3 and "req2" not in trainer.state.learned
    assert result["samples"] > 0 and "loss" in result


def _record(rank):
    """The training record the joiner would emit for a rank-scores record (no impressions)."""
    from funnel.convert import record_from_sample, user_from_snapshot
    from funnel.labels import LabelConfig, build_request_sample
    from models.features import ItemFeatures

    sample = build_request_sample(rank.request_id, rank.ts_ms, user_from_snapshot(rank.user),
                                  [ItemFeatures(i) for i in rank.candidates], rank.items, [], LabelConfig())
    return record_from_sample(sample, rank.user)
