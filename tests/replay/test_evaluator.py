"""The replay's evaluation beside the driver: the same numbers in a process of its own as in the
driver's, the vectorised audit against the plain computation, failures that surface, and the
driver's CPU accounting."""

from __future__ import annotations

import json
import time
import zlib
from pathlib import Path
from types import MappingProxyType, SimpleNamespace

import numpy as np
import pytest

from core.settings import Settings
from funnel.metrics import consistency_recall
from models.baselines import GlobalCTR, LogisticFTRL, OnlineTree
from replay.candidates import CandidateConfig
from replay.cpu import DriverClock
from replay.evaluator import Evaluator, EvaluatorProcess
from replay.exceptions import EvaluatorFailed
from replay.grouping import group_requests
from replay.state import ReplayState
from replay.stream import StreamConfig, StreamingReplay
from replay.synthetic import SyntheticConfig, generate


class HashTeacher:
    """A fine ranker in numpy (no torch in the forked child of a test process): a fixed score per
    item and user."""

    objective_weights = MappingProxyType({"click": 1.0, "long_view": 1.0})

    def score_objectives(self, user, items):
        def score(salt):
            return np.array([zlib.crc32(f"{salt}{user.user_id}{i.item_id}".encode()) / 2**32 for i in items],
                            dtype=np.float32)

        return {"click": score("c"), "long_view": score("l"), "like": score("k")}


class RecordingProducer:
    def __init__(self) -> None:
        self.sent = []

    def send(self, topic, key, value):
        self.sent.append((topic, key, value))


@pytest.fixture(scope="module")
def dataset():
    with pytest.warns(UserWarning, match="(?i)synthetic"):
        return generate(SyntheticConfig(n_users=40, n_items=600, days=2))


@pytest.fixture(scope="module")
def requests(dataset):
    return group_requests(dataset.exposures)[:60]


def new_replay(dataset, **config) -> StreamingReplay:
    stream_config = StreamConfig(train_until_ms=0, eval_from_ms=0, k=50, consistency_every=3,
                                 candidates=CandidateConfig(n_candidates=300), **config)
    baselines = {"global_ctr": GlobalCTR(), "logistic_ftrl": LogisticFTRL(), "online_tree": OnlineTree()}
    return StreamingReplay(Settings(), ReplayState(dataset, stream_config), HashTeacher(), baselines=baselines)


def student_response(pending, k: int):
    """What the scorer would answer: a top-k by a fixed hash, scores for the exposed items."""
    scores = {item_id: zlib.crc32(item_id.encode()) / 2**32 for item_id in pending.candidates}
    ranked = sorted(pending.candidates, key=lambda i: -scores[i])[:k]
    return SimpleNamespace(
        request_id=pending.request.request_id, error=None, latency_ms=1.0, model_version=1,
        cache_tiers={"local": len(pending.candidates)}, items=[SimpleNamespace(item_id=i) for i in ranked],
        item_scores={e.item_id: scores[e.item_id] for e in pending.request.exposures})


def drive(replay: StreamingReplay, requests) -> None:
    """Send every request and answer it at once, as the funnel would."""
    producer, outstanding = RecordingProducer(), {}
    for request in requests:
        replay._send(producer, request, outstanding)
        pending = outstanding.pop(request.request_id)
        replay._answered(pending, student_response(pending, replay.config.k), producer)


def comparable(summary: dict) -> str:
    return json.dumps({key: summary[key] for key in ("student", "baselines", "baseline_samples")},
                      sort_keys=True, default=str)


def test_the_evaluation_process_gives_the_numbers_of_the_driver_itself(dataset, requests, tmp_path):
    in_driver = new_replay(dataset)
    drive(in_driver, requests)
    in_process = new_replay(dataset)
    in_process.evaluation = EvaluatorProcess(in_process.evaluator, requests)
    try:
        drive(in_process, requests)
        evaluated = in_process.evaluation.summary()
        saved = in_process.evaluation.save(tmp_path)
    finally:
        in_process.evaluation.close()
    expected = in_driver.evaluation.summary()
    assert comparable(evaluated) == comparable(expected)
    assert expected["student"]["consistency_requests"] == len(range(0, len(requests), 3)) > 5
    assert expected["baselines"]["online_tree"]["consistency_requests"] == expected["student"]["consistency_requests"]
    assert evaluated["cpu_s"] > 0  # the child's own CPU
    # its checkpoint restores in the driver: the same numbers, the baselines' models from disk
    in_driver.evaluation.save(tmp_path / "driver")  # a save learns the baselines' partial batch
    restored = new_replay(dataset).evaluator
    restored.restore(json.loads(json.dumps(saved)), tmp_path)
    assert comparable(restored.summary()) == comparable(in_driver.evaluation.summary())
    assert (tmp_path / "baseline-online_tree.json").exists()


