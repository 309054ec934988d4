"""Kafka over TLS: every client of the funnel, built only through :mod:`core.kafka` from
``KafkaSettings(security_protocol="SSL", ssl_cafile=...)``, works against a broker's SSL listener,
and a client that trusts another CA is refused without hanging.

The broker is the stack's own :class:`prerank.stack.Kafka` with its SSL listener switched on
(``stack.kafka_ssl_*``), on free loopback ports under a temp folder of its own, with a throwaway
CA, a PKCS12 keystore and truststore made by ``openssl``/``keytool`` (:mod:`tests.reliability.tls`).
It asks for client certificates (``ssl.client.auth=requested``), so a client's certificate is
verified when one is presented. Clients connect to the SSL port only. The broker, the Redis and
the worker are stopped by their own pids and the folder is removed at the end; the shared stack
is not touched.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import tempfile
import threading
import time
import traceback
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import pytest
from kafka import KafkaConsumer, KafkaProducer
from kafka.admin import KafkaAdminClient, NewTopic
from kafka.errors import KafkaError

from core.kafka import aiokafka_options, kafka_python_options
from core.ports import free_port
from core.settings import Settings
from prerank.exceptions import ServiceStartError
from prerank.stack import Kafka
from streams.registry import ALL_TOPICS, create_topics
from tests.reliability.harness import (
    Sender,
    TopicReader,
    Worker,
    checkpoint_counters,
    derive,
    fresh_settings,
    private_kafka,
    private_redis,
    publish_model,
    response_ids,
    score_request,
    wait_for,
)
from tests.reliability.tls import BrokerTls, Pair, issue, make_broker_tls, make_ca

START_TIMEOUT_S = 180.0  # broker start, worker start and first answers: generous, the box is shared
REFUSAL_BOOTSTRAP_MS = 5000  # how long a refused kafka-python client tries before it raises
HANG_GUARD_S = 90.0  # a refused client that has not raised by then hangs: the test fails


@dataclass(frozen=True)
class TlsBroker:
    settings: Settings  # clients: SSL to the broker's SSL port, trusting its CA
    tls: BrokerTls
    folder: Path
    start_s: float
    topics: dict[str, str]  # what streams.registry.create_topics did over TLS


@pytest.fixture(scope="module")
def tls_broker(base_settings):
    folder = Path(tempfile.mkdtemp(prefix="prerank-kafka-tls-"))
    with ExitStack() as cleanup:
        cleanup.callback(shutil.rmtree, folder, True)  # registered first: runs after every stop
        tls = make_broker_tls(folder / "tls")
        ssl_port = free_port()
        _, settings = private_kafka(fresh_settings(base_settings, folder), folder / "stack",
                                    security_protocol="SSL", ssl_cafile=tls.ca.cert)
        settings = derive(
            settings, kafka={"bootstrap_servers": f"127.0.0.1:{ssl_port}"},
            stack={"kafka_ssl_port": ssl_port, "kafka_ssl_keystore": tls.keystore, "kafka_ssl_password": tls.password,
                   "kafka_ssl_truststore": tls.truststore, "kafka_ssl_client_auth": "requested"},
        )
        broker = Kafka("kafka", settings)
        broker.preflight()
        broker.fetch()
        broker.start()
        cleanup.callback(broker.stop)
        try:
            # Ready means a kafka-python admin client listed topics over TLS (Kafka.ready).
            start_s = broker.wait_ready(START_TIMEOUT_S)
        except ServiceStartError as error:
            raise AssertionError(f"{error}\n{_tail(broker.log_file)}") from None
        topics = create_topics(kafka_python_options(settings.kafka), settings.topics)
        yield TlsBroker(settings, tls, folder, start_s, topics)


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return f"(no {path})"


def _raises_in_time(call, timeout_s: float = HANG_GUARD_S) -> tuple[BaseException | None, float]:
    """Run ``call`` in a daemon thread; (what it raised or None, seconds). A hang fails the test."""
    outcome: dict = {}

    def run() -> None:
        try:
            call()
        except BaseException as error:  # noqa: BLE001 - handed to the test
            outcome["error"] = error

    started = time.monotonic()
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout_s)
    assert not thread.is_alive(), f"the client hung for {timeout_s:.0f}s instead of being refused"
    return outcome.get("error"), time.monotonic() - started


def _list_topics(kafka, bootstrap_ms: int = REFUSAL_BOOTSTRAP_MS) -> None:
    admin = KafkaAdminClient(**kafka_python_options(kafka), request_timeout_ms=30_000,
                             bootstrap_timeout_ms=bootstrap_ms, client_id="prerank-tls-test")
    try:
        admin.list_topics()
    finally:
        admin.close()


async def _aiokafka_topics(kafka) -> set[str]:
    """The topics an aiokafka consumer built like the trainer's sees (it connects, or raises)."""
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(**aiokafka_options(kafka), request_timeout_ms=30_000)
    try:
        await consumer.start()
        # A real request before stop: aiokafka 0.14's stop() right after start() can raise
        # CancelledError from a group-coordinator task that never ran (nothing to do with TLS).
        return await consumer.topics()
    finally:
        await consumer.stop()


