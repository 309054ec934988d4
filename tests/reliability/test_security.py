"""Security: credentials plumbed through settings to every client, clear errors for wrong ones,
secrets never logged, model weights loaded without code execution.

Exercised on private services: a Redis with ``requirepass`` and an ACL user, a Redis speaking
TLS only, and a Kafka broker with a SASL/PLAIN listener.
"""

from __future__ import annotations

import ast
import pickle
import subprocess
import time
from pathlib import Path

import pytest
import redis

from core.kafka import kafka_python_options
from core.processes import REPO
from core.redis import redis_client
from prerank.stack import Kafka, Redis
from tests.reliability.harness import (
    Sender,
    TopicReader,
    Worker,
    checkpoint_counters,
    create_topics,
    derive,
    fresh_settings,
    private_kafka,
    private_redis,
    publish_model,
    redis_store,
    response_ids,
    score_request,
    wait_for,
)

PASSWORD = "s3cret-Pa55word-never-logged"
SASL_PASSWORD = "sasl-Pa55word-never-logged"
PRODUCT = ("agents", "streams", "models", "prerank", "monitoring", "replay")


def _client(settings):
    return redis_client(settings.redis)


@pytest.fixture()
def locked_redis(stack_settings, tmp_path, cleanup):
    service, settings = private_redis(stack_settings, tmp_path / "stack", password=PASSWORD)
    service.start()
    cleanup.callback(service.stop)
    service.wait_ready(30)
    return settings


# --- Redis: password, ACL user, TLS ---------------------------------------------------------------
@pytest.mark.integration
def test_redis_password_from_settings_and_a_clear_error_when_wrong(locked_redis, measure):
    assert _client(locked_redis).ping()
    wrong = derive(locked_redis, redis={"password": "not-the-password"})
    missing = derive(locked_redis, redis={"password": None})
    with pytest.raises(redis.AuthenticationError, match="invalid username-password pair") as wrong_error:
        _client(wrong).ping()
    with pytest.raises(redis.AuthenticationError, match="Authentication required|must be called with the client already authenticated"):
        _client(missing).ping()
    measure("wrong_password_error", str(wrong_error.value))
    assert "not-the-password" not in str(wrong_error.value)
    assert PASSWORD not in repr(locked_redis) and PASSWORD not in locked_redis.model_dump_json()


@pytest.mark.integration
def test_redis_acl_user_reaches_only_its_key_prefix(locked_redis, measure):
    admin = _client(locked_redis)
    prefix = locked_redis.redis.key_prefix
    admin.execute_command("ACL", "SETUSER", "prerank", "on", ">user-pass", f"~{prefix}:*",
                          "+@read", "+@write", "+@connection", "+@transaction", "-@dangerous")
    user = derive(locked_redis, redis={"username": "prerank", "password": "user-pass"})
    version = publish_model(user)  # the publisher's whole write path under the ACL
    assert redis_store(user).current_version() == version
    with pytest.raises(redis.exceptions.NoPermissionError):
        _client(user).set("someone-else:key", b"x")
    with pytest.raises(redis.exceptions.NoPermissionError):
        _client(user).flushall()
    measure("acl_denied_outside_prefix", 1)


class TlsRedis(Redis):
    """A Redis that accepts TLS connections only (needs ``tls/`` with ca, cert and key)."""

    def command(self) -> list[str]:
        tls = self.settings.redis.tls_ca_certs.parent
        command = super().command()
        port = command.index("--port")
        return command[:port] + ["--port", "0", "--tls-port", str(self.port), "--tls-cert-file",
                                 str(tls / "server.crt"), "--tls-key-file", str(tls / "server.key"),
                                 "--tls-ca-cert-file", str(tls / "ca.crt"), "--tls-auth-clients", "no"] + command[port + 2:]