def test_the_audit_matches_the_plain_per_candidate_computation(dataset, requests):
    state = ReplayState(dataset, StreamConfig(train_until_ms=0, eval_from_ms=0))
    evaluator = Evaluator(state, HashTeacher(), state.config)
    expected = []
    for request in requests[:10]:
        user = state.snapshot(request)
        history = state.history(request.user_id)
        indices = state.generator.build(request.request_id, request.item_ids, history.authors, history.tags,
                                        request.ts_ms)
        candidates = state.generator.item_ids(indices)
        ranked = candidates[5:45:2]  # any 20, best first
        evaluator.evaluate(request, user, {}, indices, ranked)
        # the driver's computation before it was vectorised: a dict of positions, a loop of ranks
        items = [dataset.catalog[i] for i in candidates]
        objectives = HashTeacher().score_objectives(user, items)
        teacher = np.asarray(objectives["click"], dtype=np.float64) + objectives["long_view"]
        position = {item_id: p for p, item_id in enumerate(candidates)}
        student = np.full(len(items), -np.inf)
        for rank, item_id in enumerate(ranked):
            student[position[item_id]] = -rank
        expected.append([consistency_recall(teacher, student, 10, k) for k in (50, 100, 200)])
        state.after(request)
    summary = evaluator.consistency.summary()
    assert [summary[f"consistency_recall_at_{k}"] for k in (50, 100, 200)] == pytest.approx(
        np.mean(expected, axis=0).tolist())


def test_a_failure_in_the_evaluation_process_surfaces_on_the_next_call(dataset, requests):
    replay = new_replay(dataset)
    evaluation = EvaluatorProcess(replay.evaluator, requests[:1])  # it knows only the first request
    user = replay.state.snapshot(requests[0])
    try:
        evaluation.evaluate(requests[1], user, {})  # returns at once; the child fails on it
        with pytest.raises(EvaluatorFailed, match="KeyError"):  # the driver learns it without asking
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                evaluation.learn(requests[0], user)
                time.sleep(0.05)
        with pytest.raises(EvaluatorFailed, match="KeyError"):  # and the final save says so too
            evaluation.save(Path("unused"))
    finally:
        evaluation.close()


def test_the_evaluation_process_stops_with_its_pipe(dataset, requests):
    replay = new_replay(dataset)
    evaluation = EvaluatorProcess(replay.evaluator, requests)
    process = evaluation._process
    evaluation.close()
    assert not process.is_alive() and process.exitcode == 0
    with pytest.raises(EvaluatorFailed, match="gone"):
        evaluation.learn(requests[0], replay.state.snapshot(requests[0]))


def test_the_driver_reports_its_cpu_per_stage(dataset, requests):
    replay = new_replay(dataset)
    replay.clock.start()
    drive(replay, requests[:20])
    replay.counts["answered"] = 20
    driver = replay.summary(1.0, {})["driver"]
    stages = driver["stages_ms_per_request"]
    assert {"candidates", "send", "evaluate", "impressions", "state"} <= set(stages)
    assert driver["requests"] == 20 and driver["cpu_s"] > 0 and driver["cpu_share"] > 0
    assert sum(stages.values()) == pytest.approx(driver["cpu_ms_per_request"], rel=0.05)


def test_the_clock_counts_cpu_not_waiting():
    clock = DriverClock()
    clock.start()
    with clock.stage("waiting"):
        time.sleep(0.2)
    with clock.stage("working"):
        sum(i * i for i in range(2_000_000))
    assert clock.stages["waiting"] < 0.02 < clock.stages["working"]
    assert clock.summary(requests=1)["cpu_share"] < 1.0


def test_ctrl_c_during_a_send_waits_for_the_whole_message(dataset, requests):
    import signal

    replay = new_replay(dataset)
    evaluation = EvaluatorProcess(replay.evaluator, requests)
    user = replay.state.snapshot(requests[0])
    original = evaluation._connection.send_bytes

    def interrupted_send(data):  # Ctrl-C arrives while the message is being written
        signal.raise_signal(signal.SIGINT)
        original(data)

    # Python's own Ctrl-C handler, whatever this process inherited: a job started in the
    # background of a non-interactive shell (a CI runner) has SIGINT ignored, and nothing to raise.
    inherited = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        evaluation._connection.send_bytes = interrupted_send
        with pytest.raises(KeyboardInterrupt):
            evaluation.learn(requests[0], user)
        evaluation._connection.send_bytes = original
        assert evaluation.summary()["baseline_samples"] == 0  # the message arrived whole: the pipe is in step
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, inherited)
        evaluation.close()
