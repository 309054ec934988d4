"""The worker's one item catalog: bounded, shared, and honest about unknown items."""

from __future__ import annotations

import pytest

from core.redis import RedisUnavailable
from funnel.catalog import ItemCatalog
from models.features import ItemFeatures


class Store:
    def __init__(self):
        self.described: dict[str, ItemFeatures] = {}
        self.reads = 0
        self.down = False

    def items(self, ids):
        if self.down:
            raise RedisUnavailable("connection refused")
        self.reads += 1
        return [self.described.get(i) for i in ids]


def test_memory_is_bounded_and_the_least_recently_used_item_goes_first():
    store = Store()
    catalog = ItemCatalog(store, capacity=3)
    for i in range(3):
        catalog.put(ItemFeatures(f"v{i}", f"a{i}"))
    catalog.lookup(["v0"])  # v0 used: v1 is now the oldest
    catalog.put(ItemFeatures("v3", "a3"))
    assert len(catalog) == 3 and "v1" not in catalog and "v0" in catalog


def test_an_unknown_item_is_served_bare_and_learned_once_the_store_describes_it():
    store = Store()
    catalog = ItemCatalog(store)
    features, unknown = catalog.lookup(["new", "new"])
    assert unknown == 2 and features[0] == ItemFeatures("new") and "new" not in catalog
    store.described["new"] = ItemFeatures("new", "a9", ("t",))
    features, unknown = catalog.lookup(["new"])
    assert unknown == 0 and features[0].author_id == "a9"
    reads = store.reads
    catalog.lookup(["new"])
    assert store.reads == reads  # held now: no second read


def test_a_store_outage_raises_from_lookup_and_features_serve_what_is_held():
    store = Store()
    catalog = ItemCatalog(store)
    catalog.put(ItemFeatures("held", "a1"))
    store.down = True
    with pytest.raises(RedisUnavailable):
        catalog.lookup(["held", "other"])
    assert [f.author_id for f in catalog.features(["held", "other"])] == ["a1", ""]
