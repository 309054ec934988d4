"""A group of two data-parallel trainers on the real broker: one SIGKILLed mid-stream.

Guarantee under test (docs/reliability.md): exactly once across the group. Each rank checkpoints
its shard with its partitions' offsets at the same group step and rank 0 writes the manifest after
all of them; a dead rank makes the other fail its next collective, and the restarted group resumes
every rank from the manifest's step.
"""

from __future__ import annotations

import pytest

from core.ports import free_port
from funnel.convert import record_from_sample
from funnel.trainer_group import manifest_checkpoints
from streams.training_samples import CODEC as SAMPLES
from tests.integration.test_pipeline import _samples
from tests.integration.workers import send_all
from tests.reliability.harness import Worker, derive, private_redis, redis_store, wait_for

pytestmark = pytest.mark.integration

WORLD = 2


def rank_settings(settings, tmp_path, rank: int, master_port: int):
    return derive(settings, worker={
        "trainer_world_size": WORLD, "trainer_rank": rank, "trainer_master_port": master_port,
        "checkpoint_dir": tmp_path / f"rank-{rank}", "trainer_group_timeout_s": 30.0,
    })


def start_group(settings, tmp_path, life: int, cleanup) -> list[Worker]:
    port = free_port()
    workers = []
    for rank in range(WORLD):
        agents = "trainer,publisher" if rank == 0 else "trainer"
        worker = Worker(rank_settings(settings, tmp_path, rank, port), agents,
                        tmp_path / f"life-{life}-rank-{rank}.log", index=rank)
        cleanup.callback(worker.stop)
        workers.append(worker)
    return workers


def group_counters(tmp_path) -> dict[str, int]:
    """Records, samples and dropped copies in the manifest's step, summed over its shards."""
    shards = manifest_checkpoints([tmp_path / f"rank-{rank}" for rank in range(WORLD)]) or []
    return {key: sum(c.counters.get(key, 0) for c in shards) for key in ("records", "samples", "duplicate_records")}


def test_one_of_two_trainers_killed_every_record_is_learned_exactly_once(stack_settings, tmp_path, measure, cleanup):
    settings = derive(stack_settings, worker={"checkpoint_interval_s": 0.3, "train_batch_requests": 8,
                                              "publish_interval_s": 0.5})
    records = [record_from_sample(s) for s in _samples(900)]
    encoded = [(r.user_id.encode(), SAMPLES.encode(r)) for r in records]
    half = len(encoded) // 2

    # Life 1: the first half is learned and checkpointed; the second half is sent once a group
    # checkpoint exists, so the kill lands mid-stream at any machine speed.
    send_all(settings, "training_samples", encoded[:half])
    first = start_group(settings, tmp_path, 1, cleanup)
    wait_for(lambda: group_counters(tmp_path)["records"] > half // 3, 180, "a group checkpoint", first)
    send_all(settings, "training_samples", encoded[half:])
    at_kill = group_counters(tmp_path)["records"]
    first[1].kill()  # SIGKILL of rank 1: no shutdown of any kind
    # Rank 0 cannot go on alone: its next collective fails and its worker exits.
    wait_for(lambda: not first[0].alive(), 120, "rank 0 failing without rank 1")
    assert at_kill < len(records), f"killed too late to prove anything: {at_kill}"

    # Life 2: the group resumes from the manifest's step and learns the rest.
    second = start_group(settings, tmp_path, 2, cleanup)
    wait_for(lambda: group_counters(tmp_path)["records"] >= len(records), 240, "every record learned", second)
    store = redis_store(settings)
    wait_for(lambda: (store.meta(store.current_version()) or {}).get("records_learned", 0) >= len(records), 60,
             "a version with every record", second)
    for worker in second:
        worker.stop()
    counters = group_counters(tmp_path)
    meta = store.meta(store.current_version())
    measure("records_produced", len(records))
    measure("records_learned", counters["records"])
    measure("records_at_kill", at_kill)
    assert counters["records"] == len(records)
    assert counters["samples"] == sum(len(r.items) for r in records)
    assert counters["duplicate_records"] == 0  # nothing reached a model twice, not even to be dropped
    assert meta["records_learned"] == len(records)
    assert meta["n_items"] > 0


def test_the_group_learns_through_a_redis_outage_and_publishes_once_it_is_back(stack_settings, tmp_path, cleanup):
    """Rank 0's publish fails while Redis is down; the group goes on learning (a lone trainer's
    rule), and the next version after Redis is back holds every record."""
    redis, settings = private_redis(stack_settings, tmp_path / "stack")
    settings = derive(settings, worker={"checkpoint_interval_s": 0.3, "train_batch_requests": 8,
                                        "publish_interval_s": 0.5})
    redis.start()
    cleanup.callback(redis.stop)
    redis.wait_ready(30)
    records = [record_from_sample(s) for s in _samples(400)]
    encoded = [(r.user_id.encode(), SAMPLES.encode(r)) for r in records]
    store = redis_store(settings)
    group = start_group(settings, tmp_path, 1, cleanup)
    wait_for(store.current_version, 120, "the cold-start version", group)
    redis.stop()
    # Sent only once Redis is down, so every record is learned during the outage at any speed.
    send_all(settings, "training_samples", encoded)
    wait_for(lambda: group_counters(tmp_path)["records"] >= len(records), 180, "every record learned without Redis",
             group)
    assert all(worker.alive() for worker in group)
    redis.start()
    redis.wait_ready(30)
    # A restarted Redis is empty: the next version is written whole, with every record in it.
    wait_for(lambda: (store.meta(store.current_version() or 0) or {}).get("records_learned", 0) >= len(records), 120,
             "a version after the outage", group)
    assert all(worker.alive() for worker in group)
