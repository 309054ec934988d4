"""compose.yaml and the Dockerfile, checked without a Docker engine.

Images are pinned tags of the official images (their existence on the registry cannot be
checked offline); every file, volume, service, port and command they name is checked here.
The topology (one publisher, trainer ranks, scalable serving, loopback ports) is checked in
tests/test_compose.py.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml

from core.settings import Settings
from prerank.cli import build_parser

REPO = Path(__file__).resolve().parents[2]
OFFICIAL_IMAGES = {"apache/kafka", "redis", "prom/prometheus", "grafana/grafana"}


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((REPO / "compose.yaml").read_text())


@pytest.fixture(scope="module")
def services(compose) -> dict:
    return compose["services"]


def _mounts(service: dict) -> list[tuple[str, str]]:
    return [tuple(volume.split(":")[:2]) for volume in service.get("volumes", [])]


def test_the_stack_has_its_services(services):
    assert {"kafka", "redis", "topics", "serving", "trainer-0", "trainer-1", "prometheus", "grafana"} <= set(services)


def test_images_are_official_and_pinned(services):
    repositories = set()
    for name, service in services.items():
        image = service["image"]
        repository, _, tag = image.rpartition(":")
        if "build" in service:
            assert repository == "prerank", name  # built locally from the Dockerfile
            continue
        assert tag and tag != "latest" and re.fullmatch(r"v?\d+(\.\d+)*", tag), f"{name}: {image}"
        repositories.add(repository)
    assert repositories == OFFICIAL_IMAGES


def test_built_services_use_the_dockerfile(services):
    built = [s for s in services.values() if "build" in s]
    assert built
    for service in built:
        context = REPO / (service["build"] if isinstance(service["build"], str) else service["build"]["context"])
        assert (context / "Dockerfile").is_file()


def test_bind_mounted_files_exist(services):
    mounted = 0
    for name, service in services.items():
        for source, _target in _mounts(service):
            if source.startswith("."):
                assert (REPO / source).exists(), f"{name}: {source}"
                mounted += 1
    assert mounted >= 4


def test_named_volumes_are_declared_and_used(compose, services):
    used = {source for s in services.values() for source, _ in _mounts(s) if not source.startswith((".", "/"))}
    assert used == set(compose["volumes"])


def test_every_service_is_health_checked_or_a_one_shot_job(services):
    awaited = {
        target: condition["condition"]
        for service in services.values()
        for target, condition in service.get("depends_on", {}).items()
    }
    for name, service in services.items():
        if service.get("restart") == "no":
            assert awaited.get(name) == "service_completed_successfully", name
        else:
            assert service["healthcheck"]["test"][0] in ("CMD", "CMD-SHELL"), name


def test_dependencies_exist_and_wait_on_health_only_where_checked(services):
    for name, service in services.items():
        for target, condition in service.get("depends_on", {}).items():
            assert target in services, f"{name} depends on unknown {target}"
            if condition["condition"] == "service_healthy":
                assert "healthcheck" in services[target], f"{name} waits for unchecked {target}"


def test_project_commands_exist_in_the_cli(services):
    parser = build_parser()
    commands = {name: s["command"] for name, s in services.items() if s["image"].startswith("prerank:")}
    for name, command in commands.items():
        args = parser.parse_args(command)
        assert callable(args.run), name


def test_dockerfile_default_command_exists_in_the_cli():
    text = (REPO / "Dockerfile").read_text()
    entrypoint = yaml.safe_load(re.search(r"^ENTRYPOINT (.+)$", text, re.M).group(1))
    command = yaml.safe_load(re.search(r"^CMD (.+)$", text, re.M).group(1))
    assert entrypoint == ["prerank"]
    build_parser().parse_args(command)
    for source in re.findall(r"^COPY (\S+) ", text, re.M):
        assert (REPO / source).exists(), source


def test_worker_environment_is_accepted_by_settings(services, monkeypatch):
    env = services["serving"]["environment"]
    for key, value in env.items():
        monkeypatch.setenv(key, str(value))
    settings = Settings(_env_file=None)
    assert settings.kafka.bootstrap_servers == env["PRERANK_KAFKA__BOOTSTRAP_SERVERS"]
    assert settings.redis.url == env["PRERANK_REDIS__URL"]
    assert settings.worker.metrics_port == int(env["PRERANK_WORKER__METRICS_PORT"])
    assert settings.worker.metrics_host == env["PRERANK_WORKER__METRICS_HOST"]


@pytest.mark.parametrize("service", ["trainer-0", "trainer-1"])
def test_trainer_environment_is_accepted_by_settings(services, service, monkeypatch):
    env = services[service]["environment"]
    for key, value in env.items():
        monkeypatch.setenv(key, str(value))
    settings = Settings(_env_file=None)
    assert settings.worker.trainer_master_addr == env["PRERANK_WORKER__TRAINER_MASTER_ADDR"]
    assert settings.worker.trainer_master_port == int(env["PRERANK_WORKER__TRAINER_MASTER_PORT"])
    assert str(settings.worker.checkpoint_dir) == env["PRERANK_WORKER__CHECKPOINT_DIR"]


def test_healthchecks_and_configs_name_real_ports_and_services(services):
    kafka_env = services["kafka"]["environment"]
    worker_env = services["serving"]["environment"]
    bootstrap_host, bootstrap_port = worker_env["PRERANK_KAFKA__BOOTSTRAP_SERVERS"].split(":")
    assert bootstrap_host in services
    assert f"PLAINTEXT://{bootstrap_host}:{bootstrap_port}" in kafka_env["KAFKA_ADVERTISED_LISTENERS"]
    assert bootstrap_port in " ".join(services["kafka"]["healthcheck"]["test"])
    metrics_port = str(worker_env["PRERANK_WORKER__METRICS_PORT"])
    for worker in ("serving", "trainer-0", "trainer-1"):
        assert services[worker]["environment"]["PRERANK_WORKER__METRICS_PORT"] == metrics_port, worker
        assert metrics_port in services[worker]["expose"], worker
        assert f":{metrics_port}/metrics" in " ".join(services[worker]["healthcheck"]["test"]), worker

    prometheus = yaml.safe_load((REPO / "monitoring/prometheus/prometheus-compose.yml").read_text())
    (job,) = [j for j in prometheus["scrape_configs"] if j["job_name"] == "prerank"]
    for discovery in job["dns_sd_configs"]:
        assert set(discovery["names"]) <= set(services)
        assert str(discovery["port"]) == metrics_port
    datasource = yaml.safe_load(
        (REPO / "monitoring/grafana/provisioning/datasources/prometheus.yml").read_text()
    )["datasources"][0]
    assert re.fullmatch(r"http://prometheus:9090", datasource["url"])


def test_container_paths_line_up(services):
    prometheus = services["prometheus"]
    config = next(a.split("=", 1)[1] for a in prometheus["command"] if a.startswith("--config.file="))
    targets = dict((t, s) for s, t in _mounts(prometheus))
    assert targets[config].endswith("prometheus-compose.yml")
    assert "/etc/prometheus/rules" in targets  # the config's rule_files are relative to it

    grafana = services["grafana"]
    grafana_targets = dict((t, s) for s, t in _mounts(grafana))
    provider = yaml.safe_load(
        (REPO / "monitoring/grafana/provisioning/dashboards/prerank.yml").read_text()
    )["providers"][0]
    assert grafana_targets[provider["options"]["path"]] == "./monitoring/grafana/dashboards"
    assert grafana_targets["/etc/grafana/provisioning"] == "./monitoring/grafana/provisioning"
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert (REPO / "monitoring/grafana/dashboards" / Path(home).name).is_file()


def test_kafka_is_a_single_kraft_node(services):
    env = services["kafka"]["environment"]
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"] == f"{env['KAFKA_NODE_ID']}@kafka:29093"
    assert re.fullmatch(r"[A-Za-z0-9_-]{22}", env["CLUSTER_ID"])
    listeners = dict(item.split("://") for item in env["KAFKA_LISTENERS"].split(","))
    protocols = dict(item.split(":") for item in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(","))
    assert set(listeners) == set(protocols)
    assert (env["KAFKA_LOG_DIRS"], "kafka-data") in {(t, s) for s, t in _mounts(services["kafka"])}
    assert shlex.split(services["kafka"]["healthcheck"]["test"][1])[0].startswith("/opt/kafka/bin/")
