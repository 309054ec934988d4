"""The publisher against a real Redis (the local stack's, under a fresh key prefix): what a publish
writes, the flip of ``current`` after everything else, evicted items dropped, versions expiring."""

from __future__ import annotations

import time
import uuid

import numpy as np
import pytest

from core.redis import redis_client
from funnel.publishing import Publisher
from funnel.store import ModelStore
from models.learner import StudentLearner
from models.served import ServedStudent
from models.synthetic import SyntheticRequests
from models.two_tower import TwoTowerConfig
from tests.conftest import need_service

pytestmark = pytest.mark.integration

TTL_S = 120


@pytest.fixture()
def client(base_settings):
    need_service("Redis", base_settings.stack.host, base_settings.stack.redis_port)
    real = redis_client(base_settings.redis)
    prefix = f"t{uuid.uuid4().hex[:8]}"
    yield real, prefix
    keys = list(real.scan_iter(f"{prefix}:*"))
    if keys:
        real.delete(*keys)
    real.close()


@pytest.fixture(scope="module")
def learner_and_items():
    stream = SyntheticRequests(seed=11, n_users=40, n_items=60, items_per_request=6)
    learner = StudentLearner(TwoTowerConfig(embedding_dim=4, hidden_sizes=(8,), output_dim=6, min_count=1))
    batch = stream.batch(10)
    learner.learn_many(batch)
    items = list({item.item_id: item for sample in batch for item in sample.items}.values())
    return learner, items


def make_publisher(client, prefix, **overrides) -> Publisher:
    options = dict(hot_items=1000, dtype="float16", ttl_s=TTL_S, chunk=4)
    options.update(overrides)
    return Publisher(ModelStore(client, prefix), **options)


def version_keys(client, prefix, version) -> set[str]:
    return {key.decode() for key in client.scan_iter(ModelStore(client, prefix).version_key(version, "*"))}


def vector_ids(client, prefix, version) -> set[str]:
    published = ModelStore(client, prefix).version_vectors(version)
    return set() if published is None else set(published[0])


def test_a_publish_writes_weights_vectors_and_meta_then_points_current_at_them(client, learner_and_items):
    real, prefix = client
    learner, items = learner_and_items
    publisher = make_publisher(real, prefix)
    publisher.hot.observe(items, now_s=0.0)
    published = publisher.publish(learner, samples_learned=123, records_learned=7)

    store = ModelStore(real, prefix)
    assert published.version == publisher.version == store.current_version() == 1
    assert store.live_versions() == [1]
    # the weights are the learner's export (safetensors headers are not byte-stable: compare what loads)
    weights = store.weights(1)
    assert published.weights_bytes == len(weights) <= published.weights_bytes_unpruned
    np.testing.assert_array_equal(ServedStudent.from_bytes(weights).item_vectors(items), learner.served.item_vectors(items))
    stored_meta = store.meta(1)
    assert stored_meta == {**published.meta(), "blocks": 1} and "publish_s" not in stored_meta
    assert (stored_meta["n_items"], stored_meta["dim"], stored_meta["dtype"]) == (len(items), 6, "float16")
    assert (stored_meta["samples_learned"], stored_meta["records_learned"]) == (123, 7)
    assert stored_meta["zero_row_ratio"] == learner.zero_row_ratio()
    assert set(stored_meta["zero_row_ratio_by_table"]) == set(learner.student.tables)
    # one vector per hot item, each the learner's item vector in float16, read back in one bulk read
    ids, rows = store.version_vectors(1)
    assert sorted(ids) == sorted(item.item_id for item in items) and rows.dtype == np.float16
    by_id = {item.item_id: item for item in items}
    np.testing.assert_array_equal(rows, learner.served.item_vectors([by_id[i] for i in ids]).astype(np.float16))
    # every key of the version expires within the TTL; the pointer and the version set do not
    for key in version_keys(real, prefix, 1):
        assert 0 < real.ttl(key) <= TTL_S, key
    assert real.ttl(f"{prefix}:current") == -1


class Watched:
    """A Redis client that checks, just before ``current`` is set (a plain SET: a MULTI could not
    span the cluster slots of ``current`` and the version's keys), that the version it names is
    completely written and listed, and ``current`` still names the old one."""

    def __init__(self, real, on_flip) -> None:
        self.real, self.on_flip = real, on_flip

    def __getattr__(self, name):
        return getattr(self.real, name)

    def set(self, key, value, **kwargs):
        if key.endswith(":current"):
            self.on_flip(int(value))
        return self.real.set(key, value, **kwargs)


