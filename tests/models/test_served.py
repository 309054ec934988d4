"""The trainable module's ``forward`` and the served model (the scorer's path) beside it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.exceptions import ExportError
from models.export import export_bytes
from models.learner import StudentLearner, flatten_pairs
from models.served import ServedStudent
from models.sparse import SparseLookup
from models.two_tower import TwoTowerStudent


@pytest.fixture
def learner(small_config, stream):
    learner = StudentLearner(small_config)
    for _ in range(3):
        learner.learn_many(stream.batch(8))
    return learner


def test_forward_gives_one_logit_per_pair_equal_to_the_towers(learner, stream):
    samples = stream.batch(4)
    items, request_index, item_index = flatten_pairs(samples)
    users = [s.user for s in samples]
    student = learner.student
    with torch.no_grad():
        logits = student(users, items, request_index, item_index)
        lookup = SparseLookup(student.tables, 0, learn=False)
        expected = student.pair_logits(
            student.encode_users(users, lookup)[request_index], student.encode_items(items, lookup)[item_index]
        )
    assert logits.shape == (len(item_index),) and logits.dtype == torch.float32
    assert torch.equal(logits, expected)
    # Pair p of request r is users[r] against its item: the served model's score of that request.
    first = [p for p in range(len(request_index)) if int(request_index[p]) == 0]
    np.testing.assert_allclose(logits[first].numpy(), learner.score(samples[0].user, samples[0].items), rtol=1e-5, atol=1e-5)


def test_forward_back_propagates_to_the_dense_parameters_and_the_looked_up_rows(small_config, stream):
    student = TwoTowerStudent(small_config)
    samples = stream.batch(2)
    items, request_index, item_index = flatten_pairs(samples)
    lookup = SparseLookup(student.tables, now=0, learn=True)
    student([s.user for s in samples], items, request_index, item_index, lookup).sum().backward()
    assert all(p.grad is not None for p in student.parameters())
    assert {"item", "user"} <= set(lookup.row_grads())


def test_the_trainable_module_has_no_scoring_path_of_its_own(learner):
    for name in ("user_vector", "item_vectors", "logits_from_vectors", "scalars", "score"):
        assert not hasattr(learner.student, name), name
    for name in ("user_vector", "item_vectors", "logits_from_vectors"):
        assert not hasattr(learner, name), name  # the learner scores through ``served``


def test_the_learners_served_model_follows_its_module(learner, small_config, stream):
    assert learner.served.student is learner.student and learner.served is learner.served
    learner.student = TwoTowerStudent(small_config)  # e.g. a warm start swapping the module
    assert learner.served.student is learner.student
    sample = stream.batch(1)[0]
    np.testing.assert_array_equal(learner.score(sample.user, sample.items),
                                  ServedStudent(learner.student).score(sample.user, sample.items))


def test_export_loaders_return_the_served_model(learner, stream, tmp_path):
    data = export_bytes(learner)
    served = ServedStudent.from_bytes(data)
    assert isinstance(served, ServedStudent) and not isinstance(served, torch.nn.Module)
    assert served.config == learner.config and set(served.tables) == set(learner.student.tables)
    assert not served.student.training
    (tmp_path / "m").write_bytes(data)
    assert isinstance(ServedStudent.from_file(tmp_path / "m"), ServedStudent)
    again = ServedStudent.from_bytes(export_bytes(served))  # a served model re-exports to the same model
    sample = stream.batch(1)[0]
    np.testing.assert_array_equal(again.score(sample.user, sample.items), learner.score(sample.user, sample.items))
    with pytest.raises(ExportError):
        ServedStudent.from_bytes(learner.to_bytes())
