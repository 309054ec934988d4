"""The micro-batch path: each distinct item's tower runs once, with the gradients of one pass per pair.

The learner runs the item tower on the batch's distinct items and indexes the vectors per
(request, item) pair. The reference below runs it once per pair (no de-duplication); both must give
the same loss and the same dense and embedding-row gradients, up to float rounding.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from models.learner import StudentLearner, flatten_pairs
from models.losses import LOSS_MODES, PairLabels, StudentObjective
from models.sparse import SparseLookup
from models.synthetic import SyntheticRequests
from models.tokens import item_slots, user_slots
from models.two_tower import TwoTowerConfig, TwoTowerStudent

CONFIG = TwoTowerConfig(embedding_dim=8, hidden_sizes=(16, 16), output_dim=16, min_count=1)


def _batch_with_repeats():
    """Requests drawn from 30 items, 8 each: most items appear in several requests."""
    samples = SyntheticRequests(seed=3, n_users=50, n_items=30, items_per_request=8).batch(6)
    ids = [item.item_id for s in samples for item in s.items]
    assert len(set(ids)) < len(ids) - 10  # the test is about repeats: make sure there are many
    return samples


def _loss_and_grads(student, samples, users_items_index, objective, step=0):
    """Loss, dense gradients by name and row gradients by table of one forward/backward."""
    items, request_index, item_index = users_items_index
    lookup = SparseLookup(student.tables, now=int(max(s.ts_ms for s in samples)), learn=True)
    tower_rows = []
    hook = student.item_tower.register_forward_hook(lambda module, args, out: tower_rows.append(args[0].shape[0]))
    try:
        logits = student([s.user for s in samples], items, request_index, item_index, lookup)
    finally:
        hook.remove()
    loss, _ = objective(logits, PairLabels.from_samples(samples), step)
    student.zero_grad(set_to_none=True)
    loss.backward()
    dense = {name: p.grad.clone() for name, p in student.named_parameters()}
    rows = {name: dict(zip(r.tolist(), g)) for name, (r, g) in lookup.row_grads().items()}
    return float(loss.detach()), dense, rows, tower_rows[0]


def _per_pair(samples):
    """No de-duplication: every pair gets its own entry in the item tower's batch."""
    items = [item for s in samples for item in s.items]
    request_index = torch.repeat_interleave(torch.arange(len(samples)), torch.tensor([s.n_items for s in samples]))
    return items, request_index, torch.arange(len(items))


@pytest.mark.parametrize("mode", LOSS_MODES)
def test_deduplicated_items_give_the_loss_and_gradients_of_one_tower_pass_per_pair(mode):
    samples = _batch_with_repeats()
    objective = StudentObjective(mode)
    student = TwoTowerStudent(CONFIG)
    reference = copy.deepcopy(student)  # same weights, same (empty) tables

    dedup = _loss_and_grads(student, samples, flatten_pairs(samples), objective)
    per_pair = _loss_and_grads(reference, samples, _per_pair(samples), objective)

    n_pairs = sum(s.n_items for s in samples)
    assert dedup[3] == len({i.item_id for s in samples for i in s.items}) < per_pair[3] == n_pairs
    assert dedup[0] == pytest.approx(per_pair[0], rel=1e-6)
    for name, grad in dedup[1].items():
        torch.testing.assert_close(grad, per_pair[1][name], rtol=1e-5, atol=1e-7, msg=name)
    assert dedup[2].keys() == per_pair[2].keys()
    for table, grads in dedup[2].items():
        assert grads.keys() == per_pair[2][table].keys(), table  # the same rows, admitted in the same order
        for row, grad in grads.items():
            torch.testing.assert_close(grad, per_pair[2][table][row], rtol=1e-5, atol=1e-7, msg=f"{table}[{row}]")


def test_flatten_pairs_indexes_every_pair_to_its_first_occurrence():
    samples = _batch_with_repeats()
    items, request_index, item_index = flatten_pairs(samples)
    pairs = [(r, item) for r, s in enumerate(samples) for item in s.items]
    assert [i.item_id for i in items] == list(dict.fromkeys(item.item_id for _, item in pairs))
    assert request_index.dtype == item_index.dtype == torch.int64
    assert request_index.tolist() == [r for r, _ in pairs]
    assert [items[i].item_id for i in item_index.tolist()] == [item.item_id for _, item in pairs]
    empty = flatten_pairs([])
    assert empty[0] == [] and empty[1].shape == empty[2].shape == (0,)


def test_one_lookup_per_table_pools_like_one_per_slot():
    """``pool_slots`` (both towers' slots, grouped by table) against one ``pool`` per slot."""
    samples = _batch_with_repeats()
    items, _, _ = flatten_pairs(samples)
    slots = [*user_slots([s.user for s in samples]).values(), *item_slots(items).values()]
    grouped_tables = copy.deepcopy(TwoTowerStudent(CONFIG).tables)
    single_tables = copy.deepcopy(grouped_tables)
    for table in grouped_tables.values():  # non-zero rows, so the gradients carry the values
        table.weight.normal_(generator=torch.Generator().manual_seed(0))
    for name, table in single_tables.items():
        table.weight = grouped_tables[name].weight.clone()

    grouped = SparseLookup(grouped_tables, now=1, learn=True)
    single = SparseLookup(single_tables, now=1, learn=True)
    pooled = grouped.pool_slots(slots)
    one_by_one = [single.pool(table, ids) for table, ids in slots]
    for a, b in zip(pooled, one_by_one):
        assert torch.equal(a, b)  # the same bags, the same mean: bit-equal
    weights = [torch.randn(p.shape, generator=torch.Generator().manual_seed(k)) for k, p in enumerate(pooled)]
    sum((w * p).sum() for w, p in zip(weights, pooled)).backward()
    sum((w * p).sum() for w, p in zip(weights, one_by_one)).backward()
    for name, (rows, grads) in grouped.row_grads().items():
        other_rows, other_grads = single.row_grads()[name]
        assert torch.equal(rows, other_rows), name
        torch.testing.assert_close(grads, other_grads, rtol=1e-5, atol=1e-6, msg=name)
    for name, table in grouped_tables.items():
        assert table.id_map.items() == single_tables[name].id_map.items(), name


def test_seeded_learners_learn_bit_identically():
    config = TwoTowerConfig(embedding_dim=8, hidden_sizes=(16, 16), output_dim=16, min_count=2, seed=5)
    generator = SyntheticRequests(seed=11, n_items=200, items_per_request=10)
    batches = [generator.batch(8) for _ in range(6)]
    first, second = StudentLearner(config), StudentLearner(config)
    for batch in batches:
        assert first.learn_many(batch) == second.learn_many(batch)
    np.testing.assert_array_equal(first.last_pair_logits, second.last_pair_logits)
    for (name, a), b in zip(first.student.state_dict().items(), second.student.state_dict().values()):
        assert torch.equal(a, b), name
    for name, table in first.student.tables.items():
        assert torch.equal(table.weight, second.student.tables[name].weight), name
        assert table.id_map.items() == second.student.tables[name].id_map.items(), name
