"""The Faust app factory and what every agent of one worker process shares.

Agents read and write raw bytes and decode with the project's codecs themselves, so a record
that does not validate becomes a ``dead-letters`` record with its reason instead of an
exception inside Faust's deserialiser.

**No exception escapes an agent or a timer.** Faust restarts an agent whose step raised (and
skips nothing: the stream resumes after the event) but treats an exception in a timer or a task
as a crash of the whole worker. So every agent step runs inside :meth:`Runtime.isolated`: an
exception there becomes a dead letter that names the record's topic, partition and offset, with a
reason from the closed set ``monitoring.metrics.DEAD_LETTER_REASONS`` (:func:`error_reason`), it
is counted (``prerank_agent_errors_total{agent}``) and logged in a bounded line, and the stream
moves on. Timers catch per partition (or per tick) and carry on. A dead letter that cannot be
sent (too large, broker refused) is sent again without the record's bytes; if that fails too it
is logged and counted (``prerank_dead_letter_failures_total``), and the agent still moves on.

**Closed labels, bounded logs.** A dead letter's metric label is never the error's text (a field
name is the sender's to choose): :func:`reason_class` maps the codec's error to an enumeration;
log lines carry at most :data:`LOG_TEXT_CHARS` characters of any error text (:func:`bounded`).
"""

from __future__ import annotations

import asyncio
import logging
import traceback
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import faust
from prometheus_client import CollectorRegistry
from pydantic import ValidationError

from agents.transport import FetchWaitApp
from core.kafka import faust_brokers, faust_credentials
from core.settings import Settings
from monitoring.metrics import DEAD_LETTER_REASONS
from streams import dead_letters
from streams.base import Codec, Record, check_key
from streams.dead_letters import DeadLetter
from streams.exceptions import RecordError
from streams.registry import TOPIC_MODULES

log = logging.getLogger(__name__)

LOG_TEXT_CHARS = 300
"""The most characters of an error's (or a record's) text a log line carries."""
TRACEBACK_FRAMES = 6


def create_faust_app(
    settings: Settings, app_id: str | None = None, web_port: int | None = None, web_enabled: bool = True,
) -> faust.App:
    worker = settings.worker
    worker.data_dir.mkdir(parents=True, exist_ok=True)
    # Faust's table views (/table/<name>/<key>/ returns a stored user profile) and its router
    # (the cluster's topology) are off unless configured: the worker's own pages (POST /score) stay.
    tables_web = worker.web_tables_enabled
    app = FetchWaitApp(
        app_id or worker.app_id,
        fetch_max_wait_ms=settings.kafka.fetch_max_wait_ms,
        broker=faust_brokers(settings.kafka),
        broker_credentials=faust_credentials(settings.kafka),
        store=worker.store,
        datadir=str(worker.data_dir),
        web_host=worker.web_host,
        web_bind=worker.web_host,  # Faust binds 0.0.0.0 unless told otherwise
        web_port=web_port or worker.web_port,
        web_enabled=web_enabled,
        web_in_thread=False,
        web_tables_enabled=tables_web,
        web_router_enabled=tables_web,
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
    if not hasattr(app.conf, "web_tables_enabled"):  # a Faust before 0.15 serves them regardless
        log.warning("this Faust has no web_tables_enabled setting: /table/<name>/<key>/ serves table rows")
    return app


def bounded(text: object, limit: int = LOG_TEXT_CHARS) -> str:
    """``text`` cut to ``limit`` characters, saying how long it was.

    >>> bounded("x" * 10, 4)
    'xxxx... (10 chars)'
    >>> bounded("short")
    'short'
    """
    text = str(text)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} chars)"


