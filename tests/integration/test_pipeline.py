"""The streaming pipeline on the real local stack: joiner, trainer, publisher, scorer."""

from __future__ import annotations

import pytest

from funnel.store import open_store
from monitoring.scrape import metric_sum, scrape
from streams import impressions as impressions_topic
from streams import rank_scores as rank_scores_topic
from streams import training_samples
from streams.impressions import Impression
from streams.rank_scores import RankScores
from streams.training_samples import UserSnapshot
from tests.integration.workers import Worker, read_topic, send_all

pytestmark = pytest.mark.integration

T0 = 1_651_000_000_000


def funnel_events(n_requests: int, n_ranked: int = 15, n_extra: int = 5):
    """Rank scores (with the scorer's user snapshot) and two impressions per request."""
    ranks, shows = [], []
    for r in range(n_requests):
        user = f"u{r % 7}"
        ts = T0 + r * 1000
        ranked = [f"i{(r + j) % 50}" for j in range(n_ranked)]
        extra = [f"x{(r + j) % 30}" for j in range(n_extra)]
        ranks.append(RankScores(
            request_id=f"req{r}", user_id=user, ts_ms=ts, candidates=ranked + extra,
            items=[{"item_id": item, "rank": j, "logits": {"click": 2.0 - 0.1 * j, "long_view": 1.0 - 0.1 * j}}
                   for j, item in enumerate(ranked)],
            user=UserSnapshot(user_id=user, tab=1, hour=12, history_items=[f"i{r % 3}"]),
        ))
        shows += [
            Impression(request_id=f"req{r}", user_id=user, item_id=ranked[0], ts_ms=ts + 10, position=0,
                       click=1, long_view=r % 2, play_ms=5000, duration_ms=10000),
            Impression(request_id=f"req{r}", user_id=user, item_id=ranked[3], ts_ms=ts + 20, position=1,
                       click=0, long_view=0, play_ms=100, duration_ms=10000),
        ]
    return ranks, shows


def test_joiner_emits_one_labelled_sample_per_request(stack_settings, tmp_path):
    ranks, shows = funnel_events(40)
    worker = Worker(stack_settings, "joiner", tmp_path / "joiner.log")
    try:
        send_all(stack_settings, "rank_scores",
                 [(r.user_id.encode(), rank_scores_topic.CODEC.encode(r)) for r in ranks])
        send_all(stack_settings, "impressions",
                 [(i.user_id.encode(), impressions_topic.CODEC.encode(i)) for i in shows])
        out = read_topic(stack_settings, "training_samples", expected=len(ranks), timeout_s=120, workers=[worker])
    finally:
        worker.stop()
    samples = {s.request_id: s for s in (training_samples.CODEC.decode(m.value) for m in out)}
    assert len(out) == len(ranks) == len(samples)  # exactly once
    for r, rank in enumerate(ranks):
        sample = samples[rank.request_id]
        ranked = [item.item_id for item in rank.items]
        ids = [item.item_id for item in sample.items]
        assert ids[:15] == ranked
        assert sorted(ids[15:]) == sorted(rank.candidates[15:])  # all 5 easy negatives
        assert sample.cascade == [1] * 10 + [0] * 10
        assert sample.click[0] == 1 and sample.click[3] == 0
        assert sample.long_view[0] == r % 2
        assert all(sample.click[j] == -1 for j in range(20) if j not in (0, 3))
        assert sample.teacher_logits["click"][:2] == [2.0, 1.9]
        assert sample.teacher_logits["click"][15:] == [None] * 5
        assert sample.user.history_items == [f"i{r % 3}"]  # the snapshot the scorer used


def with_worker(settings, **changes):
    data = settings.model_dump()
    data["worker"] = {**data["worker"], **changes}
    return type(settings)(**data)


def redis_store(settings):

    return open_store(settings.redis)


