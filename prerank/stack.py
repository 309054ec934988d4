"""The embedded local stack: Apache Kafka (KRaft), Redis and optionally Prometheus, on loopback.

``up`` is idempotent, all or nothing and returns only when every service answers: it checks every
prerequisite (programs, Kafka jars, free ports) before it starts anything, and if a service fails
to start it stops what this call started. ``down`` stops exactly the processes ``up`` started (pid
files under the stack home, checked against the process's working directory before any signal);
``status`` reports each service.

Kafka over TLS: with ``stack.kafka_ssl_port`` (``PRERANK_STACK__KAFKA_SSL_PORT``) and a PKCS12
keystore (``__KAFKA_SSL_KEYSTORE``, ``__KAFKA_SSL_PASSWORD``) the broker also listens with an
``SSL`` listener; clients then use ``PRERANK_KAFKA__BOOTSTRAP_SERVERS`` on that port,
``__SECURITY_PROTOCOL=SSL`` and ``__SSL_CAFILE``. ``tests/reliability/test_kafka_tls.py`` runs
every client over it.
"""

from __future__ import annotations

import base64
import os
import shutil
import signal
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from core.kafka import kafka_python_options
from core.ports import port_open
from core.settings import Settings
from prerank.exceptions import MissingToolError, ServiceStartError

REPO = Path(__file__).resolve().parent.parent
KAFKA_POM = REPO / "infra" / "kafka" / "pom.xml"
KAFKA_LOG4J = REPO / "infra" / "kafka" / "log4j.properties"
PROMETHEUS_CONFIG = REPO / "monitoring" / "prometheus" / "prometheus-local.yml"

INSTALL_HINTS = {
    "java": "apt-get install -y openjdk-17-jre-headless",
    "mvn": "apt-get install -y maven",
    "redis-server": "apt-get install -y redis-server",
    "prometheus": "apt-get install -y prometheus",
}


