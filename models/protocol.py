"""The one protocol every ranker implements: student, teacher and baselines.

A *sample* for throughput purposes is one (request, item) pair; ``learn_many`` takes whole
requests (:class:`~models.features.RequestSample`) so a model can run its user side once per
request.

>>> from models.baselines import GlobalCTR
>>> isinstance(GlobalCTR(), Ranker)
True
"""

from __future__ import annotations

from collections.abc import Sequence
from os import PathLike
from typing import Protocol, runtime_checkable

import numpy as np

from models.features import ItemFeatures, RequestSample, UserFeatures


@runtime_checkable
class Ranker(Protocol):
    """Learn from request samples, score candidates, persist without pickle."""

    def learn_many(self, samples: Sequence[RequestSample]) -> dict[str, float]:
        """Update on a micro-batch of requests; return at least ``{"loss": ...}``."""
        ...

    def score(self, user: UserFeatures, items: Sequence[ItemFeatures]) -> np.ndarray:
        """Return one float32 logit per item, shape ``(len(items),)``. Never learns."""
        ...

    def save(self, path: str | PathLike[str]) -> None:
        """Write the full state (safetensors or JSON) to ``path``."""
        ...

    @classmethod
    def load(cls, path: str | PathLike[str]) -> Ranker:
        """Rebuild a ranker written by :meth:`save`."""
        ...
