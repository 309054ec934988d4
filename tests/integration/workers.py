"""Run real worker processes and talk to them with kafka-python, for integration tests."""

from __future__ import annotations

import time
from collections.abc import Iterable

from kafka import KafkaConsumer, KafkaProducer

from core.kafka import kafka_python_options
from core.processes import Worker, settings_env  # noqa: F401 - re-exported for the tests
from core.settings import Settings


def producer(settings: Settings) -> KafkaProducer:
    return KafkaProducer(**kafka_python_options(settings.kafka), acks="all", linger_ms=5)


def send_all(settings: Settings, topic_key: str, messages: Iterable[tuple[bytes, bytes]]) -> int:
    from streams.registry import TOPIC_MODULES

    name = settings.topics.name(TOPIC_MODULES[topic_key].TOPIC.name)
    kafka = producer(settings)
    count = 0
    for key, value in messages:
        kafka.send(name, key=key, value=value)
        count += 1
    kafka.flush()
    kafka.close()
    return count


def read_topic(
    settings: Settings, topic_key: str, expected: int, timeout_s: float = 60.0, idle_s: float = 3.0,
    workers: Iterable[Worker] = (),
):
    """Every record of a topic until ``expected`` arrived (then ``idle_s`` more), the timeout, or
    until one of ``workers`` died (its log tail is raised)."""
    from streams.registry import TOPIC_MODULES

    name = settings.topics.name(TOPIC_MODULES[topic_key].TOPIC.name)
    consumer = KafkaConsumer(
        name, **kafka_python_options(settings.kafka), auto_offset_reset="earliest",
        enable_auto_commit=False, consumer_timeout_ms=500, group_id=None,
    )
    records = []
    deadline = time.monotonic() + timeout_s
    settled_at = None
    try:
        while time.monotonic() < deadline:
            for worker in workers:
                if not worker.alive():
                    raise RuntimeError(f"worker {worker.pid} died:\n{worker.log_tail()}")
            for message in consumer:
                records.append(message)
            if len(records) >= expected:
                settled_at = settled_at or time.monotonic()
                if time.monotonic() - settled_at >= idle_s:
                    break
    finally:
        consumer.close()
    return records
