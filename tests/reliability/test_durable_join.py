"""The label join survives a crash and a rebalance; the trainer learns every request exactly once.

Guarantees under test (docs/reliability.md): the joiner's open windows live in changelog-backed
tables, so a ``kill -9`` of the serving worker or a partition moving between workers loses none;
into ``training-samples`` that is at least once, and the trainer drops a request it has already
learned, so every request reaches the model exactly once (counted at its checkpoint).

The windows are open by construction, never by timing: the join window is wide, the idle flush
is an hour, and the windows are closed at the end by "closer" impressions stamped hours later on
every partition (requests without rank-scores, so never training records themselves; 16 per
user, since one event cannot move the joiner's watermark far). Before a
kill the test waits until the joiner reports every window open *and* the serving group has
committed every input offset: a join held only in memory would then lose them all.
"""

from __future__ import annotations

import json
import time

import pytest
from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition

from core.kafka import kafka_python_options
from funnel.convert import record_from_sample
from monitoring.scrape import metric_sum, scrape
from streams import impressions, rank_scores
from streams.impressions import Impression
from streams.registry import TOPIC_MODULES
from streams.training_samples import CODEC as SAMPLES
from tests.integration.test_pipeline import _samples
from tests.integration.workers import send_all
from tests.reliability.harness import (
    T0,
    Sender,
    TopicReader,
    Worker,
    checkpoint_counters,
    derive,
    funnel_events,
    wait_for,
)

pytestmark = pytest.mark.integration

SERVING = "history,joiner"
USERS = [f"u{k}" for k in range(7)]  # funnel_events' users


def durable_settings(small_settings):
    return derive(small_settings, worker={"join_window_s": 600.0, "join_idle_flush_s": 3600.0,
                                          "checkpoint_interval_s": 0.5, "train_batch_requests": 16})


def topic_name(settings, key: str) -> str:
    return settings.topics.name(TOPIC_MODULES[key].TOPIC.name)


def end_offsets(settings, key: str) -> dict[int, int]:
    consumer = KafkaConsumer(**kafka_python_options(settings.kafka), group_id=None)
    try:
        tps = [TopicPartition(topic_name(settings, key), p) for p in range(settings.topics.partitions)]
        return {tp.partition: offset for tp, offset in consumer.end_offsets(tps).items()}
    finally:
        consumer.close()


def inputs_committed(settings) -> bool:
    """The serving group has committed every rank-scores and impressions offset."""
    admin = KafkaAdminClient(**kafka_python_options(settings.kafka))
    try:
        committed = admin.list_group_offsets(settings.worker.app_id)[settings.worker.app_id]
    finally:
        admin.close()
    for key in ("rank_scores", "impressions"):
        for partition, end in end_offsets(settings, key).items():
            found = committed.get(TopicPartition(topic_name(settings, key), partition))
            if end > 0 and (found is None or found.offset < end):
                return False
    return True


def pending(worker) -> float | None:
    """The joiner's open windows, as the worker reports them (None while /metrics is not up)."""
    try:
        return metric_sum(scrape(worker.metrics_port), "prerank_joiner_pending_requests")
    except OSError:
        return None


def send(settings, records_by_topic) -> None:
    for key, codec, records in records_by_topic:
        send_all(settings, key, [(r.user_id.encode(), codec.encode(r)) for r in records])


CLOSERS_PER_USER = 16  # one event cannot move a watermark far (funnel.labels): most recent ones must


def send_closers(settings) -> None:
    """Impressions of every user, hours later: every partition's watermark passes every window.
    Enough of them (all of one request, never a training record) for most of each partition's
    recent event times to be hours later."""
    sender = Sender(settings)
    futures = [sender.send("impressions", user.encode(), impressions.CODEC.encode(Impression(
        request_id=f"closer-{user}", user_id=user, item_id=f"closer{k}", ts_ms=T0 + 10**7 + k, position=k)))
        for k in range(CLOSERS_PER_USER) for user in USERS]
    sender.flush()
    partitions = {future.get(timeout=30).partition for future in futures}
    sender.close()
    assert partitions == set(range(settings.topics.partitions)), f"closers reached only {partitions}"


def learned_everything(settings, expected: int):
    """Wait until the trainer's checkpoint has read the whole training-samples topic and learned
    ``expected`` records; returns its counters."""
    def done():
        counters = checkpoint_counters(settings)
        latest = settings.worker.checkpoint_dir / "LATEST"
        if counters["records"] < expected or not latest.exists():
            return None
        offsets = json.loads((settings.worker.checkpoint_dir / latest.read_text().strip() / "offsets.json")
                             .read_text())["offsets"]
        ends = end_offsets(settings, "training_samples")
        return counters if all(offsets.get(str(p), 0) >= end for p, end in ends.items()) else None

    return done


def check_exactly_once(settings, expected_ids: set[str], counters: dict, measure) -> None:
    reader = TopicReader(settings, "training_samples")
    try:
        messages = reader.read_to_end()
    finally:
        reader.close()
    records = [SAMPLES.decode(m.value) for m in messages]
    ids = [r.request_id for r in records]
    measure("requests", len(expected_ids))
    measure("records_in_topic", len(ids))
    measure("records_learned", counters["records"])
    measure("duplicates_dropped", counters["duplicate_records"])
    assert set(ids) == expected_ids, f"missing {sorted(expected_ids - set(ids))[:10]}, extra {sorted(set(ids) - expected_ids)[:10]}"
    assert counters["records"] == len(expected_ids)  # every request once into the model
    assert counters["records"] + counters["duplicate_records"] == len(ids)  # and every copy accounted for
    # the impressions were joined too (each request's first exposure was clicked)
    assert all(1 in r.click for r in records), [r.request_id for r in records if 1 not in r.click][:10]


