"""The publisher, the scorer and the catalog on a Redis Cluster of real processes: 3 primaries and
3 replicas started for each test on free loopback ports (the shared stack is never touched),
stopped by their pids at the end.

The failover: the primary holding ``current`` is killed with SIGKILL while requests keep coming;
every one is answered (from the vectors the scorer holds, degraded while Redis cannot be read), a
publish meanwhile fails with the typed outage error, and once its replica is promoted the scorer
reads again and switches to the next version, read from the promoted replica. Once in process
(the store, publisher and scorer themselves), once through the workers (Kafka in, Kafka out).
"""

from __future__ import annotations

import os
import signal
import socket
import time

import numpy as np
import pytest

from core.kafka import kafka_python_options
from core.ports import free_port
from core.redis import RedisUnavailable
from funnel.publishing import Publisher
from funnel.scoring import REDIS_DOWN, Scorer
from funnel.store import open_store
from models.features import ItemFeatures
from models.learner import StudentLearner
from models.served import ServedStudent
from models.synthetic import SyntheticRequests
from models.two_tower import TwoTowerConfig
from prerank.exceptions import ServiceStartError
from prerank.redis_cluster import NODES, cluster_down, cluster_nodes, cluster_up
from streams.score_requests import ScoreRequest
from tests.reliability.harness import (
    Sender,
    TopicReader,
    Worker,
    create_topics,
    derive,
    fresh_settings,
    response_ids,
    score_request,
    send_funnel,
    wait_for,
)

pytestmark = pytest.mark.integration

PROMOTION_DEADLINE_S = 60.0
N_ITEMS, HOT_ITEMS = 300, 200  # the last 100 catalog items are not published: per-request misses


@pytest.fixture()
def cluster(base_settings, tmp_path):
    """A cluster of the test's own (a failover leaves a shard without replica: one per test)."""
    home = tmp_path / "redis-cluster"
    ports = [(free_port(), free_port()) for _ in range(NODES)]
    settings = derive(base_settings, stack={"home": home},
                      redis={"cluster": True, "url": f"redis://127.0.0.1:{ports[0][0]}/0", "key_prefix": "tcluster"})
    nodes = cluster_nodes(settings, ports)
    try:
        cluster_up(nodes, timeout_s=60)
    except ServiceStartError as exc:
        pytest.fail(f"the test's own Redis Cluster did not start: {exc}")
    try:
        yield settings, nodes
    finally:
        cluster_down(nodes)


def repl_offset(node) -> int:
    info = dict(line.split(":", 1) for line in node.cli("info", "replication").splitlines() if ":" in line)
    return int(info.get("master_repl_offset" if info["role"].strip() == "master" else "slave_repl_offset", "-1"))


def once_reachable(read):
    """``read()``, or None while the client still routes to the killed primary: redis-py (8.2 on)
    refreshes its slot map at most once a second after a connection error, so the first reads
    after the promotion may still fail."""
    try:
        return read()
    except RedisUnavailable:
        return None


def kill_current_primary(store, nodes):
    """SIGKILL the primary of ``current``'s slot once its replica holds everything written;
    returns (primary, replica)."""
    primary_port = store.client.get_node_from_key(store.key("current")).port
    primary = next(node for node in nodes if node.port == primary_port)
    table = primary.topology()
    replica = next(node for node in nodes if table[node.port]["primary"] == table[primary_port]["id"])
    written = repl_offset(primary)
    wait_for(lambda: repl_offset(replica) >= written, 30, "the replica to catch up")
    os.kill(primary.pid(), signal.SIGKILL)
    return primary, replica


def test_a_cluster_whose_node_fails_to_start_stops_the_nodes_it_started(base_settings, tmp_path):
    from tests.integration.test_nothing_left_behind import processes_in, wait_until

    ports = [(free_port(), free_port()) for _ in range(NODES)]
    nodes = cluster_nodes(derive(base_settings, stack={"home": tmp_path}), ports)
    with socket.socket() as taken:  # bound, not listening: the pre-flight passes, node 3 cannot bind its bus
        taken.bind(("127.0.0.1", ports[3][1]))
        with pytest.raises(ServiceStartError, match="redis-cluster-3"):
            cluster_up(nodes, timeout_s=30)
    assert (tmp_path / "redis-cluster-0" / "stdout.log").exists()  # node 0 had been started
    assert not any(node.pid() for node in nodes)
    wait_until(lambda: processes_in(tmp_path.resolve()) == [], 30, "the nodes to exit")


