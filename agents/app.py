"""The Faust app factory and what every agent of one worker process shares.

Agents read and write raw bytes and decode with the project's codecs themselves, so a record
that does not validate becomes a ``dead-letters`` record with its reason instead of an
exception inside Faust's deserialiser.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import faust
from prometheus_client import CollectorRegistry

from core.kafka import faust_brokers, faust_credentials
from core.settings import Settings
from streams import dead_letters
from streams.base import Codec, Record
from streams.dead_letters import DeadLetter
from streams.exceptions import RecordError
from streams.registry import TOPIC_MODULES

log = logging.getLogger(__name__)


def create_faust_app(
    settings: Settings, app_id: str | None = None, web_port: int | None = None, web_enabled: bool = True,
) -> faust.App:
    worker = settings.worker
    worker.data_dir.mkdir(parents=True, exist_ok=True)
    return faust.App(
        app_id or worker.app_id,
        broker=faust_brokers(settings.kafka),
        broker_credentials=faust_credentials(settings.kafka),
        store=worker.store,
        datadir=str(worker.data_dir),
        web_host=worker.web_host,
        web_bind=worker.web_host,  # Faust binds 0.0.0.0 unless told otherwise
        web_port=web_port or worker.web_port,
        web_enabled=web_enabled,
        web_in_thread=False,
        topic_partitions=settings.topics.partitions,
        topic_replication_factor=settings.topics.replication_factor,
        # Short timeouts: a worker that dies hands its partitions over in seconds, not minutes.
        broker_session_timeout=10.0,
        broker_heartbeat_interval=1.0,
        broker_rebalance_timeout=20.0,
        consumer_auto_offset_reset="earliest",
        producer_max_request_size=8 * 1024 * 1024,
        stream_wait_empty=False,
        topic_allow_declare=True,
    )


@dataclass
class Runtime:
    """One worker's Faust app, its raw topics, its metrics registry and the dead-letter path."""

    settings: Settings
    app: faust.App
    registry: CollectorRegistry
    topics: dict[str, faust.TopicT] = field(default_factory=dict)
    metrics: object | None = None  # monitoring.metrics.PrerankMetrics, set by the worker

    def topic(self, key: str) -> faust.TopicT:
        return self.topics[key]

    def topic_name(self, key: str) -> str:
        return self.settings.topics.name(TOPIC_MODULES[key].TOPIC.name)

    async def decode(self, codec: Codec, event, agent: str) -> Record | None:
        """The event's record, or None after writing a dead letter with the reason."""
        message = event.message
        try:
            return codec.decode(
                event.value, topic=message.topic, partition=message.partition, offset=message.offset
            )
        except RecordError as error:
            await self.dead_letter(error, event.key, event.value, agent)
            return None

    async def dead_letter(self, error: RecordError, key, value, agent: str) -> None:
        letter = DeadLetter.from_error(error, _as_bytes(key), _as_bytes(value), agent=agent)
        log.warning("dead letter from %s: %s", agent, error)
        if self.metrics is not None:
            self.metrics.dead_letters_total.labels(topic=error.topic, reason=reason_class(error.reason)).inc()
        await self.topics["dead_letters"].send(
            key=error.topic.encode(), value=dead_letters.CODEC.encode(letter)
        )


def reason_class(reason: str) -> str:
    """A low-cardinality label for a dead-letter reason: its first clause, ids stripped.

    >>> reason_class("invalid JSON: Expecting value: line 1 column 1 (char 0)")
    'invalid JSON'
    >>> reason_class("user_id: Field required")
    'user_id'
    """
    head = reason.split(":", 1)[0].strip()
    return head[:60] or "unknown"


def _as_bytes(value) -> bytes | None:
    if value is None or isinstance(value, bytes):
        return value
    return str(value).encode()


def create_runtime(
    settings: Settings,
    registry: CollectorRegistry | None = None,
    app_id: str | None = None,
    web_port: int | None = None,
    web_enabled: bool = True,
) -> Runtime:
    app = create_faust_app(settings, app_id=app_id, web_port=web_port, web_enabled=web_enabled)
    runtime = Runtime(settings=settings, app=app, registry=registry or CollectorRegistry())
    for key, module in TOPIC_MODULES.items():
        runtime.topics[key] = app.topic(
            settings.topics.name(module.TOPIC.name),
            key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw",
        )
    return runtime
