"""Resuming a replay: the run's progress file and the streaming replay's own checkpoint."""

from __future__ import annotations

import json
import math

import pytest

from core.settings import Settings
from models.baselines import GlobalCTR
from replay.evaluation import ConsistencyLog, FeedbackLog, HitRateLog
from replay.exceptions import ReplayError
from replay.progress import RunProgress, find_resumable
from replay.state import ReplayState
from replay.stream import StreamConfig, StreamingReplay, replay_requests
from replay.synthetic import SyntheticConfig, generate


@pytest.fixture(scope="module")
def dataset():
    with pytest.warns(UserWarning, match="(?i)synthetic"):
        return generate(SyntheticConfig(n_users=60, n_items=300, days=4))


def same(a, b) -> bool:
    """Equal, NaN included (a metric with too little data is NaN on both sides)."""
    return json.dumps(a, sort_keys=True, default=str) == json.dumps(b, sort_keys=True, default=str)


def filled_replay(dataset, baselines=None) -> StreamingReplay:
    config = StreamConfig(train_until_ms=0, eval_from_ms=0)
    replay = StreamingReplay(Settings(), ReplayState(dataset, config), teacher=None, baselines=baselines)
    evaluator = replay.evaluator
    for j in range(30):
        evaluator.feedback.add(f"u{j % 4}", j % 2, (j // 2) % 2, j / 30, 1 - j / 30)
        evaluator.consistency.add([3.0, 2.0, 1.0, float(j)], [float(j), 1.0, 2.0, 3.0])
        evaluator.hits.add([j % 3 == 0, False, True], [0.1, float(j), 0.5])
        evaluator.timeline.append((j * 1000, j % 2, (j // 2) % 2, j / 30))
        replay.latencies_ms.append(1.5 * j)
        replay.completed.append(f"r{j}")
    replay.counts.update(sent=30, answered=30, eval_requests=30)
    replay.versions.update({1, 2, 3})
    return replay


def test_a_checkpoint_restores_every_metric_and_the_completed_requests(dataset, tmp_path):
    replay = filled_replay(dataset, baselines={"global_ctr": GlobalCTR()})
    replay.save(tmp_path)
    fresh = StreamingReplay(Settings(), replay.state, teacher=None, baselines={"global_ctr": GlobalCTR()})
    assert fresh.restore(tmp_path) == [f"r{j}" for j in range(30)]
    before, after = replay.summary(1.0, {}), fresh.summary(1.0, {})
    del before["driver"], after["driver"]  # the CPU of this attempt, not restored
    assert same(after, before)
    assert after["auc_click"] == before["auc_click"] and not math.isnan(after["consistency_recall_at_100"])
    assert isinstance(fresh.evaluator.baselines["global_ctr"], GlobalCTR)
    assert same(fresh.baseline_summaries(), replay.baseline_summaries())


def test_the_checkpoint_is_replaced_atomically(dataset, tmp_path):
    replay = filled_replay(dataset)
    replay.save(tmp_path)
    replay.completed.append("r-late")
    replay.save(tmp_path)
    assert json.loads((tmp_path / "eval.json").read_text())["completed"][-1] == "r-late"
    assert not list(tmp_path.glob("*.tmp"))


@pytest.mark.parametrize("log", [FeedbackLog(), ConsistencyLog(2, (1, 2)), HitRateLog("click", 2)])
def test_every_log_round_trips_through_json(log):
    if isinstance(log, FeedbackLog):
        log.add("u", 1, 0, 0.5, 0.2)
        log.add("v", 0, 1, 0.1, 0.9)
    elif isinstance(log, ConsistencyLog):
        log.add([1.0, 2.0, 3.0], [3.0, 2.0, 1.0])
    else:
        log.add([True, False], [0.1, 0.9])
    copy = type(log).from_state(json.loads(json.dumps(log.state())))
    assert same(copy.summary(), log.summary())


def test_resume_finds_the_newest_unfinished_run(tmp_path):
    older = RunProgress(tmp_path / "run-000001", params={"modes": ["cascade"]})
    older.save()
    done = RunProgress(tmp_path / "run-000002", params={"modes": ["cascade"]}, complete=True)
    done.save()
    assert find_resumable(tmp_path) == older.directory
    older.complete = True
    older.save()
    with pytest.raises(ReplayError, match="no interrupted replay"):
        find_resumable(tmp_path)


def test_a_corrupt_progress_file_is_a_clear_error(tmp_path):
    (tmp_path / "run-x").mkdir()
    (tmp_path / "run-x" / "progress.json").write_text("{not json")
    with pytest.raises(ReplayError, match="progress.json"):
        RunProgress.load(tmp_path / "run-x")


def test_replayed_requests_are_the_same_in_every_run(dataset):
    config = StreamConfig(train_until_ms=dataset.exposures[0].ts_ms + 86_400_000,
                          eval_from_ms=dataset.exposures[0].ts_ms + 2 * 86_400_000, max_requests=50)
    first = [r.request_id for r in replay_requests(dataset, config)[1]]
    again = [r.request_id for r in replay_requests(dataset, config)[1]]
    assert first == again and len(first) > 0  # resume relies on ids being stable across runs


def test_a_checkpoint_restores_the_peers_exactly(dataset, tmp_path):
    """Vowpal Wabbit and river LR-FTRL ride a replay like the baselines: a resumed replay scores
    with what they had learned, and keeps learning as if it had never stopped."""
    import numpy as np

    from replay.command import learn_prefit, new_baselines

    config = StreamConfig(train_until_ms=0, eval_from_ms=0)
    middle, last = dataset.exposures[len(dataset.exposures) // 2].ts_ms, dataset.exposures[-1].ts_ms
    prefit, streamed, _ = replay_requests(dataset, StreamConfig(train_until_ms=middle, eval_from_ms=last))
    state = ReplayState(dataset, config)
    peers = new_baselines(dataset, baselines=False, peers=True)
    assert set(peers) == {"vowpal_wabbit", "river_lr_ftrl"}
    learn_prefit(state, prefit, peers)
    assert all(peer.arm.exposures_learned > 0 for peer in peers.values())
    replay = filled_replay(dataset, baselines=peers)
    replay.save(tmp_path)
    fresh = StreamingReplay(Settings(), replay.state, teacher=None,
                            baselines=new_baselines(dataset, baselines=False, peers=True))
    fresh.restore(tmp_path)
    user, items = state.snapshot(streamed[0]), list(dataset.catalog.values())[:50]
    later = [state.logged_sample(r, state.snapshot(r)) for r in streamed[:40]]
    for name, peer in peers.items():
        restored = fresh.evaluator.baselines[name]
        np.testing.assert_array_equal(restored.score(user, items), peer.score(user, items))
        assert restored.arm.exposures_learned == peer.arm.exposures_learned
        restored.learn_many(later)
        peer.learn_many(later)
        np.testing.assert_array_equal(restored.score(user, items), peer.score(user, items))