def test_a_versions_keys_share_a_slot_and_the_catalog_spreads_over_the_primaries(cluster):
    settings, nodes = cluster
    store = open_store(derive(settings, redis={"key_prefix": "tslots"}).redis)
    ids = [f"i{k}" for k in range(5000)]  # three blocks
    store.publish(1, b"weights", ids, np.ones((5000, 4), np.float16), {"created_at_ms": 1}, ttl_s=60)
    slots = {store.client.keyslot(store.version_key(1, part)) for part in ("meta", "weights", "block:0", "block:2")}
    assert len(slots) == 1
    assert store.version_vectors(1)[0] == ids and store.current_version() == 1
    items = [ItemFeatures(f"c{k}", f"a{k}") for k in range(100)]
    store.put_items(items)
    owners = {store.client.get_node_from_key(store.key("item", item.item_id)).port for item in items}
    assert len(owners) == 3  # the catalog lies on every primary, and is read across them
    assert [found.author_id for found in store.items([item.item_id for item in items])] == [i.author_id for i in items]
    assert store.delete_everything() == 100 + 1 + 2 + 5  # items, their id set, current and versions, v1's 5 keys
    assert store.current_version() is None


def test_publish_and_serve_through_a_primary_failover(cluster):
    settings, nodes = cluster
    store = open_store(settings.redis)
    stream = SyntheticRequests(seed=3, n_users=20, n_items=N_ITEMS, items_per_request=6)
    learner = StudentLearner(TwoTowerConfig(embedding_dim=4, hidden_sizes=(8,), output_dim=6, min_count=1))
    learner.learn_many(stream.batch(20))
    catalog = [stream.item(k) for k in range(N_ITEMS)]
    store.put_items(catalog)
    publisher = Publisher(store, hot_items=HOT_ITEMS, dtype="float16", ttl_s=300)
    publisher.hot.observe(catalog[:150], now_s=0.0)
    assert publisher.publish(learner, samples_learned=1).version == 1
    scorer = Scorer(store, ServedStudent.from_bytes, audit_every=0, easy_negatives=0)
    assert scorer.refresh() and scorer.version == 1
    unpublished = [item.item_id for item in catalog if item.item_id not in set(store.version_vectors(1)[0])]
    assert len(unpublished) == N_ITEMS - HOT_ITEMS
    sent = 0

    def ask(n: int) -> list:
        nonlocal sent
        requests = [ScoreRequest(request_id=f"r{sent + i}", user_id=f"u{(sent + i) % 20}", ts_ms=0, k=5,
                                 candidates=[catalog[(sent + i + j) % N_ITEMS].item_id for j in range(0, N_ITEMS, 15)])
                    for i in range(n)]
        sent += n
        responses = scorer.score_many(requests, [stream.user((sent + i) % 20) for i in range(n)])
        assert [r.request_id for r in responses] == [r.request_id for r in requests]
        assert all(r.error is None and len(r.items) == 5 for r in responses), [r.error for r in responses]
        return responses

    before = ask(10)
    assert all(not r.degraded and r.unknown_items == 0 and r.cache_tiers["computed"] > 0 for r in before)

    # the primary of ``current``'s slot, its replica, and that replica holding everything written
    primary, replica = kill_current_primary(store, nodes)
    killed_at = time.monotonic()
    during: list = []
    with pytest.raises(RedisUnavailable):  # ``current`` cannot be flipped: the publish fails, typed
        publisher.publish(learner, samples_learned=2)
    while replica.role() != "master":
        assert time.monotonic() - killed_at < PROMOTION_DEADLINE_S, "the replica was not promoted"
        scorer.refresh()  # as the agent does, every 0.5 s: fails while the slot has no primary
        during += ask(4)
    promoted_s = time.monotonic() - killed_at
    assert during, "no request was sent during the failover"
    assert {r.model_version for r in during} == {1}  # served from the version held
    assert any(REDIS_DOWN in r.degraded for r in during)

    survivors = [node for node in nodes if node is not primary]
    wait_for(lambda: all(n.info().get("cluster_state") == "ok" for n in survivors), 30, "the cluster to be ok again")
    # the failed publish never flipped ``current``, and it survived the failover
    assert wait_for(lambda: once_reachable(store.current_version), 30, "the client to reach the promoted replica") == 1
    version = publisher.publish(learner, samples_learned=3).version
    assert version == 3 and store.current_version() == 3
    assert store.client.get_node_from_key(store.key("current")).port == replica.port
    assert scorer.refresh() and scorer.version == 3
    after = ask(10)
    assert all(not r.degraded and r.model_version == 3 and r.unknown_items == 0 for r in after)
    print(f"failover: promoted after {promoted_s:.1f}s, {len(during)} requests answered meanwhile, "
          f"{sum(1 for r in during if r.degraded)} degraded")


