"""The ranked mode's listwise term (:mod:`models.listwise`) and the ``ranked`` objective against
hand formulas: gradient direction, masking, one-item requests, determinism, no loop per request."""

from __future__ import annotations

import math

import pytest
import torch

from models.exceptions import ConfigError, InputError
from models.features import ItemFeatures, RequestSample, UserFeatures
from models.listwise import listwise_kl, segment_index
from models.losses import PairLabels, StudentObjective

NAN = math.nan


def _kl(student: list[float], teacher: list[float], temperature: float = 1.0) -> float:
    p = torch.softmax(torch.tensor(teacher) / temperature, 0)
    log_q = torch.log_softmax(torch.tensor(student), 0)
    return float((p * (p.log() - log_q)).sum())


def test_one_request_is_the_kl_of_the_two_softmaxes():
    s, t = [0.3, -1.0, 2.0, 0.5], [1.0, 0.0, -2.0, 0.5]
    loss = listwise_kl(torch.tensor(s), torch.tensor(t), torch.tensor([0, 4]), temperature=2.0)
    assert float(loss) == pytest.approx(_kl(s, t, 2.0), rel=1e-5)


def test_requests_are_averaged_and_shift_invariant():
    s = torch.tensor([0.3, -1.0, 2.0, 4.0, 1.0])
    t = torch.tensor([1.0, 0.0, -2.0, 0.0, 3.0])
    offsets = torch.tensor([0, 3, 5])
    expected = (_kl([0.3, -1.0, 2.0], [1.0, 0.0, -2.0]) + _kl([4.0, 1.0], [0.0, 3.0])) / 2
    assert float(listwise_kl(s, t, offsets)) == pytest.approx(expected, rel=1e-5)
    shifted = s + torch.tensor([5.0, 5.0, 5.0, -3.0, -3.0])  # one shift per request
    assert float(listwise_kl(shifted, t, offsets)) == pytest.approx(expected, rel=1e-5)


def test_gradient_raises_the_teachers_favourite_and_lowers_the_rest():
    s = torch.zeros(4, requires_grad=True)
    listwise_kl(s, torch.tensor([3.0, 0.0, 0.0, NAN]), torch.tensor([0, 4])).backward()
    grad = s.grad.tolist()
    assert grad[0] < 0  # gradient descent raises the teacher's best item
    assert grad[1] > 0 and grad[2] > 0 and grad[3] > 0  # and lowers the others, the unscored negative too
    assert sum(grad) == pytest.approx(0.0, abs=1e-6)  # q - p sums to 0 over a request


def test_unscored_items_take_no_target_mass_and_can_be_left_out():
    s = torch.tensor([1.0, 0.0, 5.0], requires_grad=True)
    t = torch.tensor([2.0, 1.0, NAN])
    kept = listwise_kl(s, t, torch.tensor([0, 3]), unscored_negatives=True)
    left_out = listwise_kl(s, t, torch.tensor([0, 3]), unscored_negatives=False)
    assert float(left_out.detach()) == pytest.approx(_kl([1.0, 0.0], [2.0, 1.0]), rel=1e-5)
    assert float(kept.detach()) > float(left_out.detach())  # the unscored item scored high is a mistake
    left_out.backward()
    assert s.grad[2] == 0.0 and torch.isfinite(s.grad).all()


def test_a_request_with_one_item_or_none_scored_adds_nothing():
    s = torch.tensor([4.0, 0.5, 0.1, 7.0], requires_grad=True)
    t = torch.tensor([1.0, NAN, NAN, 2.0])
    # request 0: one item; request 1: nothing scored (skipped); request 2: one item
    loss = listwise_kl(s, t, torch.tensor([0, 1, 3, 4]))
    assert float(loss.detach()) == 0.0
    loss.backward()
    assert torch.isfinite(s.grad).all() and float(s.grad.abs().sum()) == 0.0
    empty = listwise_kl(s, torch.full((4,), NAN), torch.tensor([0, 4]))
    assert float(empty.detach()) == 0.0 and empty.requires_grad