def wait_for(predicate, timeout_s: float, what: str, workers=()):
    import time

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for worker in workers:
            assert worker.alive(), worker.log_tail()
        value = predicate()
        if value:
            return value
        time.sleep(0.25)
    raise AssertionError(f"timed out waiting for {what}")


def test_trainer_publishes_a_version_the_scorer_serves_with_the_model_scores(stack_settings, tmp_path):
    import numpy as np

    from funnel.convert import user_from_snapshot
    from models.features import ItemFeatures
    from models.served import ServedStudent
    from streams import score_requests, score_responses
    from streams.score_requests import ScoreRequest

    settings = with_worker(stack_settings, vector_dtype="float32", publish_interval_s=1.0)
    ranks, shows = funnel_events(40)
    serving = Worker(settings, "history,joiner,scorer", tmp_path / "serving.log")
    trainer = Worker(settings, "trainer,publisher", tmp_path / "trainer.log", index=1)
    store = redis_store(settings)
    try:
        send_all(settings, "rank_scores", [(r.user_id.encode(), rank_scores_topic.CODEC.encode(r)) for r in ranks])
        send_all(settings, "impressions", [(i.user_id.encode(), impressions_topic.CODEC.encode(i)) for i in shows])
        version = wait_for(store.current_version, 120, "a published version", [serving, trainer])
        wait_for(lambda: (store.meta(store.current_version()) or {}).get("samples_learned", 0) >= 40 * 20,
                 60, "a version with every sample learned", [serving, trainer])
        version = store.current_version()
        # the scorer checks for new versions every 0.2-0.5 s: probe once it holds this one
        wait_for(lambda: metric_sum(scrape(settings.worker.metrics_port), "prerank_model_version",
                                    agent="scorer") == version, 30, f"the scorer on version {version}", [serving])
        request = ScoreRequest(request_id="probe", user_id="u1", ts_ms=T0 + 10**6,
                               candidates=[f"i{j}" for j in range(50)] + ["never-seen"], k=10)
        send_all(settings, "score_requests", [(b"u1", score_requests.CODEC.encode(request))])
        out = read_topic(settings, "score_responses", expected=1, timeout_s=60, idle_s=0.5, workers=[serving])
    finally:
        serving.stop()
        trainer.stop()
    response = score_responses.CODEC.decode(out[0].value)
    assert response.error is None and response.model_version == version
    assert response.cache_tiers["local"] >= 40 and response.cache_tiers["computed"] >= 1
    assert response.unknown_items == 1
    model = ServedStudent.from_bytes(store.weights(version))
    user = user_from_snapshot(response.user)
    expected = model.score(user, [ItemFeatures(i.item_id) if i.item_id == "never-seen"
                                  else store.items([i.item_id])[0] or ItemFeatures(i.item_id)
                                  for i in response.items])
    np.testing.assert_allclose([i.score for i in response.items], expected, rtol=1e-4, atol=1e-4)
    ids, rows = store.version_vectors(version)
    row_of = {item_id: row for row, item_id in enumerate(ids)}
    all_scores = model.logits_from_vectors(
        model.user_vector(user), rows[[row_of[i] for i in request.candidates[:50] if i in row_of]].astype(np.float32))
    assert response.items[0].score >= all_scores.max() - 1e-4  # the top-1 really is the best


