"""Finite-difference gradient checks and shape contracts of the two-tower student."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.features import ItemFeatures, UserFeatures
from models.served import ServedStudent
from models.sparse import SparseLookup
from models.two_tower import TwoTowerConfig, TwoTowerStudent

USERS = [
    UserFeatures("u1", profile={"g": "1"}, tab=1, hour=3, history_items=("i1", "i2"), history_tags=("t1",)),
    UserFeatures("u2", history_authors=("a1",), session_items=("i2",), session_length=4),
]
ITEMS = [ItemFeatures("i1", "a1", ("t1", "t2"), 30_000), ItemFeatures("i2", "a2", (), 0), ItemFeatures("i3")]


@pytest.fixture
def float64():
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


def _student_with_random_rows(seed: int) -> TwoTowerStudent:
    student = TwoTowerStudent(TwoTowerConfig(embedding_dim=3, hidden_sizes=(5, 4), output_dim=6, min_count=1, seed=seed))
    lookup = SparseLookup(student.tables, now=0, learn=True)
    student.encode_users(USERS, lookup)
    student.encode_items(ITEMS, lookup)
    generator = torch.Generator().manual_seed(seed)
    for table in student.tables.values():
        table.weight.copy_(torch.randn(table.weight.shape, generator=generator))
    return student


def _loss(student: TwoTowerStudent, lookup: SparseLookup) -> torch.Tensor:
    users = student.encode_users(USERS, lookup)
    items = student.encode_items(ITEMS, lookup)
    logits = student.pair_logits(users[[0, 0, 1, 1]], items[[0, 1, 1, 2]])
    return torch.nn.functional.binary_cross_entropy_with_logits(logits, torch.tensor([1.0, 0.0, 1.0, 0.0]))


def test_dense_gradients_match_finite_differences(float64):
    student = _student_with_random_rows(seed=1)
    lookup = SparseLookup(student.tables, now=0, learn=False)
    _loss(student, lookup).backward()
    eps = 1e-6
    for name, parameter in student.named_parameters():
        flat = parameter.data.view(-1)
        for index in range(0, flat.numel(), max(1, flat.numel() // 7)):
            original = float(flat[index])
            with torch.no_grad():
                flat[index] = original + eps
                plus = float(_loss(student, lookup))
                flat[index] = original - eps
                minus = float(_loss(student, lookup))
                flat[index] = original
            numeric = (plus - minus) / (2 * eps)
            assert float(parameter.grad.view(-1)[index]) == pytest.approx(numeric, rel=1e-4, abs=1e-8), name


def test_embedding_row_gradients_match_finite_differences(float64):
    student = _student_with_random_rows(seed=2)
    lookup = SparseLookup(student.tables, now=0, learn=True)
    _loss(student, lookup).backward()
    row_grads = lookup.row_grads()
    eps = 1e-6
    for name in ("item", "tag", "author", "profile", "context", "user"):
        rows, grads = row_grads[name]
        table = student.tables[name]
        for k in range(rows.shape[0]):
            for d in range(table.dim):
                row = int(rows[k])
                original = float(table.weight[row, d])
                table.weight[row, d] = original + eps
                plus = float(_loss(student, SparseLookup(student.tables, 0, learn=False)))
                table.weight[row, d] = original - eps
                minus = float(_loss(student, SparseLookup(student.tables, 0, learn=False)))
                table.weight[row, d] = original
                assert float(grads[k, d]) == pytest.approx((plus - minus) / (2 * eps), rel=1e-4, abs=1e-8), name


def test_vectors_are_unit_and_logits_match_temperature_cosine():
    student = _student_with_random_rows(seed=3)
    user = ServedStudent(student).user_vector(USERS[0])
    items = ServedStudent(student).item_vectors(ITEMS)
    assert user.shape == (6,) and items.shape == (3, 6)
    assert user.dtype == np.float32 and items.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(items, axis=1), 1.0, rtol=1e-5)
    temperature, bias = ServedStudent(student).scalars()
    cosine = items @ user / (np.linalg.norm(items, axis=1) * np.linalg.norm(user))
    np.testing.assert_allclose(ServedStudent(student).score(USERS[0], ITEMS), temperature * cosine + bias, rtol=1e-5, atol=1e-5)
    assert ServedStudent(student).item_vectors([]).shape == (0, 6)


def test_scoring_does_not_admit_or_touch_ids():
    student = _student_with_random_rows(seed=4)
    before = {name: table.id_map.items() for name, table in student.tables.items()}
    ServedStudent(student).score(UserFeatures("stranger", history_items=("never-seen",)), [ItemFeatures("new", "a9", ("t9",))])
    assert {name: table.id_map.items() for name, table in student.tables.items()} == before


def test_same_seed_same_weights_other_seed_other_weights():
    config = TwoTowerConfig(embedding_dim=2, hidden_sizes=(4,), output_dim=3, seed=5)
    a, b = TwoTowerStudent(config), TwoTowerStudent(config)
    c = TwoTowerStudent(TwoTowerConfig(embedding_dim=2, hidden_sizes=(4,), output_dim=3, seed=6))
    for (name, pa), pb, pc in zip(a.state_dict().items(), b.state_dict().values(), c.state_dict().values()):
        assert torch.equal(pa, pb), name
    assert not torch.equal(a.user_tower[0].weight, c.user_tower[0].weight)


def test_tower_depth_follows_the_config():
    student = TwoTowerStudent(TwoTowerConfig(embedding_dim=2, hidden_sizes=(4, 4), output_dim=7))
    linears = [m for m in student.user_tower if isinstance(m, torch.nn.Linear)]
    assert len(linears) == 3 and linears[-1].out_features == 7


def test_numpy_user_vector_equals_the_torch_tower():
    import numpy as np
    import torch

    from models.features import UserFeatures
    from models.learner import StudentLearner
    from models.sparse import SparseLookup
    from models.synthetic import SyntheticRequests
    from models.two_tower import TwoTowerConfig

    generator = SyntheticRequests(seed=3)
    learner = StudentLearner(TwoTowerConfig(min_count=1, hidden_sizes=(64, 32), output_dim=16))
    for _ in range(3):
        learner.learn_many(generator.batch(16))
    student = learner.student
    users = [generator.user(u) for u in range(20)] + [
        UserFeatures("never-seen"),  # unseen id, every optional feature missing
        UserFeatures("u-dup", history_items=("i1", "i1", "i2"), profile={"a": "1"}, tab=2, hour=23),
    ]
    with torch.no_grad():
        expected = student.encode_users(users, SparseLookup(student.tables, 0, learn=False)).numpy()
    got = np.stack([ServedStudent(student).user_vector(user) for user in users])
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_the_user_offset_moves_every_item_of_a_request_alike_and_is_learned():
    from models.learner import StudentLearner
    from models.losses import StudentObjective
    from models.synthetic import SyntheticRequests

    config = TwoTowerConfig(embedding_dim=4, hidden_sizes=(8, 8), output_dim=6, min_count=1, user_bias=True)
    learner = StudentLearner(config, StudentObjective("impressions"))
    plain = StudentLearner(TwoTowerConfig(embedding_dim=4, hidden_sizes=(8, 8), output_dim=6, min_count=1),
                           StudentObjective("impressions"))
    generator = SyntheticRequests(seed=1, n_users=20, n_items=60, items_per_request=6)
    users = [generator.user(u) for u in range(5)]
    np.testing.assert_array_equal(learner.served.user_offsets(users), np.zeros(5, dtype=np.float32))  # starts at zero
    for _ in range(20):
        batch = generator.batch(8)
        learner.learn_many(batch)
        plain.learn_many(batch)
    offsets = learner.served.user_offsets(users)
    assert offsets.dtype == np.float32 and np.ptp(offsets) > 0  # learned, and not one constant
    np.testing.assert_array_equal(plain.served.user_offsets(users), np.zeros(5, dtype=np.float32))
    # the offset is the whole difference between a user's logits with and without it
    served, items = learner.served, [generator.item(i) for i in range(10)]
    (vector,), (offset,) = served.user_vectors_and_offsets([users[0]])
    without = served.logits_from_vectors(vector, served.item_vectors(items))
    np.testing.assert_allclose(served.score(users[0], items) - without, offset, atol=1e-5)
    # the training forward agrees with the served path
    with torch.no_grad():
        forward = learner.student([users[0]], items, torch.zeros(10, dtype=torch.int64), torch.arange(10))
    np.testing.assert_allclose(forward.numpy(), served.score(users[0], items), rtol=1e-5, atol=1e-5)


def test_the_interaction_head_scores_like_its_training_forward_and_learns():
    from models.export import export_bytes
    from models.learner import StudentLearner
    from models.losses import StudentObjective
    from models.synthetic import SyntheticRequests

    config = TwoTowerConfig(embedding_dim=4, hidden_sizes=(8, 8), output_dim=6, min_count=1, head="interaction",
                            head_hidden=5)
    learner = StudentLearner(config, StudentObjective("impressions"))
    generator = SyntheticRequests(seed=2, n_users=20, n_items=60, items_per_request=6)
    user, items = generator.user(0), [generator.item(i) for i in range(10)]
    before = learner.served.score(user, items)
    head_before = [p.detach().clone() for p in learner.student.interaction.parameters()]
    for _ in range(10):
        learner.learn_many(generator.batch(8))
    assert any(not torch.equal(a, b) for a, b in zip(head_before, learner.student.interaction.parameters()))
    served = learner.served.score(user, items)
    assert not np.allclose(before, served)
    with torch.no_grad():
        forward = learner.student([user], items, torch.zeros(10, dtype=torch.int64), torch.arange(10))
    np.testing.assert_allclose(forward.numpy(), served, rtol=1e-5, atol=1e-5)
    published = ServedStudent.from_bytes(export_bytes(learner, prune=False))
    assert published.config.head == "interaction"
    np.testing.assert_array_equal(published.score(user, items), served)


def test_an_unknown_head_is_refused():
    from models.exceptions import ConfigError

    with pytest.raises(ConfigError, match="head"):
        TwoTowerConfig(head="dot")
