"""The foundation on the real local stack: topics, a Faust worker, dead letters."""

from __future__ import annotations

import json

import pytest
from kafka.admin import ConfigResource, ConfigResourceType, KafkaAdminClient

from core.kafka import kafka_python_options
from streams import dead_letters, score_requests, score_responses
from streams.registry import ALL_TOPICS, create_topics
from streams.score_requests import ScoreRequest
from tests.integration.workers import Worker, read_topic, send_all

pytestmark = pytest.mark.integration


def test_topics_have_declared_partitions_and_configs(stack_settings):
    again = create_topics(kafka_python_options(stack_settings.kafka), stack_settings.topics)
    assert set(again.values()) == {"exists"}  # idempotent
    admin = KafkaAdminClient(**kafka_python_options(stack_settings.kafka))
    try:
        names = [stack_settings.topics.name(spec.name) for spec in ALL_TOPICS]
        described = {t["name"]: t for t in admin.describe_topics(names)}
        resources = [ConfigResource(ConfigResourceType.TOPIC, name) for name in names]
        configs = {
            name: {key: entry["value"] for key, entry in entries.items()}
            for name, entries in admin.describe_configs(resources)["topic"].items()
        }
    finally:
        admin.close()
    for spec in ALL_TOPICS:
        name = stack_settings.topics.name(spec.name)
        expected = spec.partitions or stack_settings.topics.partitions
        assert len(described[name]["partitions"]) == expected, name
        assert configs[name]["cleanup.policy"] == ("compact" if spec.compacted else "delete"), name


def test_a_finished_runs_topics_are_deleted_by_prefix_and_only_those(stack_settings):
    import time

    from streams.registry import delete_topics

    kafka = kafka_python_options(stack_settings.kafka)
    other = stack_settings.topics.model_copy(update={"prefix": stack_settings.topics.prefix + "keep."})
    create_topics(kafka, other)
    deleted = delete_topics(kafka, (stack_settings.topics.prefix + "score",))
    assert set(deleted) == {stack_settings.topics.name("score-requests"), stack_settings.topics.name("score-responses")}
    admin = KafkaAdminClient(**kafka)
    try:
        deadline = time.monotonic() + 30
        while set(deleted) & set(admin.list_topics()) and time.monotonic() < deadline:
            time.sleep(0.5)
        left = set(admin.list_topics())
    finally:
        admin.close()
    assert not set(deleted) & left
    assert other.name("score-requests") in left and stack_settings.topics.name("impressions") in left
    delete_topics(kafka, (other.prefix,))
    with pytest.raises(ValueError, match="empty prefix"):
        delete_topics(kafka, ("",))


def test_records_pass_through_a_worker_once_in_order_and_bad_ones_become_dead_letters(stack_settings, tmp_path):
    users = [f"u{i}" for i in range(5)]
    requests = [
        ScoreRequest(request_id=f"r{n}", user_id=users[n % 5], ts_ms=1_650_000_000_000 + n,
                     candidates=["a", "b", "c"], k=2)
        for n in range(60)
    ]
    good = [(r.user_id.encode(), score_requests.CODEC.encode(r)) for r in requests]
    bad = [(b"u0", b"\xffnot json"), (b"u1", json.dumps({"v": 1, "request_id": "x"}).encode())]
    worker = Worker(stack_settings, "scorer", tmp_path / "worker.log")
    try:
        send_all(stack_settings, "score_requests", good[:30] + bad + good[30:])
        responses = read_topic(stack_settings, "score_responses", expected=len(requests), timeout_s=90, workers=[worker])
        letters = read_topic(stack_settings, "dead_letters", expected=len(bad), timeout_s=30, idle_s=1)
        assert worker.alive(), worker.log_tail()
    finally:
        worker.stop()
    decoded = [score_responses.CODEC.decode(m.value) for m in responses]
    assert sorted(r.request_id for r in decoded) == sorted(r.request_id for r in requests), worker.log_tail()
    for user in users:  # in order per key
        sent = [r.request_id for r in requests if r.user_id == user]
        got = [r.request_id for r, m in zip(decoded, responses) if m.key == user.encode()]
        assert got == sent
    assert all(r.error == "no model version published yet" for r in decoded)
    # each bad record is kept byte for byte with its own reason: the undecodable bytes as invalid
    # JSON, the request without a user id as a validation error naming that field
    reasons = {dead_letters.CODEC.decode(m.value).value(): dead_letters.CODEC.decode(m.value).reason for m in letters}
    assert set(reasons) == {value for _, value in bad}, reasons
    assert reasons[bad[0][1]].startswith("invalid JSON"), reasons
    assert reasons[bad[1][1]].startswith("user_id: Field required"), reasons
    sources = {dead_letters.CODEC.decode(m.value).source_topic for m in letters}
    assert sources == {stack_settings.topics.name("score-requests")}