@pytest.mark.parametrize("how", ["kill", "stop"])
def test_trainer_killed_mid_stream_learns_every_record_exactly_once(stack_settings, tmp_path, how):
    """``kill``: SIGKILL, the last periodic checkpoint is all there is; ``stop``: SIGTERM while a
    learn step is in flight, which must finish and count before the shutdown checkpoint. The
    checkpoint's counters move with the model, so a record learned twice would count twice."""
    import json
    import time

    from funnel.convert import record_from_sample
    from streams.training_samples import CODEC

    settings = with_worker(stack_settings, checkpoint_interval_s=0.5, train_batch_requests=8)
    records = [record_from_sample(s) for s in _samples(400)]
    encoded = [(r.user_id.encode(), CODEC.encode(r)) for r in records]
    # The second half is held back until the first trainer is gone: it dies mid-stream at any speed.
    first, second = encoded[:200], encoded[200:]
    send_all(settings, "training_samples", first)
    latest = settings.worker.checkpoint_dir / "LATEST"

    def learned() -> int:
        if not latest.exists():
            return 0
        folder = settings.worker.checkpoint_dir / latest.read_text().strip()
        return json.loads((folder / "offsets.json").read_text())["counters"]["records"]

    trainer = Worker(settings, "trainer", tmp_path / "trainer-1.log")
    try:
        wait_for(lambda: learned() >= 40, 120, "a first checkpoint", [trainer])
        trainer.kill() if how == "kill" else trainer.stop()
        assert 40 <= learned() <= len(first)
        send_all(settings, "training_samples", second)
        trainer = Worker(settings, "trainer", tmp_path / "trainer-2.log")
        wait_for(lambda: learned() >= len(records), 180, "every record learned", [trainer])
        time.sleep(1.5)  # more checkpoints: the count must not grow past the records produced
    finally:
        trainer.stop()
    assert learned() == len(records)


def _samples(n: int):
    from models.features import ItemFeatures, RequestSample, UserFeatures

    out = []
    for r in range(n):
        items = tuple(ItemFeatures(f"i{(r + j) % 97}", f"a{j % 5}", (f"t{j % 3}",)) for j in range(12))
        out.append(RequestSample(
            request_id=f"s{r}", ts_ms=T0 + r, user=UserFeatures(f"u{r % 11}", tab=1), items=items,
            cascade=(1,) * 3 + (0,) * 9, click=(1,) + (-1,) * 11, long_view=(0,) + (-1,) * 11,
            like=(0,) + (-1,) * 11,
        ))
    return out


def test_malformed_records_on_every_input_topic_become_dead_letters(stack_settings, tmp_path):
    from streams import dead_letters

    bad = {
        "rank_scores": b'{"v": 1, "request_id": "r", "user_id": "u", "ts_ms": 1, "items": []}',
        "impressions": b"\xc3\x28 not utf-8",
        "score_requests": b'{"v": 1, "request_id": "r", "user_id": "u", "ts_ms": 1, "candidates": "abc"}',
        "training_samples": b'{"v": 1, "request_id": "r"}',
        "item_catalog": b"[]",
        "user_profiles": b'{"v": 7, "user_id": "u"}',
    }
    serving = Worker(stack_settings, "history,joiner,scorer", tmp_path / "serving.log")
    trainer = Worker(stack_settings, "trainer", tmp_path / "trainer.log", index=1)
    try:
        for topic, value in bad.items():
            send_all(stack_settings, topic, [(b"u", value)])
        letters = read_topic(stack_settings, "dead_letters", expected=len(bad) + 1, timeout_s=90, idle_s=2,
                             workers=[serving, trainer])
        assert serving.alive() and trainer.alive()
    finally:
        serving.stop()
        trainer.stop()
    decoded = [dead_letters.CODEC.decode(m.value) for m in letters]
    by_source = {}
    for letter in decoded:
        by_source.setdefault(letter.source_topic, []).append(letter)
    from streams.registry import TOPIC_MODULES

    for topic, value in bad.items():
        name = stack_settings.topics.name(TOPIC_MODULES[topic].TOPIC.name)
        assert name in by_source, f"no dead letter for {name}"
        for letter in by_source[name]:
            assert letter.value() == value and letter.reason and letter.offset >= 0
    # impressions feed two agents (history and joiner): each reports its own dead letter
    impressions_name = stack_settings.topics.name("impressions")
    assert {letter.agent for letter in by_source[impressions_name]} == {"history", "joiner"}


