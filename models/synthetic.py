"""A small deterministic generator of :class:`~models.features.RequestSample` batches.

For doctests, unit tests and benchmarks of the models only (the replay package has the full
simulator). Users have a hidden taste vector, items a hidden topic vector; the hidden affinity
drives feedback, the teacher logits and the cascade labels (top ``top_n`` by teacher logit).

>>> gen = SyntheticRequests(seed=0, items_per_request=5)
>>> batch = gen.batch(2)
>>> len(batch), batch[0].n_items, sum(batch[0].cascade)
(2, 5, 2)
>>> SyntheticRequests(seed=0, items_per_request=5).batch(2) == batch
True
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from models.features import OBJECTIVES, ItemFeatures, RequestSample, UserFeatures


@dataclass
class SyntheticRequests:
    """Stream of synthetic requests; every call to :meth:`batch` continues the stream."""

    seed: int = 0
    n_users: int = 2_000
    n_items: int = 5_000
    n_authors: int = 500
    n_tags: int = 200
    items_per_request: int = 20
    history_length: int = 20
    top_n: int = 2
    latent_dim: int = 8
    _rng: np.random.Generator = field(init=False, repr=False)
    _clock_ms: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        self._rng = np.random.default_rng(self.seed)
        rng = self._rng
        self._user_taste = rng.normal(size=(self.n_users, self.latent_dim))
        self._item_topic = rng.normal(size=(self.n_items, self.latent_dim)) / np.sqrt(self.latent_dim)
        self._item_author = rng.integers(0, self.n_authors, self.n_items)
        self._item_tags = [tuple(f"t{t}" for t in rng.choice(self.n_tags, rng.integers(1, 4), replace=False))
                           for _ in range(self.n_items)]
        popularity = 1.0 / np.arange(1, self.n_items + 1) ** 0.8
        self._popularity = popularity / popularity.sum()

    def item(self, index: int) -> ItemFeatures:
        return ItemFeatures(
            item_id=f"i{index}", author_id=f"a{self._item_author[index]}",
            tags=self._item_tags[index], duration_ms=int(5_000 + 1_000 * (index % 120)),
        )

    def user(self, index: int) -> UserFeatures:
        rng = self._rng
        history = rng.choice(self.n_items, self.history_length, p=self._popularity)
        hour = int(self._clock_ms // 3_600_000 % 24)
        return UserFeatures(
            user_id=f"u{index}", profile={"group": str(index % 7), "age": str(index % 5)},
            tab=int(index % 3), hour=hour, weekday=int(self._clock_ms // 86_400_000 % 7),
            history_items=tuple(f"i{i}" for i in history),
            history_authors=tuple(f"a{self._item_author[i]}" for i in history),
            history_tags=tuple(self._item_tags[i][0] for i in history),
            session_items=tuple(f"i{i}" for i in history[-3:]), session_length=int(rng.integers(0, 10)),
        )

    def request(self) -> RequestSample:
        rng = self._rng
        self._clock_ms += int(rng.integers(1, 2_000))
        u = int(rng.integers(0, self.n_users))
        candidates = rng.choice(self.n_items, self.items_per_request, replace=False, p=self._popularity)
        affinity = self._item_topic[candidates] @ self._user_taste[u]
        teacher = {o: tuple(float(a + 0.3 * k) for a in affinity) for k, o in enumerate(OBJECTIVES)}
        order = np.argsort(-affinity, kind="stable")
        cascade = np.zeros(len(candidates), dtype=int)
        cascade[order[: self.top_n]] = 1
        exposed = rng.random(len(candidates)) < 0.5
        feedback = {}
        for k, objective in enumerate(OBJECTIVES):
            p = 1.0 / (1.0 + np.exp(-(affinity - 0.5 * k)))
            labels = (rng.random(len(candidates)) < p).astype(int)
            feedback[objective] = tuple(int(x) if e else -1 for x, e in zip(labels, exposed))
        return RequestSample(
            request_id=f"r{self._clock_ms}-{u}", ts_ms=self._clock_ms, user=self.user(u),
            items=tuple(self.item(int(i)) for i in candidates), cascade=tuple(int(c) for c in cascade),
            click=feedback["click"], long_view=feedback["long_view"], like=feedback["like"],
            teacher_logits=teacher,
        )

    def batch(self, n_requests: int) -> list[RequestSample]:
        return [self.request() for _ in range(n_requests)]
