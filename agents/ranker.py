"""The simulated fine ranker: scores the pre-ranker's top-K with the teacher, emits ``rank-scores``.

It stands in for the production fine ranker in the replayed funnel. It reads the user features
the scorer logged in its response (so both rankers see the same request-time snapshot), looks
item features up in the catalog, scores with the teacher (Wide&Deep or MMoE) and ranks by the
teacher's combined score. The forwarded candidates are the scorer's top-K plus its sampled easy
negatives, from which the joiner draws the cascade's easy negatives.
"""

from __future__ import annotations

import logging
from collections import deque

import numpy as np

from agents.app import Runtime
from core.errors import PrerankError
from funnel.catalog import ItemCatalog
from funnel.convert import user_from_snapshot
from funnel.metrics import recall_in_ranking
from funnel.store import open_store
from models.features import ItemFeatures
from models.losses import combine
from monitoring.metrics import PrerankMetrics
from streams import rank_scores, score_responses
from streams.rank_scores import RankScores
from streams.score_responses import ScoreResponse

log = logging.getLogger(__name__)


def rank_response(response: ScoreResponse, teacher, items: list[ItemFeatures], rank_k: int) -> RankScores | None:
    """The teacher's ranking of a response's top-``rank_k`` items (None for error responses)."""
    if response.error is not None or not response.items or response.user is None:
        return None
    top = items[:rank_k]
    objectives = teacher.score_objectives(user_from_snapshot(response.user), top)
    combined = np.asarray(combine(objectives, teacher.objective_weights))
    order = np.argsort(-combined, kind="stable")
    rank_of = np.empty(len(top), dtype=np.int64)
    rank_of[order] = np.arange(len(top))
    return RankScores(
        request_id=response.request_id, user_id=response.user_id, ts_ms=response.ts_ms,
        candidates=[i.item_id for i in top] + list(response.negatives),
        items=[{"item_id": item.item_id, "rank": int(rank_of[j]),
                "logits": {o: float(v[j]) for o, v in objectives.items()}} for j, item in enumerate(top)],
        user=response.user,
    )


class ConsistencyMonitor:
    """Online consistency: on audited responses the teacher scores every candidate; the recall of
    its top-``n`` inside the pre-ranker's top-k (k = 50, 100, 200), averaged over a window."""

    def __init__(self, n: int = 10, ks: tuple[int, ...] = (50, 100, 200), window: int = 200) -> None:
        self.n = n
        self.recalls = {k: deque(maxlen=window) for k in ks}

    def observe(self, response: ScoreResponse, teacher, features) -> dict[int, float]:
        candidates = list(dict.fromkeys(response.audit_candidates))
        objectives = teacher.score_objectives(user_from_snapshot(response.user), features(candidates))
        combined = np.asarray(combine(objectives, teacher.objective_weights))
        index = {item_id: i for i, item_id in enumerate(candidates)}
        ranking = [index[item.item_id] for item in response.items if item.item_id in index]
        for k, window in self.recalls.items():
            window.append(recall_in_ranking(combined, ranking[:k], self.n))
        return {k: float(np.mean(window)) for k, window in self.recalls.items()}


def install(runtime: Runtime, metrics: PrerankMetrics, serving=None):
    from models.teacher import TeacherLearner

    settings = runtime.settings
    path = settings.worker.teacher_path
    if path is None or not path.exists():
        raise PrerankError(f"the fine ranker needs a teacher model file; set PRERANK_WORKER__TEACHER_PATH (got {path})")
    teacher = TeacherLearner.load(path)
    catalog = serving.catalog if serving is not None else ItemCatalog(
        open_store(settings.redis), capacity=settings.worker.catalog_items)
    features = catalog.features

    consistency = ConsistencyMonitor(n=settings.model.top_n)

    @runtime.app.agent(runtime.topic("score_responses"), name="ranker")
    async def ranker(stream):
        # Responses are taken in batches of what has arrived (as the scorer takes its requests).
        # The batch's events are acked when the step ends and an acked offset may be committed:
        # its rank-scores are delivered first (sent at once, awaited together).
        worker = settings.worker
        async for events in stream.take_events(worker.scorer_batch, within=worker.scorer_batch_wait_s):
            deliveries = []
            for event in events:
                # A response that cannot be ranked or whose rank-scores cannot be sent is a dead
                # letter (agents/app.py); the ranker goes on with the next.
                async with runtime.isolated("ranker", event):
                    response = await runtime.decode(score_responses.CODEC, event, "ranker")
                    if response is None:
                        continue
                    top = features([i.item_id for i in response.items[: worker.rank_k]])
                    ranked = rank_response(response, teacher, top, worker.rank_k)
                    if ranked is not None and response.audit_candidates:
                        for k, recall in consistency.observe(response, teacher, features).items():
                            metrics.set_consistency_recall(k, recall)
                    if ranked is not None:
                        deliveries.append((event, await runtime.topic("rank_scores").send(
                            key=response.user_id.encode(), value=rank_scores.CODEC.encode(ranked), force=True)))
            for event, delivery in deliveries:
                async with runtime.isolated("ranker", event):
                    await delivery

    return teacher
