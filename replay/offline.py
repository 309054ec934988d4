"""The offline funnel: the streaming system's loop in one process, without Kafka.

Replay in event-time order, request by request (pages from :mod:`replay.grouping`):

1. *Pre-fit* (requests before ``train_until``): the fine ranker (teacher) learns from the logged
   exposures; user histories and "popular now" warm up.
2. *Replay* (from ``train_until``), for the requests of a user sample: build ~1000 candidates;
   every arm (pre-ranker) scores them; the teacher scores each arm's top-``rank_k`` plus the
   exposed items and ranks them; :func:`funnel.labels.build_request_sample` makes each arm's
   training sample. At or after ``eval_from`` the scores of exposed items are logged (progressive
   evaluation: scores come before learning) and, on every ``consistency_every``-th request, the
   teacher scores the whole candidate set to measure consistency. Each arm learns its samples
   every ``batch_requests`` replayed requests; the teacher learns the exposures of every request
   (sampled user or not) every ``teacher_batch_requests`` requests.

History and popularity see every request (sampled users or not) after it is processed, so a
snapshot never contains its own request's behaviour.

With ``warm_start`` (the default) every other arm learns those requests too, through
:meth:`~replay.arms.Arm.learn_logged`: the logged exposures of the pre-fit period and of the users
outside the sample, feedback only (no cascade labels without having served the request), in
batches of ``batch_requests``. So the students start the replay from the days the fine ranker and
the peers learned, as a production pre-ranker batch-trained before it goes online would.

An arm with ``learns_from_log = True`` (the peers of :mod:`replay.peers`) is a log learner: it
learns the teacher's sample of every request, pre-fit and unsampled users included, right after the
request (and after its scores when replayed), so it learns every logged exposure from the log's
start, the events the fine ranker learns. It gets no cascade samples, and its top-``rank_k`` is not
sent to the teacher.
"""

from __future__ import annotations

import datetime as dt
import time
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Protocol

import numpy as np

from funnel.history import HistoryConfig
from funnel.labels import (
    LabelConfig,
    Ranked,
    build_request_sample,
    request_rng,
)
from funnel.metrics import top_k
from models.features import ItemFeatures, RequestSample, UserFeatures
from replay.arms import Arm
from replay.candidates import CandidateConfig
from replay.dataset import Dataset
from replay.evaluation import ConsistencyLog, FeedbackLog, HitRateLog
from replay.events import Request
from replay.exceptions import ReplayConfigError
from replay.grouping import DEFAULT_GAP_MS, group_requests
from replay.state import ReplayState, feedback_of

TEACHER_WEIGHTS: Mapping[str, float] = {"click": 1.0, "long_view": 1.0, "like": 0.5}


class FineRanker(Protocol):
    """The simulated fine ranker: per-objective logits and online learning from exposures."""

    def score_objectives(self, user: UserFeatures, items: Sequence[ItemFeatures]) -> Mapping[str, np.ndarray]: ...

    def learn_many(self, samples: Sequence[RequestSample]) -> dict[str, float]: ...


def local_date_ms(date: str, utc_offset_hours: float = 8.0) -> int:
    """Epoch ms of local midnight of an ISO date (``"2022-05-01"`` or ``"20220501"``).

    >>> local_date_ms("2022-04-25")  # Beijing midnight
    1650816000000
    """
    try:
        day = dt.date.fromisoformat(date) if "-" in date else dt.datetime.strptime(date, "%Y%m%d").date()
    except ValueError:
        raise ReplayConfigError(f"not a date: {date!r} (use YYYY-MM-DD)") from None
    zone = dt.timezone(dt.timedelta(hours=utc_offset_hours))
    return int(dt.datetime(day.year, day.month, day.day, tzinfo=zone).timestamp() * 1000)


@dataclass(frozen=True)
class OfflineConfig:
    """What the funnel replays and how (see the module docstring)."""

    train_until_ms: int
    eval_from_ms: int
    max_requests: int | None = 20_000
    rank_k: int = 100
    labels: LabelConfig = LabelConfig(top_n=10, n_easy_negatives=20)
    consistency_every: int = 10
    consistency_ks: tuple[int, ...] = (10, 50, 100, 200)
    batch_requests: int = 64
    teacher_batch_requests: int = 256
    request_gap_ms: int = DEFAULT_GAP_MS
    candidates: CandidateConfig = CandidateConfig()
    history: HistoryConfig = HistoryConfig()
    teacher_weights: Mapping[str, float] = field(default_factory=lambda: dict(TEACHER_WEIGHTS))
    warm_start: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        if self.eval_from_ms < self.train_until_ms:
            raise ReplayConfigError("eval_from must not be before train_until")
        for name in ("rank_k", "consistency_every", "batch_requests", "teacher_batch_requests"):
            if getattr(self, name) < 1:
                raise ReplayConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_requests is not None and self.max_requests < 1:
            raise ReplayConfigError(f"max_requests must be >= 1 or None, got {self.max_requests}")


def sample_rate(n_requests: int, max_requests: int | None) -> float:
    return 1.0 if max_requests is None or n_requests <= max_requests else max_requests / n_requests