def test_two_scorer_workers_share_partitions_and_answer_every_request(stack_settings, tmp_path):
    import time

    from streams import score_requests, score_responses
    from streams.score_requests import ScoreRequest

    def wave(name: str, n: int) -> list:
        return [ScoreRequest(request_id=f"{name}{i}", user_id=f"user-{i % 23}", ts_ms=T0 + i,
                             candidates=["a", "b"], k=1) for i in range(n)]

    def served() -> list[float]:
        return [metric_sum(scrape(stack_settings.worker.metrics_port + i), "prerank_scorer_requests_total") for i in (0, 1)]

    first = Worker(stack_settings, "scorer", tmp_path / "scorer-0.log", index=0)
    second = Worker(stack_settings, "scorer", tmp_path / "scorer-1.log", index=1)
    try:
        # Warm up until the group has settled with both workers owning partitions (a rebalance
        # can take a few session timeouts on a loaded machine).
        deadline, sent = time.monotonic() + 120, 0
        while True:
            batch = wave(f"w{sent}-", 23)
            send_all(stack_settings, "score_requests", [(r.user_id.encode(), score_requests.CODEC.encode(r)) for r in batch])
            sent += len(batch)
            read_topic(stack_settings, "score_responses", expected=sent, timeout_s=60, idle_s=0.5,
                       workers=[first, second])
            if all(count > 0 for count in served()):
                break
            assert time.monotonic() < deadline, f"one scorer never got partitions: {served()}"
            time.sleep(2)
        before = served()
        requests = wave("r", 200)
        send_all(stack_settings, "score_requests", [(r.user_id.encode(), score_requests.CODEC.encode(r)) for r in requests])
        out = read_topic(stack_settings, "score_responses", expected=sent + len(requests), timeout_s=90,
                         workers=[first, second])
        after = served()
    finally:
        first.stop()
        second.stop()
    answered = [r.request_id for r in (score_responses.CODEC.decode(m.value) for m in out)
                if r.request_id.startswith("r")]
    # At least once (docs/reliability.md): a late rebalance may answer a request twice, never zero times.
    assert sorted(set(answered)) == sorted(r.request_id for r in requests)
    delta = [b - a for a, b in zip(before, after)]
    assert all(d > 0 for d in delta), delta  # both workers own partitions and answer
    assert sum(delta) >= len(requests)


def test_scorer_survives_redis_outage_from_its_local_tier_and_returns_to_the_cache(stack_settings, tmp_path):
    import time

    from models.export import export_bytes
    from models.learner import StudentLearner
    from prerank.stack import Redis
    from streams import score_requests, score_responses
    from streams.score_requests import ScoreRequest
    from tests.conftest import free_port

    data = stack_settings.model_dump()
    data["stack"] = {**data["stack"], "home": tmp_path / "stack", "redis_port": free_port()}
    data["redis"] = {**data["redis"], "url": f"redis://127.0.0.1:{data['stack']['redis_port']}/0"}
    settings = type(stack_settings)(**data)
    redis_service = Redis("redis", settings)
    redis_service.start()
    redis_service.wait_ready(20)

    def publish() -> None:

        learner = StudentLearner()
        items = [f"i{j}" for j in range(40)]
        from models.features import ItemFeatures

        vectors = learner.served.item_vectors([ItemFeatures(i) for i in items]).astype("float16")
        open_store(settings.redis).publish(
            1, export_bytes(learner), items, vectors, {"created_at_ms": 1, "dtype": "float16"}, ttl_s=600)

    def ask(n: int, candidates: list[str]):
        request = ScoreRequest(request_id=f"q{n}", user_id="u1", ts_ms=T0 + n, candidates=candidates, k=5)
        send_all(settings, "score_requests", [(b"u1", score_requests.CODEC.encode(request))])
        out = read_topic(settings, "score_responses", expected=n, timeout_s=60, idle_s=0.3, workers=[scorer])
        return score_responses.CODEC.decode(out[-1].value)

    publish()
    scorer = Worker(settings, "scorer", tmp_path / "scorer.log")
    try:
        first = ask(1, [f"i{j}" for j in range(20)])
        assert first.error is None and first.cache_tiers == {"local": 20, "computed": 0} and not first.degraded
        redis_service.stop()
        asked = 1
        for _ in range(60):  # the scorer notices on its next version check (every 0.5 s)
            asked += 1
            during = ask(asked, [f"i{j}" for j in range(40, 60)])  # none of them published: computed
            if during.degraded:
                break
        assert during.error is None and during.model_version == 1
        assert during.cache_tiers["local"] + during.cache_tiers["computed"] == 20
        assert during.degraded and "redis unavailable" in during.degraded[0]
        # the version's published vectors are resident: an outage does not touch them
        resident = ask(asked + 1, [f"i{j}" for j in range(10, 30)])
        asked += 1
        assert resident.error is None and resident.cache_tiers["local"] == 20
        redis_service.start()
        redis_service.wait_ready(20)
        publish()  # a restarted, empty Redis gets the version again (the publisher's job in production)
        for _ in range(60):  # the scorer's next refresh finds Redis again
            asked += 1
            if not ask(asked, ["i0"]).degraded:
                break
            time.sleep(0.5)
        after = ask(asked + 1, [f"i{j}" for j in range(20, 35)] + ["i45", "i99"])
        assert after.error is None and not after.degraded
        # published: resident; computed during the outage and still valid for v1: local; new: computed
        assert after.cache_tiers == {"local": 16, "computed": 1}
    finally:
        scorer.stop()
        redis_service.stop()