def frames(exc: BaseException) -> str:
    """The last :data:`TRACEBACK_FRAMES` frames of ``exc``'s traceback (where, not the message:
    log lines carry the message through :func:`bounded`)."""
    return "".join(traceback.format_tb(exc.__traceback__, limit=-TRACEBACK_FRAMES))


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

    async def check_user_key(self, record, event, agent: str) -> bool:
        """True when the event's Kafka key is the record's ``user_id`` (and its user snapshot, if
        it carries one, is of that user); otherwise a ``key_mismatch`` dead letter and False.

        Every user-keyed topic puts a user's records on one partition: a record keyed by another
        user lands where that user's history, profile and join live, and would be joined there."""
        user_id = record.user_id
        snapshot = getattr(record, "user", None)
        problem = check_key(event.key, user_id)  # a short fixed reason: no id echoed
        if problem is None and snapshot is not None and getattr(snapshot, "user_id", user_id) != user_id:
            problem = "user.user_id differs from user_id"
        if problem is None:
            return True
        message = event.message
        await self.dead_letter(
            RecordError(problem, topic=message.topic, partition=message.partition, offset=message.offset),
            event.key, event.value, agent, reason="key_mismatch",
        )
        return False

    async def dead_letter(self, error: RecordError, key, value, agent: str, reason: str | None = None) -> bool:
        """Write a dead letter for ``error`` (``reason``: its label, else :func:`reason_class`).

        Never raises: a letter that cannot be sent is sent again without the record's bytes, and
        one that still cannot is logged and counted. Returns whether a letter was sent."""
        label = reason if reason in DEAD_LETTER_REASONS else reason_class(error)
        log.warning("dead letter from %s (%s): %s", agent, label, bounded(error))
        key_bytes, value_bytes = _as_bytes(key), _as_bytes(value)
        for attempt in ("record", "reference"):
            try:
                if attempt == "record":
                    letter = DeadLetter.from_error(error, key_bytes, value_bytes, agent=agent)
                else:  # by reference only: topic, partition, offset and the reason
                    letter = DeadLetter.from_error(error, None, None, agent=agent)
                await self.topics["dead_letters"].send(
                    key=str(error.topic).encode(), value=dead_letters.CODEC.encode(letter)
                )
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the dead-letter path must not fail its agent
                log.warning("dead letter from %s for %s[%s]@%s not sent with the %s: %s", agent, bounded(error.topic, 80),
                            error.partition, error.offset, attempt, bounded(f"{type(exc).__name__}: {exc}"))
                continue
            if self.metrics is not None:
                self.metrics.count_dead_letter(str(error.topic), label)
            return True
        if self.metrics is not None:
            self.metrics.count_dead_letter_failure(agent)
        return False

    async def survive(self, agent: str, exc: BaseException, *, topic: str = "?", partition: int = -1,
                      offset: int = -1, key=None, value=None, what: str = "record") -> None:
        """What :meth:`isolated` does with an exception: count, log (bounded) and dead-letter."""
        if self.metrics is not None:
            self.metrics.count_agent_error(agent)
        label = error_reason(exc)
        log.error("%s: %s %s[%s]@%s failed (%s): %s\n%s", agent, what, bounded(topic, 80), partition, offset, label,
                  bounded(f"{type(exc).__name__}: {exc}"), frames(exc))
        if isinstance(exc, RecordError) and exc.topic == topic:
            error = exc
        else:
            error = RecordError(f"{what} failed in {agent}: {type(exc).__name__}: {bounded(exc, 400)}",
                                topic=topic, partition=partition, offset=offset)
        await self.dead_letter(error, key, value, agent, reason=label)

    @asynccontextmanager
    async def isolated(self, agent: str, event=None, **where):
        """Run one agent step; any exception (but cancellation) becomes a dead letter of the
        event's record (or of ``where``: ``topic``, ``partition``, ``offset``, ``key``, ``value``)
        and the step ends there.

        >>> import asyncio
        >>> runtime = Runtime(settings=None, app=None, registry=None)
        >>> async def step():
        ...     async with runtime.isolated("joiner", topic="t", partition=1, offset=7):
        ...         raise ZeroDivisionError("boom")
        ...     return "moved on"
        >>> asyncio.run(step())  # the dead-letter topic is absent here: the letter is logged
        'moved on'
        """
        try:
            yield
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - one record must not stop its agent or its worker
            if event is not None:
                message = event.message
                where = {"topic": message.topic, "partition": message.partition, "offset": message.offset,
                         "key": event.key, "value": event.value, **where}
            await self.survive(agent, exc, **where)


#: Codec error texts and the reason each is counted under (first match wins).
_REASON_PREFIXES = (
    ("empty value", "tombstone"),
    ("record of ", "too_large"),
    ("invalid JSON", "invalid_json"),
    ("invalid MSGPACK", "invalid_msgpack"),
    ("schema version", "version"),
    ("expected an object", "schema"),
)
_KIND_REASONS = {"tombstone": "tombstone", "too_large": "too_large", "not_an_object": "schema",
                 "schema_version": "version"}


def reason_class(error: RecordError | str) -> str:
    """The dead-letter reason of a codec error, one of ``DEAD_LETTER_REASONS`` (never its text).

    Reads the error's ``kind`` where it is specific, else the text's prefix; a pydantic message
    ``"<field>: <what is wrong>"`` is ``unknown_field`` for a field the schema lacks, ``key_mismatch``
    for a snapshot of another user, ``schema`` otherwise.

    >>> reason_class("invalid JSON: Expecting value: line 1 column 1 (char 0)")
    'invalid_json'
    >>> reason_class("user_id: Field required")
    'schema'
    >>> reason_class("x" * 10_000 + ": Extra inputs are not permitted")
    'unknown_field'
    >>> reason_class("record of 4194305 bytes exceeds 4194304"), reason_class("schema version 2, expected 1")
    ('too_large', 'version')
    >>> reason_class("user: Value error, user.user_id differs from user_id")
    'key_mismatch'
    """
    text = error if isinstance(error, str) else error.reason
    kind = getattr(error, "kind", None)
    if kind in _KIND_REASONS:
        return _KIND_REASONS[kind]
    for prefix, reason in _REASON_PREFIXES:
        if text.startswith(prefix):
            return reason
    if "Extra inputs are not permitted" in text:
        return "unknown_field"
    if "differs from user_id" in text:
        return "key_mismatch"
    return "schema"


def error_reason(exc: BaseException) -> str:
    """The dead-letter reason of an exception an agent step raised (see ``DEAD_LETTER_REASONS``).

    >>> error_reason(ZeroDivisionError()), error_reason(RecordError("empty value (tombstone)"))
    ('internal', 'tombstone')
    """
    if isinstance(exc, RecordError):
        return reason_class(exc)
    names = {type(e).__name__ for e in _causes(exc)}
    texts = " ".join(str(e) for e in _causes(exc))
    if names & {"RecordTooLarge", "MessageSizeTooLargeError", "RecordTooLargeError"} or "too large" in texts.lower():
        return "output_too_large"
    if any(isinstance(e, ValidationError) for e in _causes(exc)):
        return "output_invalid"
    if any(type(e).__module__.startswith(("aiokafka", "kafka", "faust")) for e in _causes(exc)):
        return "send_failed"
    return "internal"


def _causes(exc: BaseException):
    seen = 0
    while exc is not None and seen < 8:
        yield exc
        exc = exc.__cause__ or exc.__context__
        seen += 1


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