def test_current_flips_only_after_the_whole_version_is_written(client, learner_and_items):
    real, prefix = client
    learner, items = learner_and_items
    flips: list[int] = []
    store = ModelStore(real, prefix)

    def on_flip(version):
        assert version == len(flips) + 1
        assert store.current_version() == (version - 1 or None)  # the old version still serves
        assert store.meta(version) is not None and store.weights(version) is not None
        assert vector_ids(real, prefix, version) == {item.item_id for item in items}
        assert version in store.live_versions()  # listed before it serves
        if version > 1:  # the version being replaced is still whole while it serves
            assert vector_ids(real, prefix, version - 1) == {item.item_id for item in items}
        flips.append(version)

    publisher = Publisher(ModelStore(Watched(real, on_flip), prefix),
                          hot_items=1000, dtype="float32", ttl_s=TTL_S, chunk=5)
    publisher.hot.observe(items, now_s=0.0)
    for expected in (1, 2, 3):
        assert publisher.publish(learner, samples_learned=expected).version == expected
        assert store.current_version() == expected
    assert flips == [1, 2, 3] and store.live_versions() == [1, 2, 3]


def test_evicted_items_leave_the_published_set_until_seen_again(client, learner_and_items):
    real, prefix = client
    learner, items = learner_and_items
    publisher = make_publisher(real, prefix)
    publisher.hot.observe(items, now_s=0.0)
    publisher.publish(learner, samples_learned=1)
    publisher.publish(learner, samples_learned=2)
    evicted = [items[0].item_id, items[3].item_id, "never-published"]
    published = publisher.publish(learner, samples_learned=3, evicted=evicted)

    kept = {item.item_id for item in items} - set(evicted)
    assert published.deleted_items == 3 and published.n_items == len(kept)
    assert vector_ids(real, prefix, 3) == kept
    # the versions before keep theirs: each is whole as it was published, for the scorers still on it
    assert vector_ids(real, prefix, 2) == {item.item_id for item in items}
    assert {item.item_id for item in publisher.hot.top()} == kept
    # seen again later, the item is hot again and published in the next version
    publisher.hot.observe([items[0]], now_s=1.0)
    publisher.publish(learner, samples_learned=4)
    assert vector_ids(real, prefix, 4) == kept | {items[0].item_id}


def test_an_expired_version_disappears_and_leaves_the_version_set(client, learner_and_items):
    real, prefix = client
    learner, items = learner_and_items
    publisher = make_publisher(real, prefix, ttl_s=1)
    publisher.hot.observe(items, now_s=0.0)
    publisher.publish(learner, samples_learned=1)
    store = ModelStore(real, prefix)
    assert store.live_versions() == [1] and version_keys(real, prefix, 1)

    deadline = time.monotonic() + 10  # Redis expires the keys after the 1 s TTL
    while version_keys(real, prefix, 1) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not version_keys(real, prefix, 1), "version 1 did not expire"
    assert store.live_versions() == [1]  # nothing has noticed yet

    publisher.ttl_s = TTL_S
    publisher.publish(learner, samples_learned=2)
    assert store.live_versions() == [2] and store.current_version() == 2  # the next publish forgets it
    assert store.meta(2)["samples_learned"] == 2 and store.meta(1) is None


def test_catalog_items_no_sample_showed_fill_the_hot_sets_room(client, learner_and_items):
    """A candidate no training sample has shown yet is published too while the hot set has room;
    sighted items keep their place when the catalog is larger; a deleted item is not admitted."""
    from models.features import ItemFeatures

    real, prefix = client
    learner, items = learner_and_items
    store = ModelStore(real, prefix)
    unseen = [ItemFeatures(f"unseen{i}", "a9", ("t1",), 1000) for i in range(5)]
    store.put_items(unseen + [ItemFeatures("gone", "a9")])
    store.delete_item("gone")
    assert set(store.catalog_ids()) == {item.item_id for item in unseen}

    roomy = make_publisher(real, prefix, hot_items=len(items) + 10)
    roomy.hot.observe(items, now_s=0.0)
    published = roomy.publish(learner, samples_learned=1)
    ids = vector_ids(real, prefix, published.version)
    assert ids == {item.item_id for item in items} | {item.item_id for item in unseen}

    tight = make_publisher(real, prefix, hot_items=len(items) + 2)
    tight.hot.observe(items, now_s=0.0)
    published = tight.publish(learner, samples_learned=1)
    ids = vector_ids(real, prefix, published.version)
    assert {item.item_id for item in items} <= ids and len(ids) == len(items) + 2