def test_deterministic_and_no_python_loop_per_request():
    generator = torch.Generator().manual_seed(0)
    lengths = torch.randint(1, 40, (500,), generator=generator)
    offsets = torch.cat([torch.zeros(1, dtype=torch.int64), lengths.cumsum(0)])
    n = int(offsets[-1])
    s, t = torch.randn(n, generator=generator), torch.randn(n, generator=generator)
    t[torch.rand(n, generator=generator) < 0.2] = NAN
    first, second = listwise_kl(s, t, offsets), listwise_kl(s.clone(), t.clone(), offsets.clone())
    assert torch.equal(first, second)
    # against a loop over the requests (the test's own, the reference)
    per_request = []
    for r in range(len(lengths)):
        a, b = int(offsets[r]), int(offsets[r + 1])
        scored = ~torch.isnan(t[a:b])
        if scored.any():
            p = torch.softmax(t[a:b][scored], 0)
            log_q = torch.log_softmax(s[a:b], 0)[scored]
            per_request.append(float((p * (p.log() - log_q)).sum()))
    assert float(first) == pytest.approx(sum(per_request) / len(per_request), rel=1e-5)


def test_bad_offsets_and_temperature_raise_typed_errors():
    s = torch.zeros(3)
    with pytest.raises(InputError):
        listwise_kl(s, s, torch.tensor([0, 2]))
    with pytest.raises(InputError):
        segment_index(torch.tensor([0, 2, 1, 3]), 3)
    with pytest.raises(ConfigError):
        listwise_kl(s, s, torch.tensor([0, 3]), temperature=0.0)
    with pytest.raises(ConfigError):
        StudentObjective("ranked", listwise_weight=-1.0)
    with pytest.raises(ConfigError):
        StudentObjective("ranked", listwise_temperature=0.0)


def _two_requests() -> list[RequestSample]:
    def sample(request_id, click, long_view, teacher):
        n = len(click)
        return RequestSample(request_id, 0, UserFeatures("u"), tuple(ItemFeatures(f"{request_id}{k}") for k in range(n)),
                             cascade=(0,) * n, click=click, long_view=long_view, like=(0,) * n,
                             teacher_logits={"click": teacher, "long_view": (0.0,) * n})

    return [sample("a", (1, 0, -1), (1, 0, -1), (2.0, 0.0, NAN)), sample("b", (0, -1), (1, -1), (1.0, -1.0))]


def test_ranked_objective_is_the_weighted_sum_of_feedback_bce_and_listwise_kl():
    samples = _two_requests()
    labels = PairLabels.from_samples(samples)
    assert labels.offsets.tolist() == [0, 3, 5]
    logits = torch.tensor([0.5, -1.0, 2.0, 0.3, 0.1])
    objective = StudentObjective("ranked", teacher_weights={"click": 1.0}, listwise_weight=0.5,
                                 feedback_loss_weight=2.0, listwise_temperature=1.0)
    loss, parts = objective(logits, labels, step=0)
    feedback = StudentObjective("impressions")(logits, labels, step=0)[0]
    listwise = listwise_kl(logits, torch.tensor([2.0, 0.0, NAN, 1.0, -1.0]), labels.offsets)
    assert parts["listwise_kl"] == pytest.approx(float(listwise), rel=1e-6)
    assert parts["feedback_bce"] == pytest.approx(float(feedback), rel=1e-6)
    assert float(loss) == pytest.approx(2.0 * float(feedback) + 0.5 * float(listwise), rel=1e-6)


def test_ranked_objective_masks_unknown_labels_and_needs_the_grouping():
    samples = _two_requests()
    labels = PairLabels.from_samples(samples)
    logits = torch.zeros(5, requires_grad=True)
    only_feedback = StudentObjective("ranked", listwise_weight=0.0)
    only_feedback(logits, labels, step=0)[0].backward()
    # unexposed pairs (labels -1) get no feedback gradient
    assert logits.grad[2] == 0.0 and logits.grad[4] == 0.0 and logits.grad[0] != 0.0
    ungrouped = PairLabels(labels.cascade, labels.feedback, labels.teacher)
    with pytest.raises(InputError):
        StudentObjective("ranked")(logits, ungrouped, step=0)
