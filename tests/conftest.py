"""Shared fixtures. Integration tests need the local stack; in CI a missing service is an error.

``PRERANK_REQUIRE_SERVICES=1`` (set by ``.ci/run``) turns every "service not reachable" skip
into a failure, so a broken stack can never pass as a green run.
"""

from __future__ import annotations

import os
import uuid

import pytest

from core.kafka import kafka_python_options
from core.ports import (
    free_port,  # noqa: F401  (re-exported for tests)
    port_open,
)
from core.settings import Settings, load_settings
from prerank.cli import SAMPLED_FTRL_L1

REQUIRE_SERVICES = os.environ.get("PRERANK_REQUIRE_SERVICES", "") in ("1", "true", "yes")


def need_service(name: str, host: str, port: int) -> None:
    if port_open(host, port):
        return
    message = f"{name} is not reachable on {host}:{port} (start it with `prerank stack up`)"
    if REQUIRE_SERVICES:
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="session")
def base_settings() -> Settings:
    return load_settings()


@pytest.fixture()
def stack_settings(base_settings: Settings, tmp_path):
    """Settings for one integration test: the running stack, fresh topic names, own folders."""
    need_service("Kafka", base_settings.stack.host, base_settings.stack.kafka_port)
    need_service("Redis", base_settings.stack.host, base_settings.stack.redis_port)
    run = uuid.uuid4().hex[:8]
    data = base_settings.model_dump()
    data["topics"] = {**data["topics"], "prefix": f"t{run}.", "partitions": 2}
    data["redis"] = {**data["redis"], "key_prefix": f"t{run}"}
    data["worker"] = {
        **data["worker"], "app_id": f"prerank-t{run}", "data_dir": tmp_path / "faust",
        "checkpoint_dir": tmp_path / "checkpoints", "web_port": free_port(), "metrics_port": free_port(),
    }
    # The tests stream a few hundred requests: the trainer's l1 for a small stream, not the
    # full-volume default (models.ftrl.FTRLConfig explains the difference).
    data["model"] = {**data["model"], "ftrl_l1": SAMPLED_FTRL_L1}
    settings = Settings(**data)
    from streams.registry import create_topics

    create_topics(kafka_python_options(settings.kafka), settings.topics)
    yield settings
    from streams.registry import delete_topics

    # Topics of a finished test go, so a long-lived local broker does not pile up partitions.
    delete_topics(kafka_python_options(settings.kafka), (f"t{run}.", f"prerank-t{run}"))


