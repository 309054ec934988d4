"""The streaming pipeline on the real local stack: joiner, trainer, publisher, scorer."""

from __future__ import annotations

import pytest

from streams import impressions as impressions_topic
from streams import rank_scores as rank_scores_topic
from streams import training_samples
from streams.impressions import Impression
from streams.rank_scores import RankScores
from streams.training_samples import UserSnapshot
from tests.integration.workers import Worker, read_topic, send_all

pytestmark = pytest.mark.integration

T0 = 1_651_000_000_000


def funnel_events(n_requests: int, n_ranked: int = 15, n_extra: int = 5):
    """Rank scores (with the scorer's user snapshot) and two impressions per request."""
    ranks, shows = [], []
    for r in range(n_requests):
        user = f"u{r % 7}"
        ts = T0 + r * 1000
        ranked = [f"i{(r + j) % 50}" for j in range(n_ranked)]
        extra = [f"x{(r + j) % 30}" for j in range(n_extra)]
        ranks.append(RankScores(
            request_id=f"req{r}", user_id=user, ts_ms=ts, candidates=ranked + extra,
            items=[{"item_id": item, "rank": j, "logits": {"click": 2.0 - 0.1 * j, "long_view": 1.0 - 0.1 * j}}
                   for j, item in enumerate(ranked)],
            user=UserSnapshot(user_id=user, tab=1, hour=12, history_items=[f"i{r % 3}"]),
        ))
        shows += [
            Impression(request_id=f"req{r}", user_id=user, item_id=ranked[0], ts_ms=ts + 10, position=0,
                       click=1, long_view=r % 2, play_ms=5000, duration_ms=10000),
            Impression(request_id=f"req{r}", user_id=user, item_id=ranked[3], ts_ms=ts + 20, position=1,
                       click=0, long_view=0, play_ms=100, duration_ms=10000),
        ]
    return ranks, shows


def test_joiner_emits_one_labelled_sample_per_request(stack_settings, tmp_path):
    ranks, shows = funnel_events(40)
    worker = Worker(stack_settings, "joiner", tmp_path / "joiner.log")
    try:
        send_all(stack_settings, "rank_scores",
                 [(r.user_id.encode(), rank_scores_topic.CODEC.encode(r)) for r in ranks])
        send_all(stack_settings, "impressions",
                 [(i.user_id.encode(), impressions_topic.CODEC.encode(i)) for i in shows])
        out = read_topic(stack_settings, "training_samples", expected=len(ranks), timeout_s=120, workers=[worker])
    finally:
        worker.stop()
    samples = {s.request_id: s for s in (training_samples.CODEC.decode(m.value) for m in out)}
    assert len(out) == len(ranks) == len(samples)  # exactly once
    for r, rank in enumerate(ranks):
        sample = samples[rank.request_id]
        ranked = [item.item_id for item in rank.items]
        ids = [item.item_id for item in sample.items]
        assert ids[:15] == ranked
        assert sorted(ids[15:]) == sorted(rank.candidates[15:])  # all 5 easy negatives
        assert sample.cascade == [1] * 10 + [0] * 10
        assert sample.click[0] == 1 and sample.click[3] == 0
        assert sample.long_view[0] == r % 2
        assert all(sample.click[j] == -1 for j in range(20) if j not in (0, 3))
        assert sample.teacher_logits["click"][:2] == [2.0, 1.9]
        assert sample.teacher_logits["click"][15:] == [None] * 5
        assert sample.user.history_items == [f"i{r % 3}"]  # the snapshot the scorer used
