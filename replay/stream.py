"""The closed funnel through the real system: Kafka topics, Faust workers, Redis versions.

:class:`StreamingReplay` plays the app and the event log. In event-time order it sends each
request (exposed items plus ~1000 recalled candidates) to ``score-requests``; when the scorer's
response arrives it logs the student's scores of the exposed items (progressive evaluation: the
serving model has not learned this request yet), measures consistency on a sample of requests
(the teacher scores the whole candidate set here), and only then emits the request's logged
exposures to ``impressions``. The simulated fine ranker (its own worker) turns responses into
``rank-scores``; the joiner, trainer and publisher do the rest. Up to ``inflight`` requests are
outstanding at once.

Ctrl-C stops sending, lets the requests in flight finish, and checkpoints the replay (the
requests completed, the evaluation logs, the baselines' models: :meth:`StreamingReplay.save`),
so ``prerank replay --resume`` continues where it stopped; the same checkpoint is also written
every ``checkpoint_every`` requests, so even a crash loses at most that many requests' worth of
evaluation (they are replayed; the joiner drops the duplicate rank scores).

The teacher is pre-fit in process on the requests before ``train_until`` (:func:`prefit_teacher`),
saved, and loaded by the fine-ranker worker, so the replay and the ranker share one teacher.
"""

from __future__ import annotations

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

from core.kafka import kafka_python_options
from core.settings import Settings
from funnel.history import HistoryConfig
from funnel.labels import request_rng
from funnel.metrics import auc, consistency_recall
from funnel.store import open_store
from models.features import UserFeatures
from models.losses import combine
from replay.candidates import CandidateConfig
from replay.dataset import Dataset
from replay.evaluation import ConsistencyLog, FeedbackLog, HitRateLog
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
    consistency_ks: tuple[int, ...] = (50, 100, 200)
    prefit_days: float = 2.0  # requests this long before train_until warm the state and fit the teacher
    request_gap_ms: int = DEFAULT_GAP_MS
    candidates: CandidateConfig = CandidateConfig()
    history: HistoryConfig = HistoryConfig()
    response_timeout_s: float = 30.0
    speed: float | None = None  # None: as fast as the system answers; x: x times real time
    bucket_ms: int = 6 * 3_600_000  # event-time buckets of the metrics-over-time series
    hit_k: int = 100  # hit rate: a long-viewed exposed item inside the arm's top-k of all candidates
    checkpoint_every: int = 200  # answered requests between two checkpoints of the replay itself
    seed: int = 0