def require_tool(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        raise MissingToolError(tool, INSTALL_HINTS.get(tool, f"install {tool}"))
    return path


def new_cluster_id() -> str:
    """A KRaft cluster id (URL-safe base64 of 16 random bytes) that does not start with ``-``.

    StorageTool reads an id starting with ``-`` as an option and fails (1 start in 64; seen in
    CI); Kafka's own ``Uuid.randomUuid`` skips those ids too.

    >>> all(not new_cluster_id().startswith("-") and len(new_cluster_id()) == 22 for _ in range(500))
    True
    """
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id


def process_running(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie (an exited child nobody has waited for).

    >>> process_running(os.getpid())
    True
    """
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


@dataclass(frozen=True)
class Service:
    """One process of the stack: how to prepare, start and probe it."""

    name: str
    settings: Settings

    @property
    def home(self) -> Path:
        return (self.settings.stack.home / self.name).resolve()

    @property
    def pid_file(self) -> Path:
        return self.home / "pid"

    @property
    def log_file(self) -> Path:
        return self.home / "stdout.log"

    @property
    def port(self) -> int:
        raise NotImplementedError

    def command(self) -> list[str]:
        raise NotImplementedError

    def tools(self) -> tuple[str, ...]:
        """Programs this service needs on PATH."""
        return ()

    def fetch(self) -> None:
        """Download what the service needs (idempotent); runs before any service starts."""

    def preflight(self) -> None:
        """Raise if this service could not start now; starts nothing."""
        for tool in self.tools():
            require_tool(tool)
        if self.pid() is None and port_open(self.settings.stack.host, self.port):
            raise ServiceStartError(
                f"{self.name}: port {self.settings.stack.host}:{self.port} is taken by a process "
                "this stack did not start; stop it or configure another port"
            )

    def prepare(self) -> None:
        """One-time set-up before the first start (idempotent)."""

    def ready(self) -> bool:
        return port_open(self.settings.stack.host, self.port)

    def pid(self) -> int | None:
        """The pid of our running process, or None (stale pid files are ignored)."""
        try:
            pid = int(self.pid_file.read_text().strip())
            # Our processes run with the service home as working directory: a reused pid does not.
            cwd = os.readlink(f"/proc/{pid}/cwd")
        except (OSError, ValueError):
            return None
        return pid if cwd == str(self.home) else None

    def start(self) -> bool:
        """Start unless already running; returns True if a process was started."""
        if self.pid() is not None:
            return False
        if port_open(self.settings.stack.host, self.port):
            raise ServiceStartError(
                f"{self.name}: port {self.settings.stack.host}:{self.port} is taken by a process "
                "this stack did not start; stop it or configure another port"
            )
        self.home.mkdir(parents=True, exist_ok=True)
        self.prepare()
        with self.log_file.open("ab") as log:
            process = subprocess.Popen(
                self.command(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                cwd=self.home, start_new_session=True,
            )
        self.pid_file.write_text(str(process.pid))
        return True

    def wait_ready(self, timeout_s: float) -> float:
        started = time.monotonic()
        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            pid = None
        while time.monotonic() - started < timeout_s:
            if self.ready():
                return time.monotonic() - started
            # The pid read once, then only whether that process still runs: the working-directory
            # check of pid() guards against stale pid files, not a process we have just started
            # (CI once saw it fail for a broker that had just been started and went on to run).
            if pid is None or not process_running(pid):
                raise ServiceStartError(f"{self.name} exited during start; see {self.log_file}")
            time.sleep(0.25)
        raise ServiceStartError(f"{self.name} not ready after {timeout_s:.0f}s; see {self.log_file}")

    def stop(self, timeout_s: float = 20.0) -> bool:
        pid = self.pid()
        if pid is None:
            self.pid_file.unlink(missing_ok=True)
            return False
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and self.pid() is not None:
            time.sleep(0.2)
        if self.pid() is not None:
            os.kill(pid, signal.SIGKILL)
            time.sleep(0.2)
        self.pid_file.unlink(missing_ok=True)
        return True


class Kafka(Service):
    """A combined KRaft broker+controller started with ``java`` from Maven-resolved jars."""

    @property
    def port(self) -> int:
        return self.settings.stack.kafka_port

    @property
    def libs(self) -> Path:
        return (self.settings.stack.cache / "kafka-libs").resolve()

    def tools(self) -> tuple[str, ...]:
        return ("java",) if self.has_jars() else ("java", "mvn")

    def has_jars(self) -> bool:
        return any(self.libs.glob("kafka_2.13-*.jar"))

    def fetch(self) -> None:
        if self.has_jars():
            return
        mvn = require_tool("mvn")
        result = subprocess.run(
            [mvn, "-q", "-B", "-f", str(KAFKA_POM), "dependency:copy-dependencies",
             f"-DoutputDirectory={self.libs}", "-DincludeScope=runtime"],
            capture_output=True, text=True,
        )
        if result.returncode != 0 or not self.has_jars():
            raise ServiceStartError(f"kafka: Maven could not fetch the broker's jars ({KAFKA_POM}):\n"
                                    + (result.stdout + result.stderr)[-2000:])

    def properties(self) -> str:
        """``server.properties``; with ``stack.kafka_ssl_port`` set, an ``SSL`` client listener too.

        >>> from core.settings import StackSettings
        >>> plain = Kafka("kafka", Settings(_env_file=None, stack=StackSettings())).properties().splitlines()
        >>> [line for line in plain if line.startswith(("listeners", "advertised", "listener.", "ssl."))]
        ['listeners=PLAINTEXT://127.0.0.1:19092,CONTROLLER://127.0.0.1:19093', 'advertised.listeners=PLAINTEXT://127.0.0.1:19092', 'listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT']
        >>> tls = StackSettings(kafka_ssl_port=19094, kafka_ssl_keystore="/k.p12", kafka_ssl_password="pw")
        >>> lines = Kafka("kafka", Settings(_env_file=None, stack=tls)).properties().splitlines()
        >>> [line for line in lines if line.startswith(("listeners", "advertised", "listener.", "ssl.k", "ssl.c"))]
        ['listeners=PLAINTEXT://127.0.0.1:19092,CONTROLLER://127.0.0.1:19093,SSL://127.0.0.1:19094', 'advertised.listeners=PLAINTEXT://127.0.0.1:19092,SSL://127.0.0.1:19094', 'listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT,SSL:SSL', 'ssl.keystore.type=PKCS12', 'ssl.keystore.location=/k.p12', 'ssl.keystore.password=pw', 'ssl.key.password=pw', 'ssl.client.auth=none']
        """
        stack = self.settings.stack
        listeners = f"PLAINTEXT://{stack.host}:{stack.kafka_port}"
        tls = f",SSL://{stack.host}:{stack.kafka_ssl_port}" if stack.kafka_ssl_port is not None else ""
        return "\n".join([
            "process.roles=broker,controller",
            "node.id=1",
            f"controller.quorum.voters=1@{stack.host}:{stack.kafka_controller_port}",
            f"listeners={listeners},CONTROLLER://{stack.host}:{stack.kafka_controller_port}{tls}",
            f"advertised.listeners={listeners}{tls}",
            "controller.listener.names=CONTROLLER",
            "listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT" + (",SSL:SSL" if tls else ""),
            f"log.dirs={self.home / 'data'}",
            "num.partitions=1",
            "offsets.topic.replication.factor=1",
            "offsets.topic.num.partitions=8",
            "transaction.state.log.replication.factor=1",
            "transaction.state.log.min.isr=1",
            "group.initial.rebalance.delay.ms=0",
            "auto.create.topics.enable=true",
            "message.max.bytes=8388608",
            *self.tls_properties(),
            "",
        ])

    def tls_properties(self) -> list[str]:
        """The SSL listener's key material (the broker itself still talks plaintext to itself)."""
        stack = self.settings.stack
        if stack.kafka_ssl_port is None:
            return []
        password = stack.kafka_ssl_password.get_secret_value() if stack.kafka_ssl_password else ""
        lines = [
            "ssl.keystore.type=PKCS12",
            f"ssl.keystore.location={stack.kafka_ssl_keystore.resolve() if stack.kafka_ssl_keystore else ''}",
            f"ssl.keystore.password={password}",
            f"ssl.key.password={password}",
        ]
        if stack.kafka_ssl_truststore is not None:
            lines += ["ssl.truststore.type=PKCS12", f"ssl.truststore.location={stack.kafka_ssl_truststore.resolve()}",
                      f"ssl.truststore.password={password}"]
        return lines + [f"ssl.client.auth={stack.kafka_ssl_client_auth}"]

    def preflight(self) -> None:
        super().preflight()
        stack = self.settings.stack
        if stack.kafka_ssl_port is None:
            return
        if stack.kafka_ssl_keystore is None or not stack.kafka_ssl_keystore.is_file():
            raise ServiceStartError(f"kafka: stack.kafka_ssl_port is set but stack.kafka_ssl_keystore "
                                    f"({stack.kafka_ssl_keystore}) is not a file")
        if stack.kafka_ssl_truststore is not None and not stack.kafka_ssl_truststore.is_file():
            raise ServiceStartError(f"kafka: stack.kafka_ssl_truststore ({stack.kafka_ssl_truststore}) is not a file")
        if stack.kafka_ssl_password is None:
            raise ServiceStartError("kafka: stack.kafka_ssl_port is set but stack.kafka_ssl_password is not")
        if stack.kafka_ssl_client_auth != "none" and stack.kafka_ssl_truststore is None:
            raise ServiceStartError("kafka: client certificates need stack.kafka_ssl_truststore (their CAs)")
        running = self.home / "server.properties"
        if self.pid() is not None and f"SSL://{stack.host}:{stack.kafka_ssl_port}" not in (
                running.read_text() if running.exists() else ""):
            raise ServiceStartError("kafka: the running broker has no SSL listener on "
                                    f"{stack.host}:{stack.kafka_ssl_port}; `prerank stack down`, then up again")
        if self.pid() is None and port_open(stack.host, stack.kafka_ssl_port):
            raise ServiceStartError(
                f"kafka: SSL port {stack.host}:{stack.kafka_ssl_port} is taken by a process this stack did not "
                "start; stop it or configure another port"
            )

    def java_command(self, main_class: str, *args: str) -> list[str]:
        java = require_tool("java")
        return [
            java, f"-Xmx{self.settings.stack.kafka_heap}", f"-Xms{self.settings.stack.kafka_heap}",
            "-XX:+UseG1GC", "-Djava.awt.headless=true",
            f"-Dkafka.logs.dir={self.home / 'logs'}", f"-Dlog4j.configuration=file:{KAFKA_LOG4J}",
            "-cp", f"{self.libs}/*", main_class, *args,
        ]

    def prepare(self) -> None:
        config = self.home / "server.properties"
        config.touch(mode=0o600)
        config.chmod(0o600)  # it may hold the keystore's password
        config.write_text(self.properties())
        if (self.home / "data" / "meta.properties").exists():
            return
        cluster_id = new_cluster_id()
        subprocess.run(
            self.java_command("kafka.tools.StorageTool", "format", "-t", cluster_id, "-c", str(config)),
            check=True, stdout=subprocess.DEVNULL,
        )

    def command(self) -> list[str]:
        return self.java_command("kafka.Kafka", str(self.home / "server.properties"))

    def ready(self) -> bool:
        """The broker answers the clients' settings (``settings.kafka``), and the SSL port listens."""
        stack = self.settings.stack
        if not port_open(stack.host, self.port):
            return False
        if stack.kafka_ssl_port is not None and not port_open(stack.host, stack.kafka_ssl_port):
            return False
        from kafka.admin import KafkaAdminClient
        from kafka.errors import KafkaError

        try:
            admin = KafkaAdminClient(
                **kafka_python_options(self.settings.kafka), request_timeout_ms=3000,
                client_id="prerank-stack-probe",
            )
        except (KafkaError, OSError, ValueError):
            return False
        try:
            admin.list_topics()
            return True
        except (KafkaError, OSError):
            return False
        finally:
            admin.close()


class Redis(Service):
    def tools(self) -> tuple[str, ...]:
        return ("redis-server",)

    @property
    def port(self) -> int:
        return self.settings.stack.redis_port

    def command(self) -> list[str]:
        command = [
            require_tool("redis-server"), "--bind", self.settings.stack.host,
            "--port", str(self.port), "--dir", str(self.home), "--save", "",
            "--appendonly", "no", "--protected-mode", "yes",
        ]
        if self.settings.redis.password is not None:
            command += ["--requirepass", self.settings.redis.password.get_secret_value()]
        return command


class Prometheus(Service):
    def tools(self) -> tuple[str, ...]:
        return ("prometheus",)

    @property
    def port(self) -> int:
        return self.settings.stack.prometheus_port

    def command(self) -> list[str]:
        return [
            require_tool("prometheus"), f"--config.file={PROMETHEUS_CONFIG}",
            f"--web.listen-address={self.settings.stack.host}:{self.port}",
            f"--storage.tsdb.path={self.home / 'data'}", "--storage.tsdb.retention.time=2d",
        ]


def services(settings: Settings, with_prometheus: bool | None = None) -> list[Service]:
    chosen: list[Service] = [Kafka("kafka", settings), Redis("redis", settings)]
    if settings.stack.with_prometheus if with_prometheus is None else with_prometheus:
        chosen.append(Prometheus("prometheus", settings))
    return chosen


def prepare(settings: Settings, with_prometheus: bool | None = None) -> list[Service]:
    """Check every prerequisite and fetch the Kafka jars; starts nothing. Returns the services."""
    chosen = services(settings, with_prometheus)
    for service in chosen:
        service.preflight()
    for service in chosen:
        service.fetch()
    return chosen


def up(settings: Settings, with_prometheus: bool | None = None, with_redis_cluster: bool = False) -> dict[str, float]:
    """Start what is not running and wait for all; returns seconds to ready per service.

    All or nothing: nothing starts unless every prerequisite holds, and a failure to start or to
    become ready stops every process this call started (already-running services stay).
    ``with_redis_cluster`` also starts the local Redis Cluster (:mod:`prerank.redis_cluster`).
    """
    chosen = prepare(settings, with_prometheus)
    started: list[Service] = []
    try:
        for service in chosen:
            if service.start():
                started.append(service)
        ready = {s.name: s.wait_ready(settings.stack.start_timeout_s) for s in chosen}
        if with_redis_cluster:
            from prerank.redis_cluster import cluster_nodes, cluster_up

            ready["redis-cluster"] = cluster_up(cluster_nodes(settings), settings.stack.start_timeout_s)
        return ready
    except BaseException:
        for service in reversed(started):
            service.stop()
        raise


def down(settings: Settings) -> list[str]:
    """Stop every service this stack started (Prometheus and the Redis Cluster included); returns
    the stopped names."""
    from prerank.redis_cluster import cluster_down, cluster_nodes

    return cluster_down(cluster_nodes(settings)) + [s.name for s in reversed(services(settings, True)) if s.stop()]


def status(settings: Settings) -> dict[str, dict]:
    report = {}
    for service in services(settings, True):
        pid = service.pid()
        report[service.name] = {
            "pid": pid,
            "address": f"{settings.stack.host}:{service.port}",
            "ready": pid is not None and service.ready(),
        }
        if isinstance(service, Kafka) and settings.stack.kafka_ssl_port is not None:
            report[service.name]["ssl_address"] = f"{settings.stack.host}:{settings.stack.kafka_ssl_port}"
    from prerank.redis_cluster import cluster_nodes, cluster_ready

    nodes = cluster_nodes(settings)
    pids = [node.pid() for node in nodes]
    if any(pids):  # reported only when started (`stack up --redis-cluster`)
        report["redis-cluster"] = {"pid": pids, "address": f"{settings.stack.host}:{nodes[0].port}-{nodes[-1].port}",
                                   "ready": all(pids) and cluster_ready(nodes)}
    return report