def _with_client_cert(settings: Settings, pair: Pair) -> Settings:
    return derive(settings, kafka={"ssl_certfile": pair.cert, "ssl_keyfile": pair.key})


# --- kafka-python ---------------------------------------------------------------------------------
@pytest.mark.integration
def test_kafka_python_admin_producer_and_consumer_over_tls(tls_broker, measure):
    settings = tls_broker.settings
    measure("broker_start_s", round(tls_broker.start_s, 1))
    options = kafka_python_options(settings.kafka)
    assert options["security_protocol"] == "SSL" and options["ssl_cafile"] == str(tls_broker.tls.ca.cert)
    admin = KafkaAdminClient(**options, client_id="prerank-tls-test")
    topic = settings.topics.name("tls-round-trip")
    try:
        expected = {settings.topics.name(spec.name) for spec in ALL_TOPICS}
        assert tls_broker.topics == dict.fromkeys(expected, "created")
        # A topic just created reaches the broker's metadata a moment later.
        wait_for(lambda: expected <= set(admin.list_topics()), START_TIMEOUT_S, "the created topics listed")
        admin.create_topics([NewTopic(topic, num_partitions=2, replication_factor=1)])
    finally:
        admin.close()
    sent = {f"k{i}".encode(): f"value {i} over TLS".encode() for i in range(50)}
    producer = KafkaProducer(**options, acks="all", linger_ms=5)
    try:
        metadata = [producer.send(topic, key=key, value=value) for key, value in sent.items()]
        producer.flush()
        assert all(m.get(timeout=30).offset >= 0 for m in metadata)
    finally:
        producer.close()
    consumer = KafkaConsumer(topic, **options, auto_offset_reset="earliest", enable_auto_commit=False,
                             group_id=None, consumer_timeout_ms=500)
    received: dict[bytes, bytes] = {}
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while len(received) < len(sent) and time.monotonic() < deadline:
            received.update((m.key, m.value) for m in consumer)
    finally:
        consumer.close()
    measure("kafka_python_round_trip_records", len(received))
    assert received == sent


# --- aiokafka (the trainer's consumer options) -----------------------------------------------------
@pytest.mark.integration
async def test_aiokafka_producer_and_consumer_over_tls(tls_broker, measure):
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

    settings = tls_broker.settings
    options = aiokafka_options(settings.kafka)
    assert options["security_protocol"] == "SSL" and options["ssl_context"] is not None
    topic = settings.topics.name("tls-aiokafka")
    admin = KafkaAdminClient(**kafka_python_options(settings.kafka), client_id="prerank-tls-test")
    try:
        admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])
    finally:
        admin.close()
    sent = [f"aiokafka record {i}".encode() for i in range(30)]
    producer = AIOKafkaProducer(**options, acks="all")
    await asyncio.wait_for(producer.start(), START_TIMEOUT_S)
    try:
        for value in sent:
            await producer.send(topic, value)
        await asyncio.wait_for(producer.flush(), START_TIMEOUT_S)
    finally:
        await producer.stop()
    # As the trainer reads: assigned partitions, no group commits, from the beginning.
    consumer = AIOKafkaConsumer(**options, enable_auto_commit=False, auto_offset_reset="earliest")
    await asyncio.wait_for(consumer.start(), START_TIMEOUT_S)
    received: list[bytes] = []
    try:
        consumer.assign([TopicPartition(topic, 0)])
        deadline = time.monotonic() + START_TIMEOUT_S
        while len(received) < len(sent) and time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=500)
            received += [record.value for records in batches.values() for record in records]
    finally:
        await consumer.stop()
    measure("aiokafka_round_trip_records", len(received))
    assert received == sent


