"""The replay's own view of every user and of popularity, shared by the offline and streaming replays.

A user's history starts from the log's seed (what the user watched before the replayed period) and
grows with each replayed request's exposures; popularity counts the same exposures. Candidate sets
are built from both, so the offline and the streaming funnel see the same candidates.
"""

from __future__ import annotations

from funnel.history import UserHistory
from funnel.labels import Feedback, LabelConfig, build_request_sample
from models.features import RequestSample, UserFeatures
from replay.candidates import CandidateGenerator
from replay.dataset import Dataset
from replay.events import Request

LOGGED = LabelConfig(top_n=1, n_easy_negatives=0)  # labels from feedback only: no cascade positives


class ReplayState:
    """Histories and popularity for building candidate sets.

    ``config`` has ``history`` (:class:`funnel.history.HistoryConfig`) and ``candidates``
    (:class:`replay.candidates.CandidateConfig`): a stream or an offline replay config.
    """

    def __init__(self, dataset: Dataset, config) -> None:
        self.dataset = dataset
        self.config = config
        self.histories: dict[str, UserHistory] = {}
        self.generator = CandidateGenerator(dataset.catalog, config.candidates)

    def history(self, user_id: str) -> UserHistory:
        history = self.histories.get(user_id)
        if history is None:
            seed = self.dataset.history_seeds.get(user_id)
            history = (UserHistory.seeded(user_id, seed.item_ids, seed.last_ts_ms, self.dataset.catalog,
                                          self.config.history)
                       if seed is not None else UserHistory(user_id, self.config.history))
            self.histories[user_id] = history
        return history

    def snapshot(self, request: Request) -> UserFeatures:
        return self.history(request.user_id).snapshot(
            request.ts_ms, request.tab, self.dataset.profiles.get(request.user_id))

    def after(self, request: Request) -> None:
        history = self.history(request.user_id)
        for exposure in request.exposures:
            history.observe(self.dataset.catalog[exposure.item_id], exposure.ts_ms)
            self.generator.observe(exposure.item_id, exposure.ts_ms)

    def logged_sample(self, request: Request, user: UserFeatures) -> RequestSample:
        """The request's logged exposures and their feedback as a training sample (what the fine
        ranker and the baselines learn from)."""
        items = [self.dataset.catalog[i] for i in request.item_ids]
        return build_request_sample(request.request_id, request.ts_ms, user, items, (), feedback_of(request), LOGGED)


def feedback_of(request: Request) -> list[Feedback]:
    return [Feedback(e.item_id, e.ts_ms, position, e.click, e.long_view, e.like, e.play_ms)
            for position, e in enumerate(request.exposures)]
