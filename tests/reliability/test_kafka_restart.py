"""Kafka restarted (data kept on disk) under running serving and training workers.

A private single-node broker (the shared one is never restarted) carries the whole pipeline:
score requests to the scorer, funnel events to the joiner, training samples to the trainer.
Traffic is sent before the broker stops and after it is back; every agent must reconnect by
itself and nothing produced may be lost.
"""

from __future__ import annotations

import time

import pytest

from tests.reliability.harness import (
    Sender,
    TopicReader,
    Worker,
    checkpoint_counters,
    create_topics,
    derive,
    fresh_settings,
    private_kafka,
    publish_model,
    response_ids,
    score_request,
    send_funnel,
    wait_for,
)

pytestmark = pytest.mark.integration

DOWN_S = 8.0
REQUESTS, FUNNEL = 30, 15


@pytest.fixture(scope="module")
def restart(base_settings, tmp_path_factory):
    from tests.conftest import need_service

    need_service("Redis", base_settings.stack.host, base_settings.stack.redis_port)
    folder = tmp_path_factory.mktemp("kafka-restart")
    kafka, settings = private_kafka(fresh_settings(base_settings, folder), folder / "stack")
    settings = derive(settings, worker={"checkpoint_interval_s": 0.5})
    seen: dict = {}
    kafka.start()
    workers: list[Worker] = []
    try:
        seen["kafka_start_s"] = kafka.wait_ready(120)
        create_topics(settings)
        publish_model(settings)
        workers += [Worker(settings, "history,joiner,scorer", folder / "serving.log", index=0),
                    Worker(settings, "trainer", folder / "trainer.log", index=1)]
        reader = TopicReader(settings, "score_responses")

        def traffic(phase: str, start: int) -> set[str]:
            sender = Sender(settings)
            try:
                ids = {f"{phase}{i}" for i in range(REQUESTS)}
                for rid in sorted(ids):
                    sender.request(score_request(rid, f"u{int(rid[len(phase):]) % 6}"))
                sender.flush()
            finally:
                sender.close()
            send_funnel(settings, FUNNEL, start=start)
            return ids

        before = traffic("before", 0)
        reader.until(lambda got: before <= set(response_ids(got)), 120, workers)
        wait_for(lambda: checkpoint_counters(settings)["records"] >= FUNNEL, 120, "first samples learned", workers)
        reader.close()
        kafka.stop()
        time.sleep(DOWN_S)
        seen["alive_while_down"] = [w.alive() for w in workers]
        kafka.start()
        seen["kafka_restart_s"] = kafka.wait_ready(120)
        back_at = time.monotonic()
        after = traffic("after", FUNNEL)
        reader = TopicReader(settings, "score_responses")
        messages = reader.until(lambda got: (before | after) <= set(response_ids(got)), 120, workers)
        seen["requests_recover_s"] = time.monotonic() - back_at
        seen["requests"] = (before | after, response_ids(messages))
        reader.close()
        try:
            wait_for(lambda: checkpoint_counters(settings)["records"] >= 2 * FUNNEL, 90, "samples learned", workers)
        except AssertionError:
            pass
        seen["samples_recover_s"] = time.monotonic() - back_at
        time.sleep(1.5)
        seen["records_learned"] = checkpoint_counters(settings)["records"]
        seen["alive"] = [w.alive() for w in workers]
    finally:
        for worker in workers:
            worker.stop()
        kafka.stop()
    return seen


def test_every_request_is_answered_across_the_restart(restart, measure):
    wanted, answered = restart["requests"]
    measure("requests_sent", len(wanted))
    measure("requests_lost", len(wanted - set(answered)))
    measure("duplicate_answers", len(answered) - len(set(answered)))
    measure("broker_down_s", DOWN_S)
    measure("broker_restart_s", round(restart["kafka_restart_s"], 1))
    measure("recover_s", round(restart["requests_recover_s"], 1))
    assert all(restart["alive_while_down"]) and all(restart["alive"])
    assert wanted <= set(answered)


def test_every_training_record_is_learned_exactly_once_across_the_restart(restart, measure):
    measure("records_produced", 2 * FUNNEL)
    measure("records_learned", restart["records_learned"])
    measure("records_lost", 2 * FUNNEL - restart["records_learned"])
    measure("recover_s", round(restart["samples_recover_s"], 1))
    assert restart["records_learned"] == 2 * FUNNEL
