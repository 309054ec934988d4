"""Listwise distillation of the fine ranker's order: a per-request softmax (ListNet), vectorised.

The fine ranker scores a request's funnel (the pre-ranker's top-K plus the exposed items); its
combined logits ``t`` define a target distribution ``p = softmax(t / temperature)`` over the items
it scored, and the student's logits ``s`` a distribution ``q = softmax(s)`` over the request's
items (the scored ones, and with ``unscored_negatives`` also the items the fine ranker did not
score, e.g. sampled easy negatives, which get target mass 0 and are pushed below). The loss is the
mean over requests of ``KL(p || q)``: 0 when the student orders the items like the teacher (up to
a shift per request), its gradient in ``s`` is ``q - p`` per request. A per-request shift of the
student's logits changes nothing, so the absolute level is left to the feedback BCE it is paired
with (:class:`~models.losses.StudentObjective`, mode ``ranked``), as in RankFlow and COPR.

Requests are segments of the flat pair arrays given by ``offsets`` (``offsets[r] .. offsets[r+1]``
are request ``r``'s pairs); every reduction is a scatter over the segment index, no Python loop.

>>> s = torch.tensor([2.0, 1.0, 0.0, 5.0, 9.0])
>>> t = torch.tensor([2.0, 1.0, 0.0, 7.0, float("nan")])
>>> offsets = torch.tensor([0, 3, 5])
>>> round(float(listwise_kl(s, t, offsets)), 6)  # request 0 matches; request 1 has one scored item
2.009075
>>> float(listwise_kl(s, t, offsets, unscored_negatives=False))
0.0
"""

from __future__ import annotations

import torch

from models.exceptions import ConfigError, InputError


def segment_index(offsets: torch.Tensor, n_pairs: int) -> torch.Tensor:
    """The request of each pair: int64 of shape ``(n_pairs,)`` from offsets of shape ``(R + 1,)``.

    >>> segment_index(torch.tensor([0, 2, 2, 3]), 3).tolist()
    [0, 0, 2]
    """
    offsets = torch.as_tensor(offsets, dtype=torch.int64)
    if offsets.ndim != 1 or len(offsets) < 1 or int(offsets[0]) != 0 or int(offsets[-1]) != n_pairs:
        raise InputError(f"offsets must run from 0 to n_pairs={n_pairs}, got {offsets.tolist()[:8]}")
    lengths = offsets.diff()
    if bool((lengths < 0).any()):
        raise InputError("offsets must be non-decreasing")
    return torch.repeat_interleave(torch.arange(len(lengths), dtype=torch.int64), lengths)


def segment_log_softmax(values: torch.Tensor, segment: torch.Tensor, n_segments: int) -> torch.Tensor:
    """``log softmax`` of ``values`` within each segment (``-inf`` entries take no mass): ``(n,)``.

    Entries of a segment that is all ``-inf`` come out ``nan``-free as ``-inf``.

    >>> segment_log_softmax(torch.tensor([0.0, 0.0, 3.0]), torch.tensor([0, 0, 1]), 2).exp().tolist()
    [0.5, 0.5, 1.0]
    """
    floor = torch.full((n_segments,), -torch.inf, dtype=values.dtype)
    top = floor.scatter_reduce(0, segment, values.detach(), reduce="amax", include_self=True)
    top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
    shifted = values - top[segment]
    total = torch.zeros(n_segments, dtype=values.dtype).index_add(0, segment, shifted.exp())
    log_total = torch.where(total > 0, total, torch.ones_like(total)).log()
    return shifted - log_total[segment]


def listwise_kl(
    logits: torch.Tensor,
    teacher: torch.Tensor,
    offsets: torch.Tensor,
    temperature: float = 1.0,
    unscored_negatives: bool = True,
) -> torch.Tensor:
    """Mean over requests of ``KL(softmax(teacher / temperature) || softmax(logits))``.

    Parameters
    ----------
    logits
        Student logits, shape ``(n_pairs,)``.
    teacher
        The fine ranker's combined logit per pair, shape ``(n_pairs,)``; ``nan`` where it did not
        score the item (no target mass; the item is left out unless ``unscored_negatives``).
    offsets
        int64, shape ``(R + 1,)``: request ``r`` owns pairs ``offsets[r]:offsets[r + 1]``.
    temperature
        Divides the teacher's logits: above 1 spreads the target over more of its top items.
    unscored_negatives
        Keep unscored items in the student's softmax (target 0), so they are pushed down.

    Returns
    -------
    torch.Tensor
        A scalar; requests with no scored item are skipped (0 when none is left).
    """
    if temperature <= 0:
        raise ConfigError(f"temperature must be > 0, got {temperature}")
    if logits.shape != teacher.shape or logits.ndim != 1:
        raise InputError(f"logits {tuple(logits.shape)} and teacher {tuple(teacher.shape)} must be the same 1-d shape")
    n_pairs = logits.shape[0]
    segment = segment_index(offsets, n_pairs)
    n_segments = len(offsets) - 1
    scored = ~torch.isnan(teacher)
    counted = torch.zeros(n_segments, dtype=torch.int64).index_add(0, segment, scored.long())
    valid = counted > 0
    if not bool(valid.any()):
        return logits.sum() * 0.0
    neg_inf = torch.full_like(logits, -torch.inf)
    target = segment_log_softmax(torch.where(scored, teacher / temperature, neg_inf).detach(), segment, n_segments)
    kept = torch.ones_like(scored) if unscored_negatives else scored
    student = segment_log_softmax(torch.where(kept, logits, neg_inf), segment, n_segments)
    p = target.exp()
    # p = 0 off the scored items: those terms are 0 (where(), so -inf never meets a 0 factor).
    per_pair = torch.where(scored, p * (target - torch.where(scored, student, torch.zeros_like(student))),
                           torch.zeros_like(p))
    per_request = torch.zeros(n_segments, dtype=logits.dtype).index_add(0, segment, per_pair)
    return per_request[valid].mean()