def test_serving_worker_killed_with_200_open_windows_loses_none(small_settings, tmp_path, measure, cleanup):
    settings = durable_settings(small_settings)
    ranks, shows = funnel_events(200)
    serving = Worker(settings, SERVING, tmp_path / "serving-0.log")
    cleanup.callback(serving.stop)
    trainer = Worker(settings, "trainer", tmp_path / "trainer.log", index=2)
    cleanup.callback(trainer.stop)
    send(settings, [("rank_scores", rank_scores.CODEC, ranks), ("impressions", impressions.CODEC, shows)])
    wait_for(lambda: pending(serving) == 200, 180, "200 open windows", [serving])
    wait_for(lambda: inputs_committed(settings), 60, "every input offset committed", [serving])
    assert checkpoint_counters(settings)["records"] == 0  # nothing emitted: all 200 are open
    serving.kill()  # SIGKILL: no shutdown hook, no final commit or flush

    restarted = Worker(settings, SERVING, tmp_path / "serving-1.log")
    cleanup.callback(restarted.stop)
    started = time.monotonic()
    wait_for(lambda: pending(restarted) == 200, 180, "the restarted joiner resuming 200 windows", [restarted])
    measure("resume_s", round(time.monotonic() - started, 1))
    send_closers(settings)
    counters = wait_for(learned_everything(settings, 200), 180, "every request learned", [restarted, trainer])
    check_exactly_once(settings, {r.request_id for r in ranks}, counters, measure)


def test_second_serving_worker_joins_and_leaves_every_request_learned_once(small_settings, tmp_path, measure, cleanup):
    settings = durable_settings(small_settings)  # 2 partitions: one per worker while both run
    first_ranks, first_shows = funnel_events(100)
    later_ranks, later_shows = funnel_events(100, start=100)
    last_ranks, last_shows = funnel_events(100, start=200)
    a = Worker(settings, SERVING, tmp_path / "serving-a.log", index=0)
    cleanup.callback(a.stop)
    trainer = Worker(settings, "trainer", tmp_path / "trainer.log", index=2)
    cleanup.callback(trainer.stop)

    # Rank-scores only: 100 windows open on worker A, their impressions held back.
    send(settings, [("rank_scores", rank_scores.CODEC, first_ranks)])
    wait_for(lambda: pending(a) == 100, 180, "100 open windows on A", [a])
    wait_for(lambda: inputs_committed(settings), 60, "every input offset committed", [a])

    # B joins: each worker owns one partition and resumes that partition's windows.
    b = Worker(settings, SERVING, tmp_path / "serving-b.log", index=1)
    cleanup.callback(b.stop)
    wait_for(lambda: (pending(a) or 0) > 0 and (pending(b) or 0) > 0 and pending(a) + pending(b) == 100,
             180, "A and B each holding one partition's windows", [a, b])
    measure("windows_moved_to_b", pending(b))
    send(settings, [("impressions", impressions.CODEC, first_shows), ("rank_scores", rank_scores.CODEC, later_ranks),
                    ("impressions", impressions.CODEC, later_shows)])
    wait_for(lambda: inputs_committed(settings) and pending(a) + pending(b) == 200, 120,
             "200 windows open across A and B", [a, b])

    # B leaves: A takes its partition back with every window B had joined into.
    b.stop()
    wait_for(lambda: pending(a) == 200, 180, "A holding all 200 windows again", [a])
    send(settings, [("rank_scores", rank_scores.CODEC, last_ranks), ("impressions", impressions.CODEC, last_shows)])
    wait_for(lambda: pending(a) == 300, 120, "300 windows open on A", [a])
    send_closers(settings)
    counters = wait_for(learned_everything(settings, 300), 180, "every request learned", [a, trainer])
    check_exactly_once(settings, {r.request_id for r in first_ranks + later_ranks + last_ranks}, counters, measure)


def test_trainer_drops_repeated_records_and_keeps_their_ids_across_a_kill(small_settings, tmp_path, measure, cleanup):
    """Each record arrives twice (the second copy 40 records later, as a replaying joiner would
    send it); a kill -9 mid-stream restores the learned ids with the model and the offsets."""
    settings = derive(small_settings, worker={"checkpoint_interval_s": 0.3, "train_batch_requests": 8})
    records = [record_from_sample(s) for s in _samples(300)]
    stream = []
    for k, record in enumerate(records):
        stream.append(record)
        if k >= 40:
            stream.append(records[k - 40])
    stream += records[-40:]
    encoded = [(r.user_id.encode(), SAMPLES.encode(r)) for r in stream]
    # The second half is held back until the first trainer is dead: the kill is mid-stream at any speed.
    half = len(encoded) // 2
    send_all(settings, "training_samples", encoded[:half])
    trainer = Worker(settings, "trainer", tmp_path / "trainer-0.log")
    cleanup.callback(trainer.stop)
    wait_for(lambda: checkpoint_counters(settings)["records"] > 100, 180, "a checkpoint past 100 records", [trainer])
    trainer.kill()
    killed_at = checkpoint_counters(settings)["records"]
    send_all(settings, "training_samples", encoded[half:])
    trainer = Worker(settings, "trainer", tmp_path / "trainer-1.log")
    cleanup.callback(trainer.stop)
    counters = wait_for(learned_everything(settings, len(records)), 180, "every record learned", [trainer])
    trainer.stop()
    measure("records_sent", len(stream))
    measure("killed_at_records", killed_at)
    assert killed_at < len(records), "killed too late to prove anything"
    assert counters["records"] == len(records)
    assert counters["duplicate_records"] == len(stream) - len(records)
    assert counters["samples"] == sum(len(r.items) for r in records)