def make_certificates(folder: Path) -> Path:
    """A CA and a server certificate for 127.0.0.1 (openssl); returns the CA file."""
    folder.mkdir(parents=True, exist_ok=True)
    run = lambda *args: subprocess.run(["openssl", *args], cwd=folder, check=True, capture_output=True)  # noqa: E731
    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=test-ca",
        "-keyout", "ca.key", "-out", "ca.crt")
    run("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1", "-keyout", "server.key", "-out", "server.csr")
    (folder / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    run("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial", "-days", "1",
        "-extfile", "san.ext", "-out", "server.crt")
    return folder / "ca.crt"


@pytest.fixture()
def tls_redis(stack_settings, tmp_path, cleanup):
    ca = make_certificates(tmp_path / "tls")
    plain, settings = private_redis(stack_settings, tmp_path / "stack")
    settings = derive(settings, redis={"tls": True, "tls_ca_certs": ca})
    service = TlsRedis("redis", settings)
    service.start()
    cleanup.callback(service.stop)
    service.wait_ready(30)
    return settings


@pytest.mark.integration
def test_local_redis_speaks_tls_with_the_ca_and_refuses_without_it(tls_redis, measure):
    url, ca = tls_redis.redis.url, str(tls_redis.redis.tls_ca_certs)
    secure = redis.Redis.from_url(url, connection_class=redis.SSLConnection, ssl_ca_certs=ca, socket_timeout=2)
    assert secure.ping()
    untrusted = redis.Redis.from_url(url, connection_class=redis.SSLConnection, socket_timeout=2)
    with pytest.raises(redis.ConnectionError, match="certificate verify failed"):
        untrusted.ping()
    with pytest.raises(redis.ConnectionError):
        redis.Redis.from_url(url, socket_timeout=2).ping()  # plaintext is refused
    measure("tls_ping", 1)


@pytest.mark.integration
def test_redis_tls_settings_reach_the_client(tls_redis):
    assert _client(tls_redis).ping()


# --- a worker with a password-protected Redis -------------------------------------------------------
def _scorer(settings, tmp_path, cleanup):
    """A scorer worker and ``ask(request_id)`` -> its response."""
    from streams import score_responses

    worker = Worker(settings, "scorer", tmp_path / "scorer.log")
    cleanup.callback(worker.stop)
    reader = TopicReader(settings, "score_responses")
    cleanup.callback(reader.close)
    sender = Sender(settings)
    cleanup.callback(sender.close)

    def ask(request_id: str):
        sender.request(score_request(request_id, "u1"))
        sender.flush()
        reader.until(lambda got: request_id in response_ids(got), 90, [worker])
        return next(r for r in map(score_responses.CODEC.decode, (m.value for m in reader.messages))
                    if r.request_id == request_id)

    return worker, ask


@pytest.mark.integration
def test_worker_uses_the_redis_password_and_never_logs_it(locked_redis, tmp_path, measure, cleanup):
    version = publish_model(locked_redis)
    worker, ask = _scorer(locked_redis, tmp_path, cleanup)
    answer = ask("with-password")
    worker.stop()
    log = worker.log_path.read_text(errors="replace")
    measure("password_in_log", int(PASSWORD in log))
    assert answer.error is None and not answer.degraded and answer.model_version == version
    assert PASSWORD not in log


@pytest.mark.integration
def test_scorer_keeps_serving_when_a_corrupt_model_version_is_published(stack_settings, tmp_path, measure, cleanup):
    version = publish_model(stack_settings)
    worker, ask = _scorer(stack_settings, tmp_path, cleanup)
    assert ask("before").model_version == version
    store = redis_store(stack_settings)
    store.publish(version + 1, pickle.dumps({"not": "safetensors"}), [], _empty_vectors(), {"created_at_ms": 1}, 600)
    # The scorer has seen (and refused) the corrupt version before it is asked again.
    wait_for(lambda: f"model version {version + 1} rejected" in worker.log_path.read_text(errors="replace"),
             60, "the scorer to reject the corrupt version", [worker])
    answer = ask("after-corrupt-version")
    measure("served_version_after_corrupt_publish", answer.model_version)
    assert answer.error is None and answer.model_version == version and worker.alive()


def _empty_vectors():
    import numpy as np

    return np.zeros((0, 16), dtype=np.float32)


# --- model files ----------------------------------------------------------------------------------
def test_product_code_never_unpickles():
    offenders = []
    for package in PRODUCT:
        for path in (REPO / package).rglob("*.py"):
            tree = ast.parse(path.read_text(), filename=str(path))
            for node in ast.walk(tree):
                if isinstance(node, (ast.Import, ast.ImportFrom)):
                    names = [alias.name for alias in node.names] + [getattr(node, "module", None) or ""]
                    if any(name.split(".")[0] in ("pickle", "dill", "cloudpickle", "joblib") for name in names):
                        offenders.append(f"{path}:{node.lineno} imports a pickle library")
                if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "load"
                        and getattr(node.func.value, "id", None) == "torch"
                        and not any(k.arg == "weights_only" and getattr(k.value, "value", None) is True
                                    for k in node.keywords)):
                    offenders.append(f"{path}:{node.lineno} torch.load without weights_only=True")
    assert offenders == []