def test_workers_publish_and_serve_through_a_primary_failover(cluster, base_settings, tmp_path):
    """``prerank worker`` processes on the cluster: the trainer's publisher and the scorer agent."""
    from monitoring.scrape import metric_sum, scrape
    from streams import score_responses
    from streams.registry import delete_topics
    from tests.conftest import need_service

    need_service("Kafka", base_settings.stack.host, base_settings.stack.kafka_port)
    cluster_settings, nodes = cluster
    settings = derive(fresh_settings(base_settings, tmp_path), redis={"cluster": True, "url": cluster_settings.redis.url},
                      worker={"publish_interval_s": 1.0, "checkpoint_interval_s": 1.0})
    create_topics(settings)
    serving = Worker(settings, "history,joiner,scorer", tmp_path / "serving.log", index=0)
    trainer = Worker(settings, "trainer,publisher", tmp_path / "trainer.log", index=1)
    workers = [serving, trainer]
    reader, sender, store = TopicReader(settings, "score_responses"), Sender(settings), open_store(settings.redis)

    def ask(prefix: str, n: int) -> dict:
        ids = {f"{prefix}{i}" for i in range(n)}
        for rid in sorted(ids):
            sender.request(score_request(rid, f"u{len(rid) % 5}"))
        sender.flush()
        reader.until(lambda got: ids <= set(response_ids(got)), 90, workers)
        responses = (score_responses.CODEC.decode(m.value) for m in reader.messages)
        return {r.request_id: r for r in responses if r.request_id in ids}

    def scorer_version() -> float:
        return metric_sum(scrape(settings.worker.metrics_port), "prerank_model_version", agent="scorer")

    try:
        send_funnel(settings, 20)
        first = wait_for(store.current_version, 120, "a first version", workers)
        wait_for(lambda: scorer_version() >= first, 60, "the scorer on the first version", workers)
        before = ask("before", 5)
        assert all(r.error is None and r.items and not r.degraded for r in before.values())

        primary, replica = kill_current_primary(store, nodes)
        killed_at = time.monotonic()
        during = ask("during", 20)  # every one answered, from the version the scorer holds
        assert len(during) == 20 and all(r.error is None and r.items for r in during.values())
        assert min(r.model_version for r in during.values()) >= first
        wait_for(lambda: replica.role() == "master", PROMOTION_DEADLINE_S, "the replica's promotion", workers)
        promoted_s = time.monotonic() - killed_at

        send_funnel(settings, 10, start=20)  # new data: a newer version, written to the promoted replica
        newer = wait_for(lambda: (once_reachable(store.current_version) or 0) > first and store.current_version(), 90,
                         "a version after the failover", workers)
        assert store.client.get_node_from_key(store.key("current")).port == replica.port
        wait_for(lambda: scorer_version() >= newer, 60, "the scorer on the newer version", workers)
        after = ask("after", 5)
        assert all(r.error is None and not r.degraded and r.model_version >= newer for r in after.values())
        assert all(w.alive() for w in workers)
        print(f"workers: promoted after {promoted_s:.1f}s; {sum(1 for r in during.values() if r.degraded)} of "
              f"{len(during)} answers degraded during the failover; version {first} -> {newer}")
    finally:
        for worker in workers:
            worker.stop()
        reader.close()
        sender.close()
        delete_topics(kafka_python_options(settings.kafka), (settings.topics.prefix, settings.worker.app_id))