# --- a Faust worker: the scorer (Faust consumer and producer) and the trainer (aiokafka) ------------
@pytest.mark.integration
def test_faust_scorer_and_trainer_worker_over_tls(tls_broker, measure, cleanup):
    from funnel.convert import record_from_sample
    from streams.training_samples import CODEC as SAMPLES
    from tests.integration.test_pipeline import _samples

    redis, settings = private_redis(tls_broker.settings, tls_broker.folder / "stack")
    redis.start()
    cleanup.callback(redis.stop)
    redis.wait_ready(60)
    settings = derive(settings, worker={"checkpoint_interval_s": 0.5})  # folders: fresh_settings's, in the temp folder
    version = publish_model(settings)
    # The worker reads PRERANK_KAFKA__SECURITY_PROTOCOL=SSL and PRERANK_KAFKA__SSL_CAFILE from its
    # environment (core.processes.settings_env) and builds Faust's and the trainer's clients from them.
    started = time.monotonic()
    worker = Worker(settings, "scorer,trainer", tls_broker.folder / "worker.log")
    cleanup.callback(worker.stop)
    sender = Sender(settings)
    cleanup.callback(sender.close)
    reader = TopicReader(settings, "score_responses")
    cleanup.callback(reader.close)
    sender.request(score_request("over-tls", "u1"))
    for record in (record_from_sample(s) for s in _samples(10)):
        sender.send("training_samples", record.user_id.encode(), SAMPLES.encode(record))
    assert sender.failed_sends() == []
    answered = reader.until(lambda got: "over-tls" in response_ids(got), START_TIMEOUT_S, [worker])
    assert "over-tls" in response_ids(answered), f"no answer over TLS:\n{worker.log_tail()}"
    measure("first_answer_s", round(time.monotonic() - started, 1))
    wait_for(lambda: checkpoint_counters(settings)["records"] >= 10, START_TIMEOUT_S,
             "the trainer learning over TLS", [worker])
    measure("trainer_learned_s", round(time.monotonic() - started, 1))
    from streams import score_responses

    answer = next(r for r in map(score_responses.CODEC.decode, (m.value for m in answered)) if r.request_id == "over-tls")
    # The trainer may have published a newer version by then: at least the one published here.
    assert answer.error is None and answer.model_version >= version and len(answer.items) == 10
    assert checkpoint_counters(settings)["records"] == 10
    assert worker.stop() is not None
    log = worker.log_path.read_text(errors="replace")
    assert "CERTIFICATE_VERIFY_FAILED" not in log and tls_broker.tls.password not in log


# --- refusals ---------------------------------------------------------------------------------------
@pytest.mark.integration
def test_a_client_trusting_another_ca_is_refused_in_time(tls_broker, measure, caplog):
    other = make_ca(tls_broker.folder / "other", "other-ca")
    wrong = derive(tls_broker.settings, kafka={"ssl_cafile": other.cert})
    with caplog.at_level(logging.WARNING, logger="kafka"):
        error, seconds = _raises_in_time(lambda: _list_topics(wrong.kafka))
    measure("wrong_ca_error", f"{type(error).__name__}: {str(error)[:120]}")
    measure("wrong_ca_error_s", round(seconds, 1))
    assert isinstance(error, KafkaError), error
    # kafka-python raises only "Unable to bootstrap"; the cause is in its log.
    assert "CERTIFICATE_VERIFY_FAILED" in caplog.text

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="aiokafka"):
        error, seconds = _raises_in_time(lambda: asyncio.run(_aiokafka_topics(wrong.kafka)))
    measure("wrong_ca_aiokafka_error", f"{type(error).__name__}: {str(error)[:120]}")
    measure("wrong_ca_aiokafka_error_s", round(seconds, 1))
    from aiokafka.errors import KafkaConnectionError

    assert isinstance(error, KafkaConnectionError), error
    assert "CERTIFICATE_VERIFY_FAILED" in caplog.text


@pytest.mark.integration
def test_a_plaintext_client_on_the_tls_port_is_refused_in_time(tls_broker, measure):
    plain = derive(tls_broker.settings, kafka={"security_protocol": "PLAINTEXT", "ssl_cafile": None})
    error, seconds = _raises_in_time(lambda: _list_topics(plain.kafka))
    measure("plaintext_error_s", round(seconds, 1))
    assert isinstance(error, KafkaError), error


@pytest.mark.integration
def test_client_certificates_are_verified_against_the_broker_truststore(tls_broker, measure, caplog):
    """The broker asks for client certificates: one from its CA is accepted, one from another CA refused."""
    folder = tls_broker.folder / "clients"
    folder.mkdir(exist_ok=True)
    good = issue(tls_broker.tls.ca, folder, "client", usage="clientAuth")
    stranger = issue(make_ca(folder, "stranger-ca"), folder, "stranger", usage="clientAuth")
    trusted = _with_client_cert(tls_broker.settings, good)
    error, _ = _raises_in_time(lambda: _list_topics(trusted.kafka, bootstrap_ms=60_000), START_TIMEOUT_S)
    assert error is None, error

    error, _ = _raises_in_time(lambda: asyncio.run(_aiokafka_topics(trusted.kafka)), START_TIMEOUT_S)
    assert error is None, "".join(traceback.format_exception(error))
    untrusted = _with_client_cert(tls_broker.settings, stranger)
    with caplog.at_level(logging.WARNING, logger="kafka"):
        error, seconds = _raises_in_time(lambda: _list_topics(untrusted.kafka))
    measure("untrusted_client_cert_error_s", round(seconds, 1))
    assert isinstance(error, KafkaError), error
    assert "ALERT_CERTIFICATE_UNKNOWN" in caplog.text  # the broker's verdict on the client's certificate
    error, _ = _raises_in_time(lambda: asyncio.run(_aiokafka_topics(untrusted.kafka)))
    from aiokafka.errors import KafkaConnectionError

    assert isinstance(error, KafkaConnectionError), error