class _Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "code ran"))


def test_a_pickle_posing_as_model_weights_is_rejected_without_running(tmp_path):
    from models.exceptions import ExportError
    from models.learner import StudentLearner
    from models.served import ServedStudent

    marker = tmp_path / "pwned"
    payload = pickle.dumps(_Exploit(marker))
    with pytest.raises(ExportError):
        ServedStudent.from_bytes(payload)
    (tmp_path / "student.safetensors").write_bytes(payload)
    with pytest.raises(ExportError):
        StudentLearner.load(tmp_path / "student.safetensors")
    assert not marker.exists()


# --- Kafka with SASL ------------------------------------------------------------------------------
class SaslKafka(Kafka):
    """The stack's broker with its client listener switched to SASL_PLAINTEXT (PLAIN)."""

    def properties(self) -> str:
        kafka, stack = self.settings.kafka, self.settings.stack
        client = f"SASL_PLAINTEXT://{stack.host}:{stack.kafka_port}"
        replaced = (super().properties()
                    .replace(f"PLAINTEXT://{stack.host}:{stack.kafka_port}", client)
                    .replace("PLAINTEXT:PLAINTEXT", "SASL_PLAINTEXT:SASL_PLAINTEXT"))
        password = kafka.sasl_password.get_secret_value()
        return replaced + "\n".join([
            "inter.broker.listener.name=SASL_PLAINTEXT",
            "sasl.enabled.mechanisms=PLAIN",
            "sasl.mechanism.inter.broker.protocol=PLAIN",
            "listener.name.sasl_plaintext.plain.sasl.jaas.config="
            "org.apache.kafka.common.security.plain.PlainLoginModule required "
            f'username="{kafka.sasl_username}" password="{password}" user_{kafka.sasl_username}="{password}";',
            "",
        ])


@pytest.mark.integration
def test_kafka_sasl_from_settings_reaches_every_client_and_a_wrong_password_is_refused(
        stack_settings, tmp_path, measure, cleanup):
    from kafka.admin import KafkaAdminClient
    from kafka.errors import KafkaError

    from funnel.convert import record_from_sample
    from streams.training_samples import CODEC as SAMPLES
    from tests.integration.test_pipeline import _samples

    base = fresh_settings(stack_settings, tmp_path)
    broker, settings = private_kafka(base, tmp_path / "stack", service=SaslKafka, security_protocol="SASL_PLAINTEXT",
                                     sasl_mechanism="PLAIN", sasl_username="prerank", sasl_password=SASL_PASSWORD)
    broker.start()
    cleanup.callback(broker.stop)
    measure("broker_start_s", round(broker.wait_ready(120), 1))
    create_topics(settings)
    publish_model(settings)
    worker = Worker(settings, "scorer,trainer", tmp_path / "worker.log")
    cleanup.callback(worker.stop)
    sender = Sender(settings)
    cleanup.callback(sender.close)
    sender.request(score_request("over-sasl", "u1"))
    for record in (record_from_sample(s) for s in _samples(10)):
        sender.send("training_samples", record.user_id.encode(), SAMPLES.encode(record))
    sender.flush()
    reader = TopicReader(settings, "score_responses")
    cleanup.callback(reader.close)
    answered = reader.until(lambda got: "over-sasl" in response_ids(got), 120, [worker])
    wait_for(lambda: checkpoint_counters(settings)["records"] >= 10, 120, "the trainer learning over SASL", [worker])
    wrong = derive(settings, kafka={"sasl_password": "wrong-password"})
    started = time.monotonic()
    with pytest.raises(KafkaError) as refused:
        KafkaAdminClient(**kafka_python_options(wrong.kafka), request_timeout_ms=5000).list_topics()
    measure("wrong_password_error", f"{type(refused.value).__name__}: {str(refused.value)[:120]}")
    measure("wrong_password_error_s", round(time.monotonic() - started, 1))
    worker.stop()
    log = worker.log_path.read_text(errors="replace")
    measure("password_in_log", int(SASL_PASSWORD in log))
    assert "over-sasl" in response_ids(answered)
    assert SASL_PASSWORD not in log and "wrong-password" not in str(refused.value)
