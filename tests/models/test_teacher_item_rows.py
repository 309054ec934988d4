"""The teacher's one-user scoring path equals the reference per-pair forward, through learning."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.features import ItemFeatures, UserFeatures
from models.sparse import SparseLookup
from models.synthetic import SyntheticRequests
from models.teacher import TeacherConfig, TeacherLearner

CONFIGS = {
    "mmoe": TeacherConfig("mmoe", embedding_dim=4, expert_sizes=(8, 4), tower_hidden=4, min_count=2),
    "wide_deep": TeacherConfig("wide_deep", embedding_dim=4, hidden_sizes=(8,), min_count=1),
}


def reference(teacher: TeacherLearner, user: UserFeatures, items: list[ItemFeatures]) -> np.ndarray:
    """Logits ``(n, n_tasks)`` of the per-pair forward (the training path) in read-only mode."""
    with torch.no_grad():
        return teacher.model(
            [user], items, torch.zeros(len(items), dtype=torch.int64), torch.arange(len(items)),
            teacher.item_statistics.features([i.item_id for i in items]),
            SparseLookup(teacher.model.tables, 0, learn=False),
        ).numpy()


def fast(teacher: TeacherLearner, user: UserFeatures, items: list[ItemFeatures]) -> np.ndarray:
    objectives = teacher.score_objectives(user, items)
    return np.stack(list(objectives.values()), axis=1)


def awkward_items(generator: SyntheticRequests) -> list[ItemFeatures]:
    """Known and unknown items, no author, no tags, no duration, repeated tags and a duplicate."""
    known = [generator.item(i) for i in range(30)]
    return [
        *known,
        known[3],
        ItemFeatures("never-seen"),
        ItemFeatures("bare", author_id="", tags=(), duration_ms=0),
        ItemFeatures(known[0].item_id, author_id="other", tags=("x", "x"), duration_ms=5),
        ItemFeatures("tagged", author_id=known[1].author_id, tags=known[2].tags + known[2].tags, duration_ms=10**7),
    ]


def history_user(generator: SyntheticRequests, items: list[ItemFeatures]) -> UserFeatures:
    user = generator.user(5)
    return UserFeatures(
        user.user_id, profile=user.profile, tab=user.tab, hour=user.hour, weekday=user.weekday,
        history_items=tuple(i.item_id for i in items[:6]),
        history_authors=tuple(i.author_id for i in items[:6] if i.author_id) + (items[1].author_id,),
        history_tags=tuple(t for i in items[:6] for t in i.tags) + ("x",),
        session_items=user.session_items, session_length=user.session_length,
    )


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_one_user_path_equals_the_per_pair_forward_while_learning(name):
    generator = SyntheticRequests(seed=11, n_users=40, n_items=60, items_per_request=8)
    teacher = TeacherLearner(CONFIGS[name])
    items = awkward_items(generator)
    users = [history_user(generator, items), generator.user(2), UserFeatures("stranger")]
    for step in range(4):  # learning admits ids and moves weights between the comparisons
        for user in users:
            np.testing.assert_allclose(fast(teacher, user, items), reference(teacher, user, items), rtol=1e-6, atol=1e-6)
            np.testing.assert_allclose(fast(teacher, user, items[5:9]), reference(teacher, user, items[5:9]), rtol=1e-6, atol=1e-6)
        batch = generator.batch(6)
        if step == 2:  # a request of the scored user makes its crosses real rows
            batch.append(type(batch[0])(**{**batch[0].__dict__, "user": users[0]}))
        teacher.learn_many(batch)
    assert len(teacher.model.item_rows) > 0


def test_rows_are_reread_after_admission_eviction_and_reload(tmp_path):
    generator = SyntheticRequests(seed=3, n_users=20, n_items=40, items_per_request=6)
    teacher = TeacherLearner(TeacherConfig("mmoe", embedding_dim=4, expert_sizes=(8, 4), tower_hidden=4,
                                           min_count=1, ttl_ms=1000))
    items, user = [generator.item(i) for i in range(20)], generator.user(1)
    teacher.score_objectives(user, items)  # cached while every id reads the fallback row
    teacher.learn_many(generator.batch(5))  # admits them: the cache must not serve fallback rows
    np.testing.assert_allclose(fast(teacher, user, items), reference(teacher, user, items), rtol=1e-6, atol=1e-6)
    late = [s.__class__(**{**s.__dict__, "ts_ms": s.ts_ms + 10**9}) for s in generator.batch(2)]
    teacher.learn_many(late)  # far later: the TTL evicts and recycles rows
    np.testing.assert_allclose(fast(teacher, user, items), reference(teacher, user, items), rtol=1e-6, atol=1e-6)
    teacher.save(tmp_path / "teacher.safetensors")
    loaded = TeacherLearner.load(tmp_path / "teacher.safetensors")
    np.testing.assert_array_equal(fast(loaded, user, items), fast(teacher, user, items))


def test_empty_and_single_item_requests():
    teacher = TeacherLearner(CONFIGS["mmoe"])
    assert all(v.shape == (0,) for v in teacher.score_objectives(UserFeatures("u"), []).values())
    one = [ItemFeatures("i", author_id="a", tags=("t",), duration_ms=1000)]
    np.testing.assert_allclose(fast(teacher, UserFeatures("u"), one), reference(teacher, UserFeatures("u"), one), rtol=1e-6)
