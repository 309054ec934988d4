"""What the pipeline benchmarks share: a private corner of the running stack, worker processes,
steady pacing, latency summaries and the JSON result.

A pipeline bench runs against the local stack (``prerank stack up``) under its own topic prefix,
Redis key prefix, Faust app id, ports and folders (:func:`private_stack`), starts the workers it
needs as child processes (:class:`WorkerProcess`, stopped by their own pid), and removes its
topics, keys and folders at the end.

>>> summarize([0.010, 0.020, 0.030, 0.040], scale=1000.0, unit="ms")["p50_ms"]
25.0
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import numpy as np

from core.errors import PrerankError
from core.kafka import kafka_python_options
from core.ports import free_port, port_open
from core.processes import Worker, settings_env  # noqa: F401 - settings_env re-exported
from core.settings import Settings

T = TypeVar("T")


class BenchError(PrerankError):
    """A pipeline bench could not run or could not finish (the CLI prints it as one line)."""


def require_stack(settings: Settings) -> None:
    """Raise :class:`BenchError` naming the missing service unless Kafka and Redis (the one
    ``settings.redis.url`` names: a single node or a cluster's startup node) answer."""
    stack = settings.stack
    redis = urlsplit(settings.redis.url)
    for name, host, port in (("Kafka", stack.host, stack.kafka_port),
                             ("Redis", redis.hostname or stack.host, redis.port or stack.redis_port)):
        if not port_open(host, port):
            hint = "prerank stack up --redis-cluster" if name == "Redis" and settings.redis.cluster else "prerank stack up"
            raise BenchError(f"{name} is not reachable on {host}:{port}; start it with `{hint}`")


def on_redis_cluster(settings: Settings) -> Settings:
    """The settings on the local Redis Cluster (``prerank stack up --redis-cluster``), for a
    bench's ``--redis-cluster``: its numbers then compare with a single node's run.

    >>> s = on_redis_cluster(Settings(_env_file=None))
    >>> s.redis.cluster, s.redis.url
    (True, 'redis://127.0.0.1:17001/0')
    """
    return with_changes(settings, redis={
        "cluster": True, "url": f"redis://{settings.stack.host}:{settings.stack.redis_cluster_port}/0"})


def redis_topology(settings: Settings) -> str:
    return "cluster" if settings.redis.cluster else "single"


def with_changes(settings: Settings, **sections: dict[str, Any]) -> Settings:
    """A copy of ``settings`` with some fields of some sections replaced.

    >>> s = with_changes(Settings(_env_file=None), worker={"publish_interval_s": 0.5})
    >>> s.worker.publish_interval_s, s.worker.web_port
    (0.5, 6066)
    """
    data = settings.model_dump()
    for section, changes in sections.items():
        data[section] = {**data[section], **changes}
    return type(settings)(**data)


@contextmanager
def private_stack(base: Settings, label: str, **worker_changes: Any) -> Iterator[Settings]:
    """Settings of one bench run on the running stack: fresh topics, keys, app id, ports, folders.

    The topics are created on entry; on exit the topics, the Redis keys under the run's prefix
    and the run's folder are removed.
    """
    require_stack(base)
    run = f"{label}{uuid.uuid4().hex[:8]}"
    folder = Path(tempfile.mkdtemp(prefix=f"prerank-bench-{run}-"))
    settings = with_changes(
        base,
        topics={"prefix": f"b{run}."},
        redis={"key_prefix": f"b{run}"},
        worker={"app_id": f"prerank-b{run}", "data_dir": folder / "faust", "checkpoint_dir": folder / "checkpoints",
                "web_port": free_port(), "metrics_port": free_port(), **worker_changes},
    )
    from streams.registry import create_topics

    create_topics(kafka_python_options(settings.kafka), settings.topics)
    try:
        yield settings
    finally:
        _delete_topics(settings)
        delete_redis_keys(settings)
        shutil.rmtree(folder, ignore_errors=True)


def _delete_topics(settings: Settings) -> None:
    from kafka.admin import KafkaAdminClient
    from kafka.errors import KafkaError

    admin = KafkaAdminClient(**kafka_python_options(settings.kafka), client_id="prerank-bench")
    try:
        mine = [name for name in admin.list_topics() if name.startswith(settings.topics.prefix)
                or name.startswith(settings.worker.app_id)]
        if mine:
            admin.delete_topics(mine)
    except KafkaError as exc:  # leftovers are harmless; say so and go on
        print(f"bench: could not delete topics {settings.topics.prefix}*: {exc}", file=sys.stderr)
    finally:
        admin.close()


def delete_redis_keys(settings: Settings) -> None:
    from core.redis import redis_client

    client = redis_client(settings.redis)
    keys = list(client.scan_iter(match=f"{settings.redis.key_prefix}:*", count=1000))
    for start in range(0, len(keys), 1000):
        client.delete(*keys[start:start + 1000])
    client.close()


def produce_training_samples(settings: Settings, encoded) -> None:
    """Send ``(key, value)`` records to ``training-samples`` and wait until the broker has them all."""
    from kafka import KafkaProducer

    from streams import training_samples

    producer = KafkaProducer(**kafka_python_options(settings.kafka), acks="all", linger_ms=20)
    topic = settings.topics.name(training_samples.TOPIC.name)
    try:
        for key, value in encoded:
            producer.send(topic, key=key, value=value)
        producer.flush()
    finally:
        producer.close()


class WorkerProcess(Worker):
    """A ``prerank worker`` child process (:class:`core.processes.Worker`) that benches check."""

    def check(self) -> None:
        """Raise :class:`BenchError` with the log tail if the worker has died."""
        if not self.alive():
            raise BenchError(f"worker {self.agents} (pid {self.pid}) died:\n{self.log_tail()}")


@contextmanager
def running_workers(settings: Settings, folder: Path, *specs: tuple[str, int],
                    extra_env: dict[str, str] | None = None) -> Iterator[list[WorkerProcess]]:
    """Start one worker per ``(agents, index)``; stop them all on exit, whatever happened."""
    workers: list[WorkerProcess] = []
    try:
        for agents, index in specs:
            workers.append(WorkerProcess(settings, agents, folder / f"worker-{index}.log", index, extra_env))
        yield workers
    finally:
        for worker in workers:
            worker.stop()


def wait_until(
    predicate: Callable[[], T], timeout_s: float, what: str, workers: Sequence[WorkerProcess] = (),
    interval_s: float = 0.05,
) -> T:
    """Poll ``predicate`` until it returns something truthy; :class:`BenchError` on timeout or a dead worker."""
    deadline = time.monotonic() + timeout_s
    while True:
        for worker in workers:
            worker.check()
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise BenchError(f"timed out after {timeout_s:.0f}s waiting for {what}")
        time.sleep(interval_s)


def summarize(values: Sequence[float], scale: float = 1.0, unit: str = "s",
              quantiles: Sequence[int] = (50, 95, 99)) -> dict[str, float]:
    """Percentiles (numpy's linear interpolation), mean and max of ``values * scale``.

    >>> summarize([1.0, 2.0, 3.0, 4.0, 5.0], quantiles=(50,))
    {'p50_s': 3.0, 'mean_s': 3.0, 'max_s': 5.0, 'n': 5}
    >>> summarize([], unit="ms")
    {'n': 0}
    """
    if len(values) == 0:
        return {"n": 0}
    scaled = np.asarray(values, dtype=float) * scale
    out = {f"p{q}_{unit}": float(np.percentile(scaled, q)) for q in quantiles}
    out[f"mean_{unit}"] = float(scaled.mean())
    out[f"max_{unit}"] = float(scaled.max())
    out["n"] = len(values)
    return out


def environment() -> dict[str, Any]:
    """Where a number was measured (to read it next to others)."""
    import platform

    import torch

    return {"python": platform.python_version(), "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(), "cpus": os.cpu_count(),
            "load_average_1m": os.getloadavg()[0]}  # other processes on the box skew every number


def emit(result: dict[str, Any], path: Path | None) -> None:
    """Print the result as JSON and write it to ``path`` when given."""
    text = json.dumps(result, indent=2)
    if path is not None:
        path.write_text(text + "\n")
    print(text)