def user_in_sample(user_id: str, rate: float, seed: int) -> bool:
    """Deterministic user sampling: a user is in or out for the whole replay."""
    return zlib.crc32(f"{seed}:{user_id}".encode()) < rate * 2**32


class OfflineFunnel:
    """One replay over ``dataset`` comparing ``arms`` against ``teacher``; :meth:`run` returns the report."""

    def __init__(self, dataset: Dataset, arms: Sequence[Arm], teacher: FineRanker, config: OfflineConfig) -> None:
        names = [arm.name for arm in arms]
        if len(set(names)) != len(names):
            raise ReplayConfigError(f"arm names must be unique, got {names}")
        self.dataset = dataset
        self.arms = tuple(arms)
        self._log_learners = tuple(arm for arm in self.arms if getattr(arm, "learns_from_log", False))
        self._funnel_arms = tuple(arm for arm in self.arms if not getattr(arm, "learns_from_log", False))
        self.teacher = teacher
        self.config = config
        self.state = ReplayState(dataset, config)
        self.feedback = {arm.name: FeedbackLog() for arm in self.arms}
        self.teacher_feedback = FeedbackLog()
        self.consistency = {arm.name: ConsistencyLog(config.labels.top_n, config.consistency_ks) for arm in self.arms}
        self.hit_rate = {arm.name: HitRateLog("long_view", config.rank_k) for arm in self.arms}
        self._arm_batches: dict[str, list[RequestSample]] = {arm.name: [] for arm in self.arms}
        self._logged_batches: dict[str, list[RequestSample]] = {arm.name: [] for arm in self._funnel_arms}
        self._teacher_batch: list[RequestSample] = []
        self._candidate_build_s: list[float] = []
        self._teacher_score_s = 0.0
        self._teacher_learn_s = 0.0
        self.counts = {"prefit_requests": 0, "replay_requests": 0, "eval_requests": 0, "skipped_users_requests": 0}

    # ------------------------------------------------------------------ learning
    def _learn(self, force: bool = False) -> None:
        """Arms learn every ``batch_requests`` requests, the teacher every ``teacher_batch_requests``."""
        for arm in self.arms:
            batch = self._arm_batches[arm.name]
            if batch and (force or len(batch) >= self.config.batch_requests):
                arm.learn(batch)
                self._arm_batches[arm.name] = []
        for arm in self._funnel_arms:
            batch = self._logged_batches[arm.name]
            if batch and (force or len(batch) >= self.config.batch_requests):
                arm.learn_logged(batch)
                self._logged_batches[arm.name] = []
        if self._teacher_batch and (force or len(self._teacher_batch) >= self.config.teacher_batch_requests):
            start = time.perf_counter()
            self.teacher.learn_many(self._teacher_batch)
            self._teacher_learn_s += time.perf_counter() - start
            self._teacher_batch = []

    # ------------------------------------------------------------------ one request
    def _teacher_only(self, request: Request, counter: str) -> None:
        """A request outside the funnel (pre-fit period or unsampled user): the teacher learns it."""
        sample = self.state.logged_sample(request, self.state.snapshot(request))
        self._teacher_batch.append(sample)
        if self.config.warm_start:
            for arm in self._funnel_arms:
                self._logged_batches[arm.name].append(sample)
        self._learn()
        for arm in self._log_learners:
            arm.learn([sample])
        self.state.after(request)
        self.counts[counter] += 1

    def _replay(self, request: Request, evaluate: bool) -> None:
        config = self.config
        user = self.state.snapshot(request)
        history = self.state.history(request.user_id)
        start = time.perf_counter()
        candidates = self.state.generator.build(request.request_id, request.item_ids, history.authors, history.tags, request.ts_ms)
        self._candidate_build_s.append(time.perf_counter() - start)
        exposed_ids = list(dict.fromkeys(request.item_ids))
        # Shuffled, so that an arm with tied scores cannot rank exposed items first by position.
        order = request_rng(config.seed, request.request_id).permutation(len(candidates))
        candidates = candidates[order]
        exposed_positions = np.flatnonzero(order < len(exposed_ids))
        position = {exposed_ids[order[p]]: int(p) for p in exposed_positions}
        items = [self.state.generator.items[i] for i in candidates]
        arm_scores = {arm.name: np.asarray(arm.score(user, candidates), dtype=np.float64) for arm in self.arms}
        arm_tops = {arm.name: top_k(arm_scores[arm.name], config.rank_k) for arm in self._funnel_arms}

        check_consistency = evaluate and self.counts["eval_requests"] % config.consistency_every == 0
        if check_consistency:
            scored = np.arange(len(candidates))
        else:
            scored = np.unique(np.concatenate([exposed_positions, *arm_tops.values()]))
        start = time.perf_counter()
        objectives = {
            o: np.asarray(v, dtype=np.float64)
            for o, v in self.teacher.score_objectives(user, [items[i] for i in scored]).items()
        }
        self._teacher_score_s += time.perf_counter() - start
        combined = sum(w * objectives[o] for o, w in config.teacher_weights.items() if o in objectives)
        teacher_at = {int(p): k for k, p in enumerate(scored)}

        feedback = feedback_of(request)
        for arm in self._funnel_arms:
            # the fine ranker ranks what this arm let through, plus what was shown (it passed the funnel)
            ranked_positions = np.unique(np.concatenate([exposed_positions, arm_tops[arm.name]]))
            ranked = _rank(items, ranked_positions, [teacher_at[int(p)] for p in ranked_positions], objectives, combined)
            self._arm_batches[arm.name].append(
                build_request_sample(request.request_id, request.ts_ms, user, items, ranked, feedback, config.labels)
            )
        if evaluate:
            self._evaluate(request, position, arm_scores, objectives, teacher_at, combined if check_consistency else None)
        sample = self.state.logged_sample(request, user)
        self._teacher_batch.append(sample)
        self._learn()
        for arm in self._log_learners:
            arm.learn([sample])
        self.state.after(request)

    def _evaluate(
        self,
        request: Request,
        position: Mapping[str, int],
        arm_scores: Mapping[str, np.ndarray],
        objectives: Mapping[str, np.ndarray],
        teacher_at: Mapping[int, int],
        teacher_full: np.ndarray | None,
    ) -> None:
        for name, scores in arm_scores.items():
            long_viewed = np.zeros(len(scores), dtype=bool)
            long_viewed[[position[e.item_id] for e in request.exposures if e.long_view]] = True
            self.hit_rate[name].add(long_viewed, scores)
        click_logits = objectives.get("click")
        long_view_logits = objectives.get("long_view")
        for exposure in request.exposures:
            p = position[exposure.item_id]
            if click_logits is not None and long_view_logits is not None:
                row = teacher_at[p]
                self.teacher_feedback.add(
                    request.user_id, exposure.click, exposure.long_view,
                    float(click_logits[row]), float(long_view_logits[row]),
                )  # fmt: skip
            for name, scores in arm_scores.items():
                self.feedback[name].add(request.user_id, exposure.click, exposure.long_view, scores[p], scores[p])
        if teacher_full is not None:
            for name, scores in arm_scores.items():
                self.consistency[name].add(teacher_full, scores)
        self.counts["eval_requests"] += 1

    # ------------------------------------------------------------------ the run
    def run(self) -> dict:
        config = self.config
        started = time.perf_counter()
        requests = group_requests(self.dataset.exposures, config.request_gap_ms)
        replay_requests = sum(1 for r in requests if r.ts_ms >= config.train_until_ms)
        rate = sample_rate(replay_requests, config.max_requests)
        phase_start = time.perf_counter()
        prefit_s = 0.0
        in_prefit = True
        for request in requests:
            if request.ts_ms < config.train_until_ms:
                self._teacher_only(request, "prefit_requests")
                continue
            if in_prefit:
                self._learn(force=True)
                prefit_s, phase_start, in_prefit = time.perf_counter() - phase_start, time.perf_counter(), False
            if not user_in_sample(request.user_id, rate, config.seed):
                self._teacher_only(request, "skipped_users_requests")
                continue
            self._replay(request, evaluate=request.ts_ms >= config.eval_from_ms)
            self.counts["replay_requests"] += 1
        self._learn(force=True)
        replay_s = time.perf_counter() - phase_start if not in_prefit else 0.0
        build_us = 1e6 * np.asarray(self._candidate_build_s or [np.nan])
        return {
            "sampling": {
                "requests_total": len(requests),
                "requests_in_replay_period": replay_requests,
                "user_sample_rate": rate,
                **self.counts,
            },
            "arms": {
                arm.name: {
                    **self.feedback[arm.name].summary(),
                    **self.consistency[arm.name].summary(),
                    **self.hit_rate[arm.name].summary(),
                    **arm.report(),
                }
                for arm in self.arms
            },
            "teacher": {
                **self.teacher_feedback.summary(),
                "score_ms_per_request": 1e3 * self._teacher_score_s / max(1, self.counts["replay_requests"]),
                "learn_s": self._teacher_learn_s,
            },
            "timing": {
                "prefit_s": prefit_s,
                "replay_s": replay_s,
                "total_s": time.perf_counter() - started,
                "candidate_build_us_median": float(np.median(build_us)),
                "candidate_build_us_p99": float(np.percentile(build_us, 99)),
            },
            "config": _jsonable(asdict(config)),
        }


def _rank(
    items: Sequence[ItemFeatures],
    positions: np.ndarray,
    rows: Sequence[int],
    objectives: Mapping[str, np.ndarray],
    combined: np.ndarray,
) -> list[Ranked]:
    """The fine ranker's output for candidate ``positions``: rank 0 = highest combined teacher score.

    ``rows[j]`` is the row of ``positions[j]`` in the teacher's score arrays.
    """
    order = np.argsort(-combined[list(rows)], kind="stable")
    return [
        Ranked(items[positions[j]].item_id, rank, {o: float(v[rows[j]]) for o, v in objectives.items()})
        for rank, j in enumerate(order)
    ]


def _jsonable(value):
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value
