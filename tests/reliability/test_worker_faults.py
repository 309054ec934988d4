"""Worker crashes on the real stack: the trainer killed repeatedly, one of two scorers killed.

Guarantees under test (docs/reliability.md):

- trainer: exactly once. The checkpoint holds the model and the next offset of every partition
  together; a SIGKILL replays only what the last checkpoint had not learned.
- scorer: at least once. A request whose offset the dead worker had not committed is answered
  again by the worker that takes its partition; every request is answered.
"""

from __future__ import annotations

import threading
import time

import pytest

from funnel.convert import record_from_sample
from monitoring.scrape import metric_sum, scrape
from streams.training_samples import CODEC as SAMPLES
from tests.integration.test_pipeline import _samples
from tests.integration.workers import send_all
from tests.reliability.harness import (
    Sender,
    TopicReader,
    Worker,
    checkpoint_counters,
    derive,
    publish_model,
    response_ids,
    score_request,
    wait_for,
)

pytestmark = pytest.mark.integration

KILLS = 3


def test_trainer_killed_three_times_learns_every_record_exactly_once(stack_settings, tmp_path, measure, cleanup):
    settings = derive(stack_settings, worker={"checkpoint_interval_s": 0.3, "train_batch_requests": 8})
    records = [record_from_sample(s) for s in _samples(1200)]
    encoded = [(r.user_id.encode(), SAMPLES.encode(r)) for r in records]
    # One part of the stream per trainer life, sent when it starts: each kill lands mid-stream at any speed.
    part = len(encoded) // (KILLS + 1)
    parts = [encoded[i * part:(i + 1) * part] for i in range(KILLS)] + [encoded[KILLS * part:]]
    checkpoints = settings.worker.checkpoint_dir

    def learned() -> int:
        return checkpoint_counters(settings)["records"]

    kill_points, recoveries, mid_checkpoint = [], [], 0
    for round_ in range(KILLS + 1):
        send_all(settings, "training_samples", parts[round_])
        trainer = Worker(settings, "trainer", tmp_path / f"trainer-{round_}.log")
        cleanup.callback(trainer.stop)
        started, before = time.monotonic(), learned()
        if round_ == KILLS:
            wait_for(lambda: learned() >= len(records), 240, "every record learned", [trainer])
            time.sleep(1.5)  # further checkpoints must not count anything twice
            trainer.stop()
            break
        threshold = round_ * part + part // 3  # a third into this life's part, at least
        wait_for(lambda: learned() > max(before, threshold), 180, f"checkpoint past {threshold}", [trainer])
        recoveries.append(time.monotonic() - started)
        trainer.kill()  # SIGKILL: no shutdown checkpoint
        kill_points.append(learned())
        newest = max(checkpoints.glob("ckpt-*"), default=None)
        if newest is not None and newest.name != (checkpoints / "LATEST").read_text().strip():
            mid_checkpoint += 1  # the kill landed while a checkpoint folder was being written
    counters = checkpoint_counters(settings)
    measure("records_produced", len(records))
    measure("records_learned", counters["records"])
    measure("records_lost", len(records) - counters["records"])
    measure("kills", KILLS)
    measure("kills_during_checkpoint", mid_checkpoint)
    measure("recover_s_max", round(max(recoveries[1:] or recoveries), 1))
    assert all(point < len(records) for point in kill_points), f"killed too late to prove anything: {kill_points}"
    assert counters["records"] == len(records)
    assert counters["samples"] == sum(len(r.items) for r in records)


def test_one_of_two_scorers_killed_every_request_is_answered(stack_settings, tmp_path, measure, cleanup):
    settings = stack_settings  # 2 partitions: one per worker
    publish_model(settings)
    workers = [Worker(settings, "scorer", tmp_path / f"scorer-{i}.log", index=i) for i in (0, 1)]
    for worker in workers:
        cleanup.callback(worker.stop)
    reader = TopicReader(settings, "score_responses")
    cleanup.callback(reader.close)
    sender = Sender(settings)
    cleanup.callback(sender.close)
    sent: dict[str, float] = {}

    def send(prefix: str, n: int, rate: float) -> None:
        for i in range(n):
            request = score_request(f"{prefix}{i}", f"u{i % 16}")
            sent[request.request_id] = sender.request(request)
            sender.flush()
            time.sleep(1 / rate)

    def both_serving() -> bool:
        send(f"warm{len(sent)}-", 8, 50)
        try:
            return all(metric_sum(scrape(w.metrics_port), "prerank_scorer_requests_total") > 0 for w in workers)
        except OSError:  # a worker's /metrics is not up yet
            return False

    wait_for(both_serving, 120, "both scorers owning a partition", workers)
    traffic = threading.Thread(target=send, args=("load", 480, 40))
    traffic.start()
    started, killed_at = time.time(), None
    while traffic.is_alive():  # poll while sending: arrival times are real
        reader.poll()
        if killed_at is None and time.time() - started > 3:
            killed_at = time.time()
            workers[1].kill()
    traffic.join()
    wanted = set(sent)
    messages = reader.until(lambda got: wanted <= set(response_ids(got)), 90, [workers[0]])
    ids = response_ids(messages)
    after_kill = [arrived - sent[rid] for rid, arrived in zip(ids, reader.arrived_at)
                  if rid.startswith("load") and sent[rid] >= killed_at - 1]
    measure("requests_sent", len(wanted))
    measure("requests_answered", len(wanted & set(ids)))
    measure("requests_lost", len(wanted - set(ids)))
    measure("duplicate_answers", len(ids) - len(set(ids)))
    measure("recover_s_max", round(max(after_kill), 1))
    assert not sender.failed_sends()
    assert wanted <= set(ids), f"unanswered: {sorted(wanted - set(ids))}"
    assert workers[0].alive()
