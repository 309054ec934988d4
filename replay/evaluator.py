"""What the streaming replay measures beside the funnel, in a process of its own.

The driver (:class:`replay.stream.StreamingReplay`) plays the app: it builds candidates, sends
requests and emits a request's impressions once its response arrives. What it measures on the
side is serial Python and torch work that would make it the funnel's bottleneck: the fine ranker
(teacher) scoring the exposed items of every evaluated request and all ~1000 candidates of every
audited one, and three river baselines computing features, scoring and learning candidate by
candidate (about 50 ms for one audited request of 1000 candidates). :class:`Evaluator` holds that
work and its logs; :class:`EvaluatorProcess` runs the same evaluator in a forked child that reads
the driver's events from a pipe, in order, so the driver only forwards a few numbers per request
and the evaluation runs on the other core.

The events travel as JSON (no pickle). The child is forked, not spawned: it starts with the
dataset, the teacher and the baselines already in memory (nothing to reload or serialise). It is
forked before the driver's Kafka clients and their threads exist, and scores with one torch
thread, so it never waits on a thread pool that stayed behind in the parent. A full pipe makes
the driver wait: the evaluation never falls more than a pipe's worth of events behind.

>>> import warnings
>>> from replay.synthetic import SyntheticConfig, generate
>>> from replay.grouping import group_requests
>>> from replay.state import ReplayState
>>> from replay.stream import StreamConfig
>>> with warnings.catch_warnings():
...     warnings.simplefilter("ignore")
...     dataset = generate(SyntheticConfig(n_users=5, n_items=50, days=1))
>>> state = ReplayState(dataset, StreamConfig(train_until_ms=0, eval_from_ms=0))
>>> request = group_requests(dataset.exposures)[0]
>>> user = state.snapshot(request)
>>> class Teacher:  # scores every item 0
...     objective_weights = {"click": 1.0}
...     def score_objectives(self, user, items):
...         return {"click": np.zeros(len(items)), "long_view": np.zeros(len(items))}
>>> evaluator = Evaluator(state, Teacher(), state.config)
>>> process = EvaluatorProcess(evaluator, [request])
>>> process.evaluate(request, user, {e.item_id: 0.5 for e in request.exposures})
>>> process.summary()["student"]["eval_exposures"] == len(request.exposures)
True
>>> process.close()
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import resource
import signal
import threading
import traceback
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from funnel.convert import snapshot_from_user, user_from_snapshot
from funnel.metrics import auc, consistency_recall
from models.features import UserFeatures
from models.losses import combine
from replay.evaluation import ConsistencyLog, FeedbackLog, HitRateLog
from replay.events import Request
from replay.exceptions import EvaluatorFailed
from replay.state import ReplayState
from streams.training_samples import UserSnapshot

log = logging.getLogger(__name__)

BASELINE_BATCH_REQUESTS = 32  # requests per learning step of the baselines


class Evaluator:
    """Progressive evaluation of the streamed requests: the student's, the teacher's and the
    baselines' scores with their feedback, and consistency over the whole candidate set.

    ``config`` is a :class:`~replay.stream.StreamConfig`; ``baselines`` learn each answered
    request's logged feedback after it was scored (:meth:`learn`).
    """

    def __init__(self, state: ReplayState, teacher, config, baselines: Mapping[str, object] | None = None) -> None:
        self.state = state
        self.teacher = teacher
        self.config = config
        self.feedback = FeedbackLog()
        self.teacher_feedback = FeedbackLog()
        self.consistency = ConsistencyLog(config.consistency_n, config.consistency_ks)
        self.hits = HitRateLog("long_view", config.hit_k)
        self.teacher_hits = HitRateLog("long_view", config.hit_k)
        self.timeline: list[tuple[int, int, int, float]] = []  # (ts, click, long_view, score)
        self.consistency_timeline: list[tuple[int, float]] = []  # (ts, recall@100)
        # The article's older pre-rankers, scored on exactly the same requests and candidates,
        # learning from the same logged feedback (they are not part of the system).
        self.baselines = dict(baselines or {})
        self.baseline_feedback = {name: FeedbackLog() for name in self.baselines}
        self.baseline_consistency = {name: ConsistencyLog(config.consistency_n, config.consistency_ks)
                                     for name in self.baselines}
        self.baseline_hits = {name: HitRateLog("long_view", config.hit_k) for name in self.baselines}
        self._baseline_batch = []
        self.baseline_samples = 0

    def evaluate(self, request: Request, user: UserFeatures, exposed_scores: Mapping[str, float],
                 candidates: np.ndarray | None = None, ranked: Sequence[str] = ()) -> None:
        """One answered request at or after ``eval_from``: ``exposed_scores`` are the student's
        scores of its exposed items (from the response). With ``candidates`` (catalog indices,
        as sent) and ``ranked`` (the response's top-k item ids, best first) also the audit."""
        exposed_items = [self.state.dataset.catalog[e.item_id] for e in request.exposures]
        teacher = self.teacher.score_objectives(user, exposed_items)
        for j, exposure in enumerate(request.exposures):
            score = exposed_scores.get(exposure.item_id)
            if score is None:  # the teacher is compared on the exposures the student scored
                continue
            self.feedback.add(request.user_id, exposure.click, exposure.long_view, score, score)
            self.timeline.append((request.ts_ms, exposure.click, exposure.long_view, score))
            self.teacher_feedback.add(request.user_id, exposure.click, exposure.long_view,
                                      float(teacher["click"][j]), float(teacher["long_view"][j]))
        for name, baseline in self.baselines.items():
            scores = baseline.score(user, exposed_items)
            for j, exposure in enumerate(request.exposures):
                self.baseline_feedback[name].add(request.user_id, exposure.click, exposure.long_view,
                                                 float(scores[j]), float(scores[j]))
        if candidates is not None:
            self._audit(request, user, np.asarray(candidates, dtype=np.int64), ranked)

    def _audit(self, request: Request, user: UserFeatures, candidates: np.ndarray, ranked: Sequence[str]) -> None:
        """Consistency and hit rate over the whole candidate set: the teacher (and each baseline)
        scores every candidate; the student's order is its top-k, the rest tie below it."""
        generator = self.state.generator
        items = generator.items_of(candidates)
        teacher_full = np.asarray(combine(self.teacher.score_objectives(user, items), self.teacher.objective_weights),
                                  dtype=np.float64)
        long_viewed = generator.indices_of([e.item_id for e in request.exposures if e.long_view])
        relevant = np.isin(candidates, long_viewed)
        student = np.full(len(candidates), -np.inf)
        positions, ranks = positions_in(candidates, generator.indices_of(ranked))
        student[positions] = -ranks  # only the top-k travels back: ranks suffice
        self.consistency.add(teacher_full, student)
        self.hits.add(relevant, student)
        self.teacher_hits.add(relevant, teacher_full)
        self.consistency_timeline.append(
            (request.ts_ms, consistency_recall(teacher_full, student, self.config.consistency_n, 100)))
        for name, baseline in self.baselines.items():
            scores = baseline.score(user, items)
            self.baseline_consistency[name].add(teacher_full, scores)
            self.baseline_hits[name].add(relevant, scores)

    def learn(self, request: Request, user: UserFeatures) -> None:
        """The baselines learn the request's logged feedback (in batches), after it was scored."""
        if not self.baselines:
            return
        self._baseline_batch.append(self.state.logged_sample(request, user))
        if len(self._baseline_batch) >= BASELINE_BATCH_REQUESTS:
            self._learn_baseline_batch()

    def _learn_baseline_batch(self) -> None:
        for baseline in self.baselines.values():
            baseline.learn_many(self._baseline_batch)
        self.baseline_samples += sum(s.n_items for s in self._baseline_batch)
        self._baseline_batch = []

    def save(self, directory: Path) -> dict:
        """The baselines' models into ``directory`` (each file replaced atomically); returns the
        evaluation logs as JSON-able state (the replay writes them into its ``eval.json``)."""
        directory.mkdir(parents=True, exist_ok=True)
        if self._baseline_batch:  # learn the partial batch now: the checkpoint holds no pending state
            self._learn_baseline_batch()
        for name, baseline in self.baselines.items():
            baseline.save(directory / f"baseline-{name}.json.tmp")
            os.replace(directory / f"baseline-{name}.json.tmp", directory / f"baseline-{name}.json")
        return {
            "timeline": self.timeline, "consistency_timeline": self.consistency_timeline,
            "baseline_samples": self.baseline_samples,
            "feedback": self.feedback.state(), "teacher_feedback": self.teacher_feedback.state(),
            "consistency": self.consistency.state(), "hits": self.hits.state(),
            "teacher_hits": self.teacher_hits.state(),
            "baselines": {name: {"feedback": self.baseline_feedback[name].state(),
                                 "consistency": self.baseline_consistency[name].state(),
                                 "hits": self.baseline_hits[name].state()} for name in self.baselines},
        }

    def restore(self, state: dict, directory: Path) -> None:
        """The inverse of :meth:`save`: ``state`` as it returned, the models from ``directory``."""
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
            path = directory / f"baseline-{name}.json"
            # a peer needs the catalog it scores over, which its file does not hold: it reloads itself
            reloaded = getattr(baseline, "reloaded", None)
            self.baselines[name] = reloaded(path) if reloaded is not None else type(baseline).load(path)
            self.baseline_feedback[name] = FeedbackLog.from_state(logs["feedback"])
            self.baseline_consistency[name] = ConsistencyLog.from_state(logs["consistency"])
            self.baseline_hits[name] = HitRateLog.from_state(logs["hits"])

    def summary(self) -> dict:
        """``student``: the metrics of the streamed student (with the teacher's and the series over
        time); ``baselines``: each baseline's metrics; ``baseline_samples``."""
        return {
            "student": {
                **self.feedback.summary(), **self.consistency.summary(), **self.hits.summary(),
                "teacher": {**self.teacher_feedback.summary(), **self.teacher_hits.summary()},
                "over_time": self.over_time(),
            },
            "baselines": {name: {**self.baseline_feedback[name].summary(), **self.baseline_consistency[name].summary(),
                                 **self.baseline_hits[name].summary()} for name in self.baselines},
            "baseline_samples": self.baseline_samples,
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


def positions_in(candidates: np.ndarray, ranked: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Where each of ``ranked`` (catalog indices, best first) sits in ``candidates`` (distinct
    catalog indices), and its rank; a ranked item that is not a candidate is left out.

    >>> positions_in(np.array([7, 3, 9, 1]), np.array([9, 5, 7]))
    (array([2, 0]), array([0, 2]))
    """
    if len(candidates) == 0 or len(ranked) == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    order = np.argsort(candidates, kind="stable")
    found = np.searchsorted(candidates, ranked, sorter=order).clip(max=len(candidates) - 1)
    positions = order[found]
    kept = candidates[positions] == ranked
    return positions[kept], np.flatnonzero(kept)


class EvaluatorProcess:
    """An :class:`Evaluator` in a forked child: :meth:`evaluate` and :meth:`learn` go down the
    pipe and return at once; :meth:`save` and :meth:`summary` wait until the child has handled
    every earlier event. ``requests`` are the ones the events will name (the child looks them up
    by id, so an event carries only the user snapshot and the response's numbers). A failure in
    the child raises :class:`~replay.exceptions.EvaluatorFailed` on the next call."""

    def __init__(self, evaluator: Evaluator, requests: Sequence[Request]) -> None:
        context = multiprocessing.get_context("fork")
        self._connection, child_end = context.Pipe()
        by_id = {request.request_id: request for request in requests}
        self._process = context.Process(target=_serve, args=(evaluator, by_id, child_end, self._connection),
                                        name="prerank-replay-evaluator", daemon=True)
        self._process.start()
        child_end.close()  # the child's copy stays open: its end of the pipe closes when it exits

    def evaluate(self, request: Request, user: UserFeatures, exposed_scores: Mapping[str, float],
                 candidates: np.ndarray | None = None, ranked: Sequence[str] = ()) -> None:
        self._send({"op": "evaluate", "request_id": request.request_id, "user": snapshot_from_user(user).model_dump(),
                    "exposed_scores": dict(exposed_scores),
                    "candidates": None if candidates is None else np.asarray(candidates).tolist(),
                    "ranked": list(ranked)})

    def learn(self, request: Request, user: UserFeatures) -> None:
        self._send({"op": "learn", "request_id": request.request_id, "user": snapshot_from_user(user).model_dump()})

    def save(self, directory: Path) -> dict:
        self._send({"op": "save", "directory": str(directory)})
        return self._answer()

    def summary(self) -> dict:
        """:meth:`Evaluator.summary` and the child's own CPU seconds (``cpu_s``)."""
        self._send({"op": "summary"})
        return self._answer()

    def close(self) -> None:
        """Stop the child (it exits when the pipe closes)."""
        self._connection.close()
        self._process.join(timeout=10)
        if self._process.is_alive():
            self._process.terminate()
            self._process.join(timeout=5)

    def _send(self, message: dict) -> None:
        data = json.dumps(message).encode()
        try:
            if self._connection.poll():  # the child does not speak unasked but to say it failed
                self._answer()
            with _signals_deferred():
                self._connection.send_bytes(data)
        except OSError as error:
            raise EvaluatorFailed(f"the replay's evaluation process is gone (exit code "
                                  f"{self._process.exitcode}): {error}") from error

    def _answer(self) -> dict:
        try:
            answer = json.loads(self._connection.recv_bytes())
        except (EOFError, OSError) as error:
            raise EvaluatorFailed(f"the replay's evaluation process is gone (exit code "
                                  f"{self._process.exitcode})") from error
        if "error" in answer:
            raise EvaluatorFailed(f"the replay's evaluation process failed:\n{answer['error']}")
        return answer["result"]


@contextmanager
def _signals_deferred() -> Iterator[None]:
    """Ctrl-C and SIGTERM wait until the block is done, then reach their own handlers: an
    interrupt half-way through a message would leave the pipe out of step. (Blocking the signals
    would not do: another thread, kafka-python's, would take them.) Only the main thread can set
    handlers; elsewhere the block runs as it is."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous = {number: signal.signal(number, lambda signum, frame: caught.append(signum))
                for number in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
        if caught:
            signal.raise_signal(caught[0])


def _serve(evaluator: Evaluator, requests: Mapping[str, Request], connection, parent_end) -> None:
    """The child's loop: one event at a time, in order, until the pipe closes. The first failure
    stops the evaluation: the parent is told at once (it raises on its next call), and every
    later ``save`` or ``summary`` is answered with it too."""
    parent_end.close()  # so that the parent's exit closes the pipe for this process
    # Ctrl-C reaches the whole process group; the parent drains the requests in flight and then
    # asks for a last save, so the child keeps going until its pipe closes.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    # One torch thread (the CLI's default anyway): the teacher must not enter a thread pool whose
    # threads stayed behind in the parent.
    torch.set_num_threads(1)
    failure = None
    while True:
        try:
            message = json.loads(connection.recv_bytes())
        except (EOFError, OSError):
            return
        try:
            if message["op"] in ("save", "summary"):
                if failure is None:
                    answer = {"result": _answer(evaluator, message)}
                else:
                    answer = {"error": failure}
                connection.send_bytes(json.dumps(answer, default=float).encode())
            elif failure is None:
                _handle(evaluator, requests, message)
        except Exception:  # noqa: BLE001 (reported to the parent, which raises it)
            failure = traceback.format_exc()
            log.error("the replay's evaluation process failed on %s: %s", message["op"], failure)
            connection.send_bytes(json.dumps({"error": failure}).encode())


def _answer(evaluator: Evaluator, message: dict) -> dict:
    if message["op"] == "save":
        return evaluator.save(Path(message["directory"]))
    return {**evaluator.summary(), "cpu_s": _cpu_seconds()}


def _handle(evaluator: Evaluator, requests: Mapping[str, Request], message: dict) -> None:
    request = requests[message["request_id"]]
    user = user_from_snapshot(UserSnapshot.model_validate(message["user"]))
    if message["op"] == "learn":
        evaluator.learn(request, user)
        return
    candidates = message["candidates"]
    evaluator.evaluate(request, user, message["exposed_scores"],
                       None if candidates is None else np.asarray(candidates, dtype=np.int64), message["ranked"])


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime
