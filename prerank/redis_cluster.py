"""A local Redis Cluster on loopback: 3 primaries and 3 replicas, six ``redis-server`` processes.

``prerank stack up --redis-cluster`` starts it on ``stack.redis_cluster_port`` and the five ports
after it (cluster bus ports 10000 above); clients then use ``PRERANK_REDIS__CLUSTER=1`` and
``PRERANK_REDIS__URL=redis://127.0.0.1:17001/0``. Tests start their own on free ports
(:func:`cluster_nodes` with explicit ports) under a temp folder.

Each node is a :class:`prerank.stack.Service` (its own folder, pid file, stopped by its pid only).
The cluster is formed once with ``redis-cli --cluster create``; a node restarted later reads its
``nodes.conf`` and rejoins. Nodes run without persistence, like the single Redis, and with
``cluster-require-full-coverage no``: while a primary fails over, only its slots fail.
"""

from __future__ import annotations

import os
import subprocess
import time
from dataclasses import dataclass

from core.ports import port_open
from core.settings import Settings
from prerank.exceptions import ServiceStartError
from prerank.stack import Redis, require_tool

NODES = 6
REPLICAS = 1  # per primary: 3 primaries, 3 replicas
NODE_TIMEOUT_MS = 2000  # a primary unreachable this long is failed over to its replica


@dataclass(frozen=True)
class ClusterNode(Redis):
    """One ``redis-server --cluster-enabled yes`` on its own client and bus port."""

    node_port: int = 0
    bus_port: int = 0

    @property
    def port(self) -> int:
        return self.node_port

    def command(self) -> list[str]:
        return super().command() + [
            "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
            "--cluster-port", str(self.bus_port), "--cluster-node-timeout", str(NODE_TIMEOUT_MS),
            "--cluster-require-full-coverage", "no",
        ]

    def cli(self, *args: str, timeout_s: float = 10.0) -> str:
        """``redis-cli`` against this node (the password through the environment, not argv)."""
        env = dict(os.environ)
        if self.settings.redis.password is not None:
            env["REDISCLI_AUTH"] = self.settings.redis.password.get_secret_value()
        result = subprocess.run([require_tool("redis-cli"), "-h", self.settings.stack.host, "-p", str(self.port), *args],
                                capture_output=True, text=True, timeout=timeout_s, env=env)
        if result.returncode != 0:
            raise ServiceStartError(f"{self.name}: redis-cli {' '.join(args)} failed: {result.stderr or result.stdout}")
        return result.stdout

    def info(self) -> dict[str, str]:
        """``CLUSTER INFO`` as a dict (``cluster_state``, ``cluster_known_nodes``, ...)."""
        lines = (line.split(":", 1) for line in self.cli("cluster", "info").splitlines() if ":" in line)
        return {key: value.strip() for key, value in lines}

    def topology(self) -> dict[int, dict[str, str]]:
        """``CLUSTER NODES`` as this node sees it: by port, each node's ``id``, ``flags`` and
        ``primary`` (the id of the primary a replica follows, ``-`` for a primary)."""
        table = {}
        for line in self.cli("cluster", "nodes").splitlines():
            node_id, address, flags, primary = line.split()[:4]
            table[int(address.split("@")[0].rsplit(":", 1)[1])] = {"id": node_id, "flags": flags, "primary": primary}
        return table

    def role(self) -> str:
        """``master`` or ``slave``, as this node reports itself."""
        return self.cli("role").split()[0]


def cluster_nodes(settings: Settings, ports: list[tuple[int, int]] | None = None) -> list[ClusterNode]:
    """The cluster's nodes: ``(port, bus_port)`` pairs, by default ``stack.redis_cluster_port`` on."""
    if ports is None:
        first = settings.stack.redis_cluster_port
        ports = [(first + i, first + i + 10_000) for i in range(NODES)]
    return [ClusterNode(f"redis-cluster-{i}", settings, port, bus) for i, (port, bus) in enumerate(ports)]


def formed(nodes: list[ClusterNode]) -> bool:
    """Every node answers and sees the whole cluster: state ok, all nodes known, and every
    primary followed by its replicas (gossip spreads the replicas after the slots are ok)."""
    try:
        infos = [node.info() for node in nodes]
        if not all(i.get("cluster_state") == "ok" and i.get("cluster_known_nodes") == str(len(nodes)) for i in infos):
            return False
        return all(_replicated(node.topology()) for node in nodes)
    except (ServiceStartError, subprocess.TimeoutExpired):
        return False


def _replicated(topology: dict[int, dict[str, str]]) -> bool:
    primaries = {row["id"] for row in topology.values() if "master" in row["flags"]}
    followed = [row["primary"] for row in topology.values() if "slave" in row["flags"]]
    return all(followed.count(primary) == REPLICAS for primary in primaries)


def cluster_up(nodes: list[ClusterNode], timeout_s: float) -> float:
    """Start the nodes that are not running, form the cluster if it is not, wait until every node
    reports it ok; seconds taken. All or nothing: a failure stops the nodes this call started."""
    started_at = time.monotonic()
    for node in nodes:
        node.preflight()
    require_tool("redis-cli")
    started: list[ClusterNode] = []
    try:
        for node in nodes:
            if node.start():
                started.append(node)
        for node in nodes:
            node.wait_ready(timeout_s)
        if not formed(nodes) and all(node.info().get("cluster_known_nodes") == "1" for node in nodes):
            host = nodes[0].settings.stack.host
            nodes[0].cli("--cluster", "create", *(f"{host}:{node.port}" for node in nodes),
                         "--cluster-replicas", str(REPLICAS), "--cluster-yes", timeout_s=timeout_s)
        deadline = started_at + timeout_s
        while not formed(nodes):
            if time.monotonic() > deadline:
                raise ServiceStartError(f"redis cluster not formed after {timeout_s:.0f}s; see {nodes[0].log_file}")
            time.sleep(0.2)
        return time.monotonic() - started_at
    except BaseException:
        for node in reversed(started):
            node.stop()
        raise


def cluster_down(nodes: list[ClusterNode]) -> list[str]:
    """Stop the nodes this stack started (by their pids); returns the stopped names."""
    return [node.name for node in reversed(nodes) if node.stop()]


def cluster_ready(nodes: list[ClusterNode]) -> bool:
    return all(port_open(node.settings.stack.host, node.port) for node in nodes) and formed(nodes)
