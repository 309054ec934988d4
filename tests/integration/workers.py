"""Run real worker processes and talk to them with kafka-python, for integration tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path

from kafka import KafkaConsumer, KafkaProducer

from prerank.settings import Settings

REPO = Path(__file__).resolve().parents[2]


def settings_env(settings: Settings) -> dict[str, str]:
    """Environment variables that make a child process read the same settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PRERANK_")}
    flat = {
        "TOPICS__PREFIX": settings.topics.prefix,
        "TOPICS__PARTITIONS": settings.topics.partitions,
        "REDIS__KEY_PREFIX": settings.redis.key_prefix,
        "REDIS__URL": settings.redis.url,
        "KAFKA__BOOTSTRAP_SERVERS": settings.kafka.bootstrap_servers,
        "WORKER__APP_ID": settings.worker.app_id,
        "WORKER__DATA_DIR": settings.worker.data_dir,
        "WORKER__CHECKPOINT_DIR": settings.worker.checkpoint_dir,
        "WORKER__PUBLISH_INTERVAL_S": settings.worker.publish_interval_s,
        "WORKER__CHECKPOINT_INTERVAL_S": settings.worker.checkpoint_interval_s,
        "WORKER__JOIN_WINDOW_S": settings.worker.join_window_s,
        "WORKER__WEB_PORT": settings.worker.web_port,
        "WORKER__METRICS_PORT": settings.worker.metrics_port,
        "WORKER__VECTOR_DTYPE": settings.worker.vector_dtype,
        "MODEL__HIDDEN_DIM": settings.model.hidden_dim,
        "MODEL__OUTPUT_DIM": settings.model.output_dim,
        "MODEL__MIN_COUNT": settings.model.min_count,
        "MODEL__TOP_N": settings.model.top_n,
        "MODEL__EASY_NEGATIVES": settings.model.easy_negatives,
    }
    env.update({f"PRERANK_{key}": str(value) for key, value in flat.items()})
    env["PYTHONUNBUFFERED"] = "1"
    return env


class Worker:
    """A ``prerank worker`` child process; stopped by its own pid only."""

    def __init__(self, settings: Settings, agents: str, log_path: Path, index: int = 0) -> None:
        self.log_path = log_path
        self._log = log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "prerank.cli", "worker", "--agents", agents, "--index", str(index)],
            env=settings_env(settings), cwd=REPO, stdout=self._log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def kill(self) -> None:
        """Hard crash (SIGKILL): no shutdown hooks run."""
        if self.alive():
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait(10)

    def stop(self, timeout_s: float = 30.0) -> int | None:
        if self.alive():
            os.kill(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.kill()
        self._log.close()
        return self.process.returncode

    def log_tail(self, lines: int = 40) -> str:
        text = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])


def producer(settings: Settings) -> KafkaProducer:
    return KafkaProducer(**settings.kafka.kafka_python_config(), acks="all", linger_ms=5)


def send_all(settings: Settings, topic_key: str, messages: Iterable[tuple[bytes, bytes]]) -> int:
    from agents.app import TOPIC_MODULES

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
    from agents.app import TOPIC_MODULES

    name = settings.topics.name(TOPIC_MODULES[topic_key].TOPIC.name)
    consumer = KafkaConsumer(
        name, **settings.kafka.kafka_python_config(), auto_offset_reset="earliest",
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
