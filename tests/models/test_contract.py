"""The Ranker contract, run over every model: the student in each loss mode, both teachers and the
three baselines; and, for the students, the served model (the scorer's path) against the learner."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest

from models.baselines import GlobalCTR, LogisticFTRL, OnlineTree
from models.export import export_bytes
from models.features import ItemFeatures, RequestSample, UserFeatures
from models.learner import StudentLearner
from models.losses import LOSS_MODES, StudentObjective
from models.protocol import Ranker
from models.served import ServedStudent
from models.synthetic import SyntheticRequests
from models.teacher import TeacherConfig, TeacherLearner
from models.two_tower import TwoTowerConfig


def _student(mode: str, min_count: int = 1, user_bias: bool = False, head: str = "cosine"):
    return lambda: StudentLearner(
        TwoTowerConfig(embedding_dim=4, hidden_sizes=(8, 8), output_dim=8, min_count=min_count, user_bias=user_bias,
                       head=head),
        StudentObjective(mode),
    )


FACTORIES = {
    "student-cascade": _student("cascade"),
    "student-distill": _student("distill", min_count=2),
    "student-impressions": _student("impressions"),
    "student-ranked": _student("ranked"),
    "student-ranked+user-bias": _student("ranked", user_bias=True),
    "student-impressions+interaction": _student("impressions", head="interaction"),
    "teacher-wide-deep": lambda: TeacherLearner(TeacherConfig("wide_deep", embedding_dim=4, hidden_sizes=(8,))),
    "teacher-mmoe": lambda: TeacherLearner(TeacherConfig("mmoe", embedding_dim=4, expert_sizes=(8, 4), tower_hidden=4)),
    "global-ctr": GlobalCTR,
    "logistic-ftrl": LogisticFTRL,
    "online-tree": lambda: OnlineTree(grace_period=20),
}


assert {name.removeprefix("student-").split("+")[0] for name in FACTORIES if name.startswith("student-")} == set(LOSS_MODES)


@pytest.fixture(params=sorted(FACTORIES))
def factory(request):
    return FACTORIES[request.param]


@pytest.fixture(params=sorted(name for name in FACTORIES if name.startswith("student-")))
def student_factory(request):
    return FACTORIES[request.param]


def _batches(seed: int = 3, n: int = 3) -> list[list[RequestSample]]:
    generator = SyntheticRequests(seed=seed, n_users=50, n_items=120, items_per_request=6)
    return [generator.batch(8) for _ in range(n)]


def _probe() -> tuple[UserFeatures, list[ItemFeatures]]:
    generator = SyntheticRequests(seed=3, n_users=50, n_items=120, items_per_request=6)
    return generator.user(1), [generator.item(i) for i in range(10)]


def _train(model, batches) -> None:
    for batch in batches:
        metrics = model.learn_many(batch)
        assert math.isfinite(metrics["loss"])


def test_implements_the_protocol(factory):
    assert isinstance(factory(), Ranker)


def test_scores_are_float32_logits_of_the_right_shape(factory):
    model = factory()
    _train(model, _batches())
    user, items = _probe()
    scores = model.score(user, items)
    assert scores.dtype == np.float32 and scores.shape == (len(items),)
    assert np.isfinite(scores).all()
    assert model.score(user, []).shape == (0,)


def test_inputs_are_not_mutated(factory):
    batches = _batches()
    for batch in batches:  # mutable containers inside frozen records are the risk
        for k, sample in enumerate(batch):
            batch[k] = RequestSample(**{**sample.__dict__, "teacher_logits": dict(sample.teacher_logits)})
    snapshot = copy.deepcopy(batches)
    model = factory()
    _train(model, batches)
    user, items = _probe()
    items_snapshot = copy.deepcopy(items)
    model.score(user, items)
    assert batches == snapshot and items == items_snapshot


def test_save_load_round_trip_scores_and_keeps_learning_identically(factory, tmp_path):
    model = factory()
    batches = _batches(n=4)
    _train(model, batches[:3])
    model.save(tmp_path / "model")
    restored = type(model).load(tmp_path / "model")
    user, items = _probe()
    np.testing.assert_array_equal(restored.score(user, items), model.score(user, items))
    model.learn_many(batches[3])
    restored.learn_many(batches[3])
    np.testing.assert_array_equal(restored.score(user, items), model.score(user, items))


def test_unseen_ids_get_finite_scores(factory):
    model = factory()
    _train(model, _batches())
    user = UserFeatures("never-seen", profile={"nope": "x"}, history_items=("ghost",), history_authors=("ghost-a",))
    scores = model.score(user, [ItemFeatures("ghost", "ghost-a", ("ghost-t",), 1_000), ItemFeatures("ghost2")])
    assert np.isfinite(scores).all()


def test_missing_optional_features(factory):
    model = factory()
    bare_items = (ItemFeatures("i1"), ItemFeatures("i2", tags=("t1",)), ItemFeatures("i3", author_id="a1"))
    sample = RequestSample(
        "r", 1, UserFeatures("u"), bare_items, cascade=(1, 0, 0), click=(1, 0, -1),
        long_view=(0, -1, -1), like=(-1, -1, -1),
    )
    metrics = model.learn_many([sample])
    assert math.isfinite(metrics["loss"])
    assert np.isfinite(model.score(UserFeatures("u"), bare_items)).all()
    assert math.isfinite(model.learn_many([])["loss"])


def test_seeded_determinism(factory):
    first, second = factory(), factory()
    _train(first, _batches())
    _train(second, _batches())
    user, items = _probe()
    np.testing.assert_array_equal(first.score(user, items), second.score(user, items))


def test_scoring_does_not_change_the_model(factory):
    model = factory()
    batches = _batches(n=4)
    _train(model, batches[:3])
    user, items = _probe()
    before = model.score(user, items)
    model.score(UserFeatures("other"), [ItemFeatures("other-item", "x", ("y",))])
    np.testing.assert_array_equal(model.score(user, items), before)


def check_learning_changes_scores(model) -> None:
    """Raise ``AssertionError`` unless ``learn_many`` on a few batches moves the probe's scores.

    A model that ignores what it is taught still scores, saves, loads and passes every other check
    above; this one catches it. The probe's items are among the trained ones (ids ``i0..i9`` are
    the most popular of the synthetic stream), so every model has learned something about them.
    """
    user, items = _probe()
    before = np.asarray(model.score(user, items), dtype=np.float64).copy()
    _train(model, _batches())
    after = np.asarray(model.score(user, items), dtype=np.float64)
    change = float(np.max(np.abs(after - before)))
    assert change > 1e-6, f"{type(model).__name__}: learning left the scores unchanged (max change {change:g})"


def test_learning_changes_the_scores(factory):
    check_learning_changes_scores(factory())


class DoesNotLearn:
    """A model whose ``learn_many`` does nothing: scores, reports a loss and learns nothing."""

    def __init__(self, model) -> None:
        self.model = model

    def learn_many(self, samples):
        return {"loss": 0.0}

    def score(self, user, items):
        return self.model.score(user, items)


def test_the_learning_check_rejects_a_model_that_does_not_learn(factory):
    model = factory()
    frozen = DoesNotLearn(model)
    with pytest.raises(AssertionError, match="learning left the scores unchanged"):
        check_learning_changes_scores(frozen)
    check_learning_changes_scores(model)  # the same model, learning: accepted


def test_the_served_model_scores_like_the_learner(student_factory):
    """What a scorer loads from a published version (the export) and the learner's own served view
    score exactly like the learner, through ``score`` and through the vector path."""
    model = student_factory()
    batches = _batches(n=4)
    _train(model, batches[:3])
    user, items = _probe()
    unseen = UserFeatures("never-seen", history_items=("ghost",))
    published = ServedStudent.from_bytes(export_bytes(model))
    for served in (model.served, published, ServedStudent.from_bytes(export_bytes(model, prune=False))):
        for probe_user in (user, unseen):
            expected = model.score(probe_user, items)
            np.testing.assert_array_equal(served.score(probe_user, items), expected)
            vectors = served.item_vectors(items)
            (user_vector,), (offset,) = served.user_vectors_and_offsets([probe_user])
            np.testing.assert_array_equal(served.logits_from_vectors(user_vector, vectors, offset), expected)
    frozen = published.score(user, items)
    model.learn_many(batches[3])
    np.testing.assert_array_equal(model.served.score(user, items), model.score(user, items))
    np.testing.assert_array_equal(published.score(user, items), frozen)  # a published version does not move