@dataclass
class Outstanding:
    request: Request
    candidates: list[str]
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
        self.teacher = teacher
        self.progress = progress or (lambda _: None)
        self.feedback = FeedbackLog()
        self.teacher_feedback = FeedbackLog()
        self.consistency = ConsistencyLog(self.config.consistency_n, self.config.consistency_ks)
        self.hits = HitRateLog("long_view", self.config.hit_k)
        self.teacher_hits = HitRateLog("long_view", self.config.hit_k)
        self.completed: list[str] = []  # request ids whose impressions went out, in that order
        self.interrupted = False
        self.latencies_ms: list[float] = []
        self.round_trips_ms: list[float] = []
        self.tiers = {"local": 0, "redis": 0, "computed": 0}
        self.counts = {"sent": 0, "answered": 0, "errors": 0, "timeouts": 0, "eval_requests": 0,
                       "impressions": 0}
        self.versions: set[int] = set()
        self.timeline: list[tuple[int, int, int, float]] = []  # (ts, click, long_view, score)
        self.consistency_timeline: list[tuple[int, float]] = []  # (ts, recall@100)
        # The article's older pre-rankers, scored in process on exactly the same requests and
        # candidates, learning from the same logged feedback (they are not part of the system).
        self.baselines = dict(baselines or {})
        self.baseline_feedback = {name: FeedbackLog() for name in self.baselines}
        self.baseline_consistency = {name: ConsistencyLog(self.config.consistency_n, self.config.consistency_ks)
                                     for name in self.baselines}
        self.baseline_hits = {name: HitRateLog("long_view", self.config.hit_k) for name in self.baselines}
        self._baseline_batch = []
        self.baseline_samples = 0
        self._answered_before = 0

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
        config = self.config
        done = set(self.completed)
        total = len(requests)
        requests = [r for r in requests if r.request_id not in done]
        kafka = kafka_python_options(self.settings.kafka)
        producer = KafkaProducer(**kafka, linger_ms=2, max_request_size=8 * 1024 * 1024)
        consumer = KafkaConsumer(**kafka, group_id=None, enable_auto_commit=False,
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
        saved_at = len(self.completed)
        self._answered_before = self.counts["answered"]
        self._last_answer = time.monotonic()

        def maybe_checkpoint() -> None:
            nonlocal saved_at
            if checkpoint is not None and len(self.completed) - saved_at >= config.checkpoint_every:
                producer.flush()  # a completed request's impressions are on the broker before it is saved
                checkpoint()
                saved_at = len(self.completed)

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
                        self._report_progress(index, len(done), total, started, outstanding, request.ts_ms)
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
                    self._report_progress(len(requests), len(done), total, started, outstanding, requests[-1].ts_ms)
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
        return self.summary(elapsed, loaded)

    def _send(self, producer: KafkaProducer, request: Request, outstanding: dict[str, Outstanding]) -> None:
        user = self.state.snapshot(request)
        history = self.state.history(request.user_id)
        indices = self.state.generator.build(request.request_id, request.item_ids, history.authors,
                                             history.tags, request.ts_ms)
        # Shuffled (seeded by request), so that an arm with tied scores cannot rank the exposed items
        # first by their position (the generator lists them first).
        order = request_rng(self.config.seed, request.request_id).permutation(len(indices))
        candidates = self.state.generator.item_ids(indices[order])
        score_request = ScoreRequest(
            request_id=request.request_id, user_id=request.user_id, ts_ms=request.ts_ms,
            context=RequestContext(tab=min(request.tab, 1000), hour=user.hour, weekday=user.weekday),
            candidates=candidates, k=min(self.config.k, len(candidates)),
            score_items=list(dict.fromkeys(request.item_ids)),
        )
        producer.send(self.topic("score_requests"), key=request.user_id.encode(),
                      value=score_requests.CODEC.encode(score_request))
        outstanding[request.request_id] = Outstanding(request, candidates, user, time.perf_counter())
        self.counts["sent"] += 1

    def _receive(self, consumer: KafkaConsumer, producer: KafkaProducer, outstanding: dict[str, Outstanding]) -> None:
        producer.flush(timeout=5)
        for messages in consumer.poll(timeout_ms=200).values():
            for message in messages:
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
                self._evaluate(pending, response)
        if self.baselines:
            self._baselines_learn(pending)
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
        self.state.after(request)
        self.completed.append(request.request_id)

    def _check_stalled(self, outstanding: dict[str, Outstanding]) -> None:
        waited = time.monotonic() - self._last_answer
        if outstanding and waited > self.config.response_timeout_s:
            raise ReplayStalled(
                f"no answer on {self.topic('score_responses')} for {waited:.0f} s with {len(outstanding)} requests "
                "in flight: is the scorer worker or the broker down? (worker logs are in the run folder)")

    def _evaluate(self, pending: Outstanding, response) -> None:
        request = pending.request
        self.counts["eval_requests"] += 1
        exposed_items = [self.state.dataset.catalog[e.item_id] for e in request.exposures]
        teacher = self.teacher.score_objectives(pending.user, exposed_items)
        for j, exposure in enumerate(request.exposures):
            score = response.item_scores.get(exposure.item_id)
            if score is None:
                continue
            self.feedback.add(request.user_id, exposure.click, exposure.long_view, score, score)
            self.timeline.append((request.ts_ms, exposure.click, exposure.long_view, score))
            self.teacher_feedback.add(request.user_id, exposure.click, exposure.long_view,
                                      float(teacher["click"][j]), float(teacher["long_view"][j]))
        for name, baseline in self.baselines.items():
            scores = baseline.score(pending.user, exposed_items)
            for j, exposure in enumerate(request.exposures):
                self.baseline_feedback[name].add(request.user_id, exposure.click, exposure.long_view,
                                                 float(scores[j]), float(scores[j]))
        if (self.counts["eval_requests"] - 1) % self.config.consistency_every == 0:
            items = [self.state.dataset.catalog[i] for i in pending.candidates]
            objectives = self.teacher.score_objectives(pending.user, items)
            teacher_full = np.asarray(combine(objectives, self.teacher.objective_weights), dtype=np.float64)
            long_viewed = {e.item_id for e in request.exposures if e.long_view}
            relevant = np.fromiter((item_id in long_viewed for item_id in pending.candidates), bool, len(items))
            for name, baseline in self.baselines.items():
                baseline_scores = baseline.score(pending.user, items)
                self.baseline_consistency[name].add(teacher_full, baseline_scores)
                self.baseline_hits[name].add(relevant, baseline_scores)
            student = np.full(len(items), -np.inf)
            position = {item_id: p for p, item_id in enumerate(pending.candidates)}
            for rank, scored in enumerate(response.items):  # only the top-k travels back: ranks suffice
                student[position[scored.item_id]] = -rank
            self.consistency.add(teacher_full, student)
            self.hits.add(relevant, student)
            self.teacher_hits.add(relevant, teacher_full)
            self.consistency_timeline.append(
                (request.ts_ms, consistency_recall(teacher_full, student, self.config.consistency_n, 100)))

    def _baselines_learn(self, pending: Outstanding, batch: int = 32) -> None:
        self._baseline_batch.append(self.state.logged_sample(pending.request, pending.user))
        if len(self._baseline_batch) >= batch:
            self._learn_baseline_batch()

    def _learn_baseline_batch(self) -> None:
        for baseline in self.baselines.values():
            baseline.learn_many(self._baseline_batch)
        self.baseline_samples += sum(s.n_items for s in self._baseline_batch)
        self._baseline_batch = []

    def save(self, directory: Path) -> None:
        """Checkpoint: ``eval.json`` (requests completed, evaluation logs) and the baselines' models,
        each file replaced atomically."""
        directory.mkdir(parents=True, exist_ok=True)
        if self._baseline_batch:  # learn the partial batch now: the checkpoint holds no pending state
            self._learn_baseline_batch()
        for name, baseline in self.baselines.items():
            baseline.save(directory / f"baseline-{name}.json.tmp")
            os.replace(directory / f"baseline-{name}.json.tmp", directory / f"baseline-{name}.json")
        state = {
            "completed": self.completed, "counts": self.counts, "tiers": self.tiers,
            "versions": sorted(self.versions), "latencies_ms": self.latencies_ms,
            "round_trips_ms": self.round_trips_ms, "timeline": self.timeline,
            "consistency_timeline": self.consistency_timeline, "baseline_samples": self.baseline_samples,
            "feedback": self.feedback.state(), "teacher_feedback": self.teacher_feedback.state(),
            "consistency": self.consistency.state(), "hits": self.hits.state(),
            "teacher_hits": self.teacher_hits.state(),
            "baselines": {name: {"feedback": self.baseline_feedback[name].state(),
                                 "consistency": self.baseline_consistency[name].state(),
                                 "hits": self.baseline_hits[name].state()} for name in self.baselines},
        }
        temporary = directory / "eval.json.tmp"
        temporary.write_text(json.dumps(state))
        os.replace(temporary, directory / "eval.json")

    def restore(self, directory: Path) -> list[str]:
        """Load a checkpoint written by :meth:`save`; returns the completed request ids, in order.
        The caller replays those requests into the :class:`ReplayState` (histories, popularity)."""
        state = json.loads((directory / "eval.json").read_text())
        self.completed = list(state["completed"])
        self.counts.update(state["counts"])
        self.tiers.update(state["tiers"])
        self.versions = set(state["versions"])
        self.latencies_ms = list(state["latencies_ms"])
        self.round_trips_ms = list(state["round_trips_ms"])
        self.timeline = [tuple(x) for x in state["timeline"]]
        self.consistency_timeline = [tuple(x) for x in state["consistency_timeline"]]
        self.baseline_samples = int(state["baseline_samples"])
        self.feedback = FeedbackLog.from_state(state["feedback"])
        self.teacher_feedback = FeedbackLog.from_state(state["teacher_feedback"])
        self.consistency = ConsistencyLog.from_state(state["consistency"])
        self.hits = HitRateLog.from_state(state["hits"])
        self.teacher_hits = HitRateLog.from_state(state["teacher_hits"])
        for name, baseline in list(self.baselines.items()):
            logs = state["baselines"][name]
            self.baselines[name] = type(baseline).load(directory / f"baseline-{name}.json")
            self.baseline_feedback[name] = FeedbackLog.from_state(logs["feedback"])
            self.baseline_consistency[name] = ConsistencyLog.from_state(logs["consistency"])
            self.baseline_hits[name] = HitRateLog.from_state(logs["hits"])
        return self.completed

    def baseline_summaries(self) -> dict[str, dict]:
        return {
            name: {**self.baseline_feedback[name].summary(), **self.baseline_consistency[name].summary(),
                   **self.baseline_hits[name].summary(),
                   "path": "in-process baseline on the streamed requests", "requests": self.counts["eval_requests"],
                   "samples_learned": self.baseline_samples, "zero_row_ratio": float("nan"),
                   "export_size_reduction": float("nan")}
            for name in self.baselines
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
        return {
            **self.feedback.summary(),
            **self.consistency.summary(),
            **self.hits.summary(),
            "teacher": {**self.teacher_feedback.summary(), **self.teacher_hits.summary()},
            "requests": self.counts["eval_requests"],
            "counts": dict(self.counts),
            "loaded": dict(loaded),
            "replay_s": elapsed_s,
            # answered in this attempt only: a resumed run restores the earlier attempts' counts
            "requests_per_s": (self.counts["answered"] - self._answered_before) / elapsed_s if elapsed_s > 0 else 0.0,
            "scorer_latency_ms_p50": float(np.nanpercentile(latencies, 50)),
            "scorer_latency_ms_p99": float(np.nanpercentile(latencies, 99)),
            "round_trip_ms_p50": float(np.nanpercentile(round_trips, 50)),
            "round_trip_ms_p99": float(np.nanpercentile(round_trips, 99)),
            "latencies_ms": [float(x) for x in self.latencies_ms],
            "cache_tiers": dict(self.tiers),
            "model_versions_seen": len(self.versions),
            "over_time": self.over_time(),
        }

    def over_time(self) -> list[dict]:
        """Metrics per event-time bucket: how quality moves as the student keeps learning."""
        buckets: dict[int, dict] = {}
        size = self.config.bucket_ms
        for ts, click, long_view, score in self.timeline:
            bucket = buckets.setdefault(ts // size * size, {"click": [], "long_view": [], "scores": [], "recall": []})
            bucket["click"].append(click)
            bucket["long_view"].append(long_view)
            bucket["scores"].append(score)
        for ts, recall in self.consistency_timeline:
            buckets.setdefault(ts // size * size, {"click": [], "long_view": [], "scores": [], "recall": []})[
                "recall"].append(recall)
        series = []
        for start in sorted(buckets):
            b = buckets[start]
            series.append({
                "bucket_start_ms": start, "exposures": len(b["scores"]),
                "auc_click": auc(b["click"], b["scores"]) if 0 < sum(b["click"]) < len(b["click"]) else None,
                "auc_long_view": (auc(b["long_view"], b["scores"])
                                  if 0 < sum(b["long_view"]) < len(b["long_view"]) else None),
                "consistency_recall_at_100": float(np.mean(b["recall"])) if b["recall"] else None,
            })
        return series


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
