"""The closed funnel through the real system: Kafka topics, Faust workers, Redis versions.

:class:`StreamingReplay` plays the app and the event log. In event-time order it sends each
request (exposed items plus ~1000 recalled candidates) to ``score-requests``; when the scorer's
response arrives it hands the student's scores of the exposed items to the evaluation
(progressive: the serving model has not learned this request yet), on a sample of requests with
the whole candidate set and the student's top-k (the consistency audit: the teacher scores every
candidate), and only then emits the request's logged exposures to ``impressions``. The evaluation
(teacher and baselines, :mod:`replay.evaluator`) runs in a process of its own, so that the driver
is not what limits the funnel's rate; the driver's own CPU per stage is in the report
(:mod:`replay.cpu`). The simulated fine ranker (its own worker) turns responses into
``rank-scores``; the joiner, trainer and publisher do the rest. Up to ``inflight`` requests are
outstanding at once.

Ctrl-C stops sending, lets the requests in flight finish, and checkpoints the replay (the
requests completed, the evaluation logs, the baselines' models: :meth:`StreamingReplay.save`),
so ``prerank replay --resume`` continues where it stopped; the same checkpoint is also written
every ``checkpoint_every`` requests once ``checkpoint_interval_s`` have passed, so even a crash
loses at most that much evaluation (those requests are replayed; the joiner drops the duplicate
rank scores).

The teacher is pre-fit in process on the requests before ``train_until`` (:func:`prefit_teacher`),
saved, and loaded by the fine-ranker worker, so the replay and the ranker share one teacher.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.errors import KafkaError

from core.kafka import consumer_options, kafka_python_options
from core.settings import Settings
from funnel.history import HistoryConfig
from funnel.labels import request_rng
from funnel.store import open_store
from models.features import UserFeatures
from replay.candidates import CandidateConfig
from replay.cpu import DriverClock
from replay.dataset import Dataset
from replay.evaluator import Evaluator, EvaluatorProcess
from replay.events import Request
from replay.exceptions import ReplayInterrupted, ReplayStalled
from replay.grouping import DEFAULT_GAP_MS, group_requests
from replay.offline import sample_rate, user_in_sample
from replay.state import ReplayState
from streams import (
    impressions,
    item_catalog,
    score_requests,
    score_responses,
    user_profiles,
)
from streams.impressions import Impression
from streams.item_catalog import CatalogItem
from streams.registry import TOPIC_MODULES
from streams.score_requests import RequestContext, ScoreRequest
from streams.user_profiles import UserProfile

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StreamConfig:
    train_until_ms: int
    eval_from_ms: int
    until_ms: int | None = None
    max_requests: int | None = 3000
    k: int = 200
    inflight: int = 16
    consistency_every: int = 5
    consistency_n: int = 10
    consistency_ks: tuple[int, ...] = (10, 50, 100, 200)
    prefit_days: float = 2.0  # requests this long before train_until warm the state and fit the teacher
    request_gap_ms: int = DEFAULT_GAP_MS
    candidates: CandidateConfig = CandidateConfig()
    history: HistoryConfig = HistoryConfig()
    response_timeout_s: float = 30.0
    speed: float | None = None  # None: as fast as the system answers; x: x times real time
    bucket_ms: int = 6 * 3_600_000  # event-time buckets of the metrics-over-time series
    hit_k: int = 100  # hit rate: a long-viewed exposed item inside the arm's top-k of all candidates
    checkpoint_every: int = 200  # answered requests between two checkpoints of the replay itself ...
    checkpoint_interval_s: float = 60.0  # ... and seconds: a checkpoint rewrites every log so far
    evaluator_process: bool = True  # teacher and baselines score in a process of their own
    seed: int = 0


@dataclass
class Outstanding:
    request: Request
    candidates: list[str]
    indices: np.ndarray  # the candidates' catalog indices, in the same order
    user: UserFeatures
    sent_at: float


def prefit_teacher(state: ReplayState, teacher, requests: list[Request], batch: int = 32,
                   max_fit_requests: int | None = 20_000) -> dict:
    """Fit the fine ranker on the logged exposures of the last ``max_fit_requests`` of ``requests``
    (in order); every request warms the user histories and popularity."""
    started = time.perf_counter()
    pending = []
    fit_from = 0 if max_fit_requests is None else max(0, len(requests) - max_fit_requests)
    for index, request in enumerate(requests):
        if index < fit_from:
            state.after(request)
            continue
        pending.append(state.logged_sample(request, state.snapshot(request)))
        if len(pending) >= batch:
            teacher.learn_many(pending)
            pending = []
        state.after(request)
    if pending:
        teacher.learn_many(pending)
    return {"prefit_requests": len(requests), "teacher_fit_requests": len(requests) - fit_from,
            "prefit_s": time.perf_counter() - started}


class StreamingReplay:
    """Drive the funnel through the running workers; :meth:`run` returns the report."""

    def __init__(
        self, settings: Settings, state: ReplayState, teacher,
        progress: Callable[[dict], None] | None = None, baselines: Mapping[str, object] | None = None,
    ) -> None:
        self.settings = settings
        self.state = state
        self.config = state.config
        self.progress = progress or (lambda _: None)
        # Teacher and baselines score on the side, in a process of their own during run() (see
        # replay.evaluator); outside run(), and with evaluator_process off, in this one.
        self.evaluator = Evaluator(state, teacher, self.config, baselines)
        self.evaluation: Evaluator | EvaluatorProcess = self.evaluator
        self._evaluated: dict | None = None  # the evaluation's summary once run() has finished
        self.completed: list[str] = []  # request ids whose impressions went out, in that order
        self.interrupted = False
        self.latencies_ms: list[float] = []
        self.round_trips_ms: list[float] = []
        self.tiers = {"local": 0, "computed": 0}
        self.counts = {"sent": 0, "answered": 0, "errors": 0, "timeouts": 0, "eval_requests": 0,
                       "impressions": 0}
        self.versions: set[int] = set()
        self._answered_before = 0
        self.clock = DriverClock()

    def topic(self, key: str) -> str:
        return self.settings.topics.name(TOPIC_MODULES[key].TOPIC.name)

    def wait_for_catalog(self, item_ids: list[str], timeout_s: float = 120.0) -> float:
        """Until the catalog agent has written every item to Redis (a request before that would be
        scored on bare ids); returns the seconds waited. After ``timeout_s`` it warns and goes on."""
        store = open_store(self.settings.redis)
        started = time.monotonic()
        missing = item_ids
        while missing:
            missing = [item for item, found in zip(missing, store.items(missing)) if found is None]
            if missing and time.monotonic() - started > timeout_s:
                log.warning("%d catalog items still not in Redis after %.0f s", len(missing), timeout_s)
                break
            if missing:
                time.sleep(0.2)  # a poll interval: the condition is re-checked
        return time.monotonic() - started

    def load_reference_data(self, producer: KafkaProducer, users: set[str]) -> dict[str, int]:
        """Catalog and profiles into their compacted topics, before any request."""
        for item in self.state.dataset.catalog.values():
            record = CatalogItem(item_id=item.item_id, author_id=item.author_id or "unknown",
                                 tags=list(item.tags), duration_ms=item.duration_ms)
            producer.send(self.topic("item_catalog"), key=item.item_id.encode(),
                          value=item_catalog.CODEC.encode(record))
        n_profiles = 0
        for user_id, fields in self.state.dataset.profiles.items():
            if user_id in users:
                producer.send(self.topic("user_profiles"), key=user_id.encode(),
                              value=user_profiles.CODEC.encode(UserProfile(user_id=user_id, fields=dict(fields))))
                n_profiles += 1
        producer.flush()
        return {"catalog_items": len(self.state.dataset.catalog), "profiles": n_profiles}

    def run(self, requests: list[Request], checkpoint: Callable[[], None] | None = None) -> dict:
        """Stream ``requests`` (skipping those already :attr:`completed`); ``checkpoint()`` is called
        every ``checkpoint_every`` answers and at the end, also on Ctrl-C, which then raises
        :class:`~replay.exceptions.ReplayInterrupted`."""
        done = set(self.completed)
        pending = [r for r in requests if r.request_id not in done]
        # What is alive now (the log, the histories, the teacher: over half a million objects) lives
        # as long as the replay. Frozen, the cyclic collector stops walking it: a full collection
        # took 0.2 s here, and in the forked evaluation process each walk would also copy every
        # memory page the fork shares.
        gc.freeze()
        if self.config.evaluator_process:  # forked first: before this process has Kafka clients and their threads
            self.evaluation = EvaluatorProcess(self.evaluator, pending)
        try:
            return self._stream(pending, len(done), len(requests), checkpoint)
        finally:
            if self.evaluation is not self.evaluator:
                self.evaluation.close()
                self.evaluation = self.evaluator  # stale now: the summary was kept in self._evaluated
            gc.unfreeze()

    def _stream(self, requests: list[Request], resumed: int, total: int, checkpoint: Callable[[], None] | None) -> dict:
        config = self.config
        kafka = kafka_python_options(self.settings.kafka)
        producer = KafkaProducer(**kafka, linger_ms=2, max_request_size=8 * 1024 * 1024)
        consumer = KafkaConsumer(**kafka, **consumer_options(self.settings.kafka), group_id=None, enable_auto_commit=False,
                                 max_partition_fetch_bytes=8 * 1024 * 1024)
        partitions = [TopicPartition(self.topic("score_responses"), p)
                      for p in sorted(consumer.partitions_for_topic(self.topic("score_responses")) or [])]
        consumer.assign(partitions)
        consumer.seek_to_end(*partitions)
        for tp in partitions:
            consumer.position(tp)  # resolve the end offsets now, before the first request
        loaded = self.load_reference_data(producer, {r.user_id for r in requests})
        loaded["catalog_wait_s"] = self.wait_for_catalog(list(self.state.dataset.catalog))
        outstanding: dict[str, Outstanding] = {}
        started = time.perf_counter()
        self.clock.start()
        saved_at, saved_time = len(self.completed), time.monotonic()
        self._answered_before = self.counts["answered"]
        self._last_answer = time.monotonic()

        def maybe_checkpoint() -> None:
            # By count and by time: a long replay's checkpoint rewrites every log so far, and at a
            # hundred requests a second one every 200 requests would cost more than the replay.
            nonlocal saved_at, saved_time
            if (checkpoint is not None and len(self.completed) - saved_at >= config.checkpoint_every
                    and time.monotonic() - saved_time >= config.checkpoint_interval_s):
                with self.clock.stage("checkpoint"):
                    producer.flush()  # a completed request's impressions are on the broker before it is saved
                    checkpoint()
                saved_at, saved_time = len(self.completed), time.monotonic()

        try:
            try:
                first_ts = self._first_ts_ms = requests[0].ts_ms if requests else 0
                for index, request in enumerate(requests):
                    while len(outstanding) >= config.inflight:
                        self._receive(consumer, producer, outstanding)
                        self._check_stalled(outstanding)
                    if config.speed:  # pace event time at `speed` times real time
                        due = started + (request.ts_ms - first_ts) / 1000 / config.speed
                        while time.perf_counter() < due:
                            self._receive(consumer, producer, outstanding)
                    self._send(producer, request, outstanding)
                    maybe_checkpoint()
                    if index % 10 == 0:
                        with self.clock.stage("progress"):
                            self._report_progress(index, resumed, total, started, outstanding, request.ts_ms)
            except KeyboardInterrupt:
                self.interrupted = True
                self.progress({"interrupted": f"finishing {len(outstanding)} requests in flight "
                                              "(Ctrl-C again to stop at once)"})
            deadline = time.monotonic() + config.response_timeout_s
            try:
                while outstanding and time.monotonic() < deadline:
                    self._receive(consumer, producer, outstanding)
            except KeyboardInterrupt:
                self.interrupted = True  # the unanswered ones are sent again on resume
            if not self.interrupted:
                self.counts["timeouts"] += len(outstanding)
                if requests:  # the bar ends at its total
                    self._report_progress(len(requests), resumed, total, started, outstanding, requests[-1].ts_ms)
        except KafkaError as error:
            raise ReplayStalled(f"Kafka failed during the replay: {error}") from error
        finally:
            try:
                producer.flush(timeout=config.response_timeout_s)
            except KafkaError as error:  # the broker is gone: the unflushed requests are sent again on resume
                log.warning("could not flush the replay's producer: %s", error)
            producer.close(timeout=5)
            consumer.close()
            if checkpoint is not None:
                checkpoint()
        if self.interrupted:
            raise ReplayInterrupted(len(self.completed), total)
        elapsed = time.perf_counter() - started
        self._evaluated = self.evaluation.summary()
        return self.summary(elapsed, loaded)

    def _send(self, producer: KafkaProducer, request: Request, outstanding: dict[str, Outstanding]) -> None:
        with self.clock.stage("candidates"):
            user = self.state.snapshot(request)
            history = self.state.history(request.user_id)
            indices = self.state.generator.build(request.request_id, request.item_ids, history.authors,
                                                 history.tags, request.ts_ms)
            # Shuffled (seeded by request), so that an arm with tied scores cannot rank the exposed
            # items first by their position (the generator lists them first).
            indices = indices[request_rng(self.config.seed, request.request_id).permutation(len(indices))]
            candidates = self.state.generator.item_ids(indices)
        with self.clock.stage("send"):
            score_request = ScoreRequest(
                request_id=request.request_id, user_id=request.user_id, ts_ms=request.ts_ms,
                context=RequestContext(tab=min(request.tab, 1000), hour=user.hour, weekday=user.weekday),
                candidates=candidates, k=min(self.config.k, len(candidates)),
                score_items=list(dict.fromkeys(request.item_ids)),
            )
            producer.send(self.topic("score_requests"), key=request.user_id.encode(),
                          value=score_requests.CODEC.encode(score_request))
        outstanding[request.request_id] = Outstanding(request, candidates, indices, user, time.perf_counter())
        self.counts["sent"] += 1

    def _receive(self, consumer: KafkaConsumer, producer: KafkaProducer, outstanding: dict[str, Outstanding]) -> None:
        # No producer.flush() here: it would wait for the broker's acks of every record sent so far
        # on each poll; the producer's linger (2 ms) sends them, batched, while this waits for answers.
        with self.clock.stage("poll"):
            polled = consumer.poll(timeout_ms=200)
        for messages in polled.values():
            for message in messages:
                with self.clock.stage("decode"):
                    response = score_responses.CODEC.decode(message.value)
                pending = outstanding.pop(response.request_id, None)
                if pending is not None:
                    self._answered(pending, response, producer)

    def _answered(self, pending: Outstanding, response, producer: KafkaProducer) -> None:
        request = pending.request
        self._last_answer = time.monotonic()
        self.round_trips_ms.append((time.perf_counter() - pending.sent_at) * 1000)
        self.counts["answered"] += 1
        if response.error is not None:
            self.counts["errors"] += 1
        else:
            self.latencies_ms.append(response.latency_ms)
            self.versions.add(response.model_version)
            for tier, count in response.cache_tiers.items():
                self.tiers[tier] = self.tiers.get(tier, 0) + count
            if request.ts_ms >= self.config.eval_from_ms:
                with self.clock.stage("evaluate"):
                    self._evaluate(pending, response)
        if self.evaluator.baselines:
            with self.clock.stage("evaluate"):
                self.evaluation.learn(request, pending.user)
        with self.clock.stage("impressions"):
            for position, exposure in enumerate(request.exposures):
                record = Impression(
                    request_id=request.request_id, user_id=request.user_id, item_id=exposure.item_id,
                    ts_ms=exposure.ts_ms, position=position, tab=min(exposure.tab, 1000), click=exposure.click,
                    long_view=exposure.long_view, like=exposure.like, play_ms=exposure.play_ms,
                    duration_ms=exposure.duration_ms,
                )
                producer.send(self.topic("impressions"), key=request.user_id.encode(),
                              value=impressions.CODEC.encode(record))
                self.counts["impressions"] += 1
        with self.clock.stage("state"):
            self.state.after(request)
        self.completed.append(request.request_id)

    def _check_stalled(self, outstanding: dict[str, Outstanding]) -> None:
        waited = time.monotonic() - self._last_answer
        if outstanding and waited > self.config.response_timeout_s:
            raise ReplayStalled(
                f"no answer on {self.topic('score_responses')} for {waited:.0f} s with {len(outstanding)} requests "
                "in flight: is the scorer worker or the broker down? (worker logs are in the run folder)")

    def _evaluate(self, pending: Outstanding, response) -> None:
        """Hand the response's scores of the exposed items to the evaluation; every
        ``consistency_every``-th evaluated request also its candidates and top-k (the audit)."""
        request = pending.request
        self.counts["eval_requests"] += 1
        exposed_scores = {e.item_id: response.item_scores[e.item_id] for e in request.exposures
                          if e.item_id in response.item_scores}
        if (self.counts["eval_requests"] - 1) % self.config.consistency_every == 0:
            self.evaluation.evaluate(request, pending.user, exposed_scores, pending.indices,
                                     [scored.item_id for scored in response.items])
        else:
            self.evaluation.evaluate(request, pending.user, exposed_scores)

    def save(self, directory: Path) -> None:
        """Checkpoint: ``eval.json`` (requests completed, counts, latencies and the evaluation's
        logs) and the baselines' models, each file replaced atomically."""
        directory.mkdir(parents=True, exist_ok=True)
        evaluation = self.evaluation.save(directory)  # first: eval.json is the commit point
        state = {
            "completed": self.completed, "counts": self.counts, "tiers": self.tiers,
            "versions": sorted(self.versions), "latencies_ms": self.latencies_ms,
            "round_trips_ms": self.round_trips_ms, **evaluation,
        }
        temporary = directory / "eval.json.tmp"
        temporary.write_text(json.dumps(state))
        os.replace(temporary, directory / "eval.json")

    def restore(self, directory: Path) -> list[str]:
        """Load a checkpoint written by :meth:`save` (before :meth:`run`); returns the completed
        request ids, in order. The caller replays those requests into the :class:`ReplayState`
        (histories, popularity)."""
        state = json.loads((directory / "eval.json").read_text())
        self.completed = list(state["completed"])
        self.counts.update(state["counts"])
        self.tiers.update(state["tiers"])
        self.versions = set(state["versions"])
        self.latencies_ms = list(state["latencies_ms"])
        self.round_trips_ms = list(state["round_trips_ms"])
        self.evaluator.restore(state, directory)
        return self.completed

    def evaluated(self) -> dict:
        """The evaluation's summary (:meth:`replay.evaluator.Evaluator.summary`): as the finished
        :meth:`run` left it, else of the evaluation as it is."""
        return self._evaluated if self._evaluated is not None else self.evaluation.summary()

    def baseline_summaries(self) -> dict[str, dict]:
        evaluated = self.evaluated()
        return {
            name: {**metrics,
                   "path": "in-process baseline on the streamed requests", "requests": self.counts["eval_requests"],
                   "samples_learned": evaluated["baseline_samples"], "zero_row_ratio": float("nan"),
                   "export_size_reduction": float("nan")}
            for name, metrics in evaluated["baselines"].items()
        }

    def _report_progress(self, index: int, resumed: int, total: int, started: float, outstanding,
                         event_ts_ms: int) -> None:
        elapsed = time.perf_counter() - started
        behind = (time.perf_counter() - started - (event_ts_ms - self._first_ts_ms) / 1000 / self.config.speed
                  if self.config.speed else None)
        self.progress({
            "requests": resumed + index, "total": total, "elapsed_s": elapsed,
            "requests_per_s": index / elapsed if elapsed > 0 else 0.0, "inflight": len(outstanding),
            "answered": self.counts["answered"], "impressions": self.counts["impressions"],
            "event_time_ms": event_ts_ms, "behind_schedule_s": behind,
        })


    def summary(self, elapsed_s: float, loaded: Mapping[str, int]) -> dict:
        latencies = np.asarray(self.latencies_ms or [np.nan])
        round_trips = np.asarray(self.round_trips_ms or [np.nan])
        evaluated = self.evaluated()
        answered = self.counts["answered"] - self._answered_before  # this attempt's: a resumed run restores the rest
        return {
            **evaluated["student"],
            "requests": self.counts["eval_requests"],
            "counts": dict(self.counts),
            "loaded": dict(loaded),
            "replay_s": elapsed_s,
            "requests_per_s": answered / elapsed_s if elapsed_s > 0 else 0.0,
            "scorer_latency_ms_p50": float(np.nanpercentile(latencies, 50)),
            "scorer_latency_ms_p99": float(np.nanpercentile(latencies, 99)),
            "round_trip_ms_p50": float(np.nanpercentile(round_trips, 50)),
            "round_trip_ms_p99": float(np.nanpercentile(round_trips, 99)),
            "latencies_ms": [float(x) for x in self.latencies_ms],
            "cache_tiers": dict(self.tiers),
            "model_versions_seen": len(self.versions),
            "driver": self.clock.summary(answered),
            "evaluator": self._evaluator_cpu(answered, evaluated),
        }

    def _evaluator_cpu(self, answered: int, evaluated: dict) -> dict:
        """The evaluation process's CPU (absent when it ran in the driver, whose share then holds it)."""
        if "cpu_s" not in evaluated:
            return {"process": False}
        return {"process": True, "cpu_s": evaluated["cpu_s"],
                "cpu_ms_per_request": 1e3 * evaluated["cpu_s"] / answered if answered else float("nan")}


def replay_requests(dataset: Dataset, config: StreamConfig) -> tuple[list[Request], list[Request], dict]:
    """Split the log into pre-fit requests and the sampled requests to stream."""
    requests = group_requests(dataset.exposures, config.request_gap_ms)
    if config.until_ms is not None:
        requests = [r for r in requests if r.ts_ms < config.until_ms]
    prefit_from = config.train_until_ms - int(config.prefit_days * 86_400_000)
    prefit = [r for r in requests if prefit_from <= r.ts_ms < config.train_until_ms]
    later = [r for r in requests if r.ts_ms >= config.train_until_ms]
    rate = sample_rate(len(later), config.max_requests)
    streamed = [r for r in later if user_in_sample(r.user_id, rate, config.seed)]
    return prefit, streamed, {"requests_total": len(requests), "prefit_requests": len(prefit),
                              "replay_period_requests": len(later), "user_sample_rate": rate,
                              "streamed_requests": len(streamed)}
