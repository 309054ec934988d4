"""compose.yaml's topology: the services scale the way the agents they run can.

No container engine runs here, so these read the file: one publisher, trainer ranks that form
one world and meet at rank 0, no state volume written by two services, serving replicas free
to --scale, the Kafka the local stack runs, known agents, ports on loopback only. The file
and infrastructure checks (mounts, health checks, CLI commands) are in tests/monitoring.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections import defaultdict
from pathlib import Path

import pytest
import yaml

from agents.worker import KNOWN, SERVING

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((REPO / "compose.yaml").read_text())


def _flag(command: list[str], name: str) -> str | None:
    """The value after ``name`` in a command list, or None."""
    return command[command.index(name) + 1] if name in command else None


def _agents(service: dict) -> set[str]:
    agents = _flag(service.get("command") or [], "--agents")
    return set(agents.split(",")) if agents else set()


def _trainers(services: dict) -> dict[str, dict]:
    return {name: s for name, s in services.items() if "trainer" in _agents(s)}


def _mounts(service: dict) -> list[tuple[str, str, bool]]:
    """(source, target, writable) of each volume entry (short syntax)."""
    out = []
    for volume in service.get("volumes", []):
        source, target, *mode = volume.split(":")
        out.append((source, target, mode != ["ro"]))
    return out


def test_exactly_one_service_publishes(compose):
    publishers = [name for name, s in compose["services"].items() if "publisher" in _agents(s)]
    assert len(publishers) == 1, f"publishers: {publishers} (each would flip Redis `current`)"


def test_trainer_ranks_form_one_world(compose):
    trainers = _trainers(compose["services"])
    assert trainers
    ranks = sorted(int(_flag(s["command"], "--rank")) for s in trainers.values())
    sizes = {name: int(_flag(s["command"], "--world-size")) for name, s in trainers.items()}
    assert ranks == list(range(len(trainers))), f"ranks {ranks} for {len(trainers)} trainers"
    assert set(sizes.values()) == {len(trainers)}, f"--world-size {sizes} for {len(trainers)} trainers"


def test_every_rank_meets_at_rank_zero(compose):
    trainers = _trainers(compose["services"])
    (rank0,) = [name for name, s in trainers.items() if _flag(s["command"], "--rank") == "0"]
    rank0_hosts = {rank0, trainers[rank0].get("hostname", rank0)}
    ports = set()
    for name, service in trainers.items():
        env = service["environment"]
        assert env["PRERANK_WORKER__TRAINER_MASTER_ADDR"] in rank0_hosts, name
        ports.add(str(env["PRERANK_WORKER__TRAINER_MASTER_PORT"]))
    assert len(ports) == 1, f"the ranks rendezvous on different ports: {ports}"


def test_the_publisher_runs_on_rank_zero(compose):
    (publisher,) = [s for s in compose["services"].values() if "publisher" in _agents(s)]
    assert _flag(publisher["command"], "--rank") == "0"


def test_no_state_volume_is_shared(compose):
    """Two services writing one volume would overwrite each other's checkpoints or Faust data."""
    writers = defaultdict(list)
    for name, service in compose["services"].items():
        for source, _target, writable in _mounts(service):
            if writable:
                writers[source].append(name)
    shared = {source: names for source, names in writers.items() if len(names) > 1}
    assert not shared, f"volumes written by more than one service: {shared}"


def test_each_trainer_keeps_its_checkpoints_on_its_own_volume(compose):
    for name, service in _trainers(compose["services"]).items():
        checkpoint_dir = service["environment"]["PRERANK_WORKER__CHECKPOINT_DIR"]
        named = {target: source for source, target, writable in _mounts(service)
                 if writable and not source.startswith((".", "/"))}
        assert checkpoint_dir in named, f"{name}: no named volume at {checkpoint_dir}"


def test_serving_workers_can_scale(compose):
    serving = {name: s for name, s in compose["services"].items() if _agents(s) & SERVING}
    assert serving
    for name, service in serving.items():
        assert "container_name" not in service, f"{name}: a fixed container name allows one replica"
        assert not service.get("ports"), f"{name}: a fixed host port allows one replica"
        # Replicas of one service share its named volumes: their state must stay per replica.
        assert not [m for m in _mounts(service) if m[2]], f"{name}: replicas would share {service['volumes']}"
        assert _flag(service["command"], "--rank") is None, name


def test_prometheus_discovers_every_worker(compose):
    workers = {name for name, s in compose["services"].items() if _agents(s)}
    prometheus = yaml.safe_load((REPO / "monitoring/prometheus/prometheus-compose.yml").read_text())
    (job,) = [j for j in prometheus["scrape_configs"] if j["job_name"] == "prerank"]
    names = {n for discovery in job["dns_sd_configs"] for n in discovery["names"]}
    assert names == workers


def test_kafka_is_the_version_the_local_stack_runs(compose):
    # The local stack (prerank stack up) and CI resolve the broker's jars from this pom.
    pom = ET.parse(REPO / "infra/kafka/pom.xml")
    version = pom.findtext("m:properties/m:kafka.version", namespaces={"m": "http://maven.apache.org/POM/4.0.0"})
    assert version and compose["services"]["kafka"]["image"] == f"apache/kafka:{version}"


def test_kafka_environment_has_no_4x_only_settings(compose):
    # The share-group coordinator (KIP-932) arrived in 4.0; 3.9 logs its settings as unknown.
    env = compose["services"]["kafka"]["environment"]
    assert not [key for key in env if key.startswith("KAFKA_SHARE_")]


def test_agents_are_known(compose):
    workers = {name: _agents(s) for name, s in compose["services"].items() if _agents(s)}
    assert workers
    for name, agents in workers.items():
        assert agents <= KNOWN, f"{name}: unknown agents {sorted(agents - KNOWN)}"


def test_host_ports_are_unique_and_loopback(compose):
    seen = {}
    for name, service in compose["services"].items():
        for mapping in service.get("ports", []):
            host_ip, host_port, _container = str(mapping).split(":")
            assert host_ip == "127.0.0.1", f"{name} publishes {mapping} beyond loopback"
            assert host_port not in seen, f"{name} and {seen.get(host_port)} both use {host_port}"
            seen[host_port] = name
    assert len(seen) == 4  # kafka, redis, prometheus, grafana