def test_the_scorer_switches_to_each_new_version_whole(stack_settings, tmp_path):
    """A running scorer serves version 1, then version 2 once published (model and vectors of the
    same version: the top-1 score is version 2's), without a request ever failing between."""
    from models.export import export_bytes
    from models.features import ItemFeatures
    from models.learner import StudentLearner
    from models.served import ServedStudent
    from models.two_tower import TwoTowerConfig
    from streams import score_requests, score_responses
    from streams.score_requests import ScoreRequest

    store = open_store(stack_settings.redis)
    items = [f"i{j}" for j in range(30)]

    def publish(version: int, seed: int) -> ServedStudent:
        learner = StudentLearner(TwoTowerConfig(seed=seed))
        vectors = learner.served.item_vectors([ItemFeatures(i) for i in items]).astype("float16")
        store.publish(version, export_bytes(learner), items, vectors,
                      {"created_at_ms": version, "dtype": "float16"}, ttl_s=600)
        return ServedStudent.from_bytes(store.weights(version))

    def ask(n: int):
        request = ScoreRequest(request_id=f"s{n}", user_id="u1", ts_ms=T0 + n, candidates=items, k=1)
        send_all(stack_settings, "score_requests", [(b"u1", score_requests.CODEC.encode(request))])
        out = read_topic(stack_settings, "score_responses", expected=n, timeout_s=60, idle_s=0.3, workers=[scorer])
        return score_responses.CODEC.decode(out[-1].value)

    publish(1, seed=1)
    scorer = Worker(stack_settings, "scorer", tmp_path / "scorer.log")
    try:
        first = ask(1)
        assert first.error is None and first.model_version == 1
        second_model = publish(2, seed=2)
        wait_for(lambda: metric_sum(scrape(stack_settings.worker.metrics_port), "prerank_model_version",
                                    agent="scorer") == 2, 60, "the scorer on version 2", [scorer])
        second = ask(2)
    finally:
        scorer.stop()
    assert second.error is None and second.model_version == 2
    assert second.cache_tiers == {"local": len(items), "computed": 0}
    from funnel.convert import user_from_snapshot

    expected = second_model.score(user_from_snapshot(second.user), [ItemFeatures(i) for i in items])
    assert abs(second.items[0].score - float(expected.max())) < 5e-3  # float16 vectors
