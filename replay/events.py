"""The replay's event types: one logged exposure and one request (a page of exposures).

>>> e = Exposure(user_id="7", item_id="42", ts_ms=1_000, tab=1, click=1, long_view=0)
>>> Request("7-1000", "7", 1, 1_000, (e,)).item_ids
('42',)
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Exposure:
    """One item shown to one user, with the feedback it received.

    ``ts_ms`` is epoch milliseconds. Binary labels are 0 or 1; ``play_ms`` and
    ``duration_ms`` are 0 when unknown.
    """

    user_id: str
    item_id: str
    ts_ms: int
    tab: int = 0
    click: int = 0
    long_view: int = 0
    like: int = 0
    play_ms: int = 0
    duration_ms: int = 0


@dataclass(frozen=True, slots=True)
class Request:
    """A page: consecutive exposures of one user on one tab (see :mod:`replay.grouping`).

    ``ts_ms`` is the time of the first exposure, the moment the page was requested.
    """

    request_id: str
    user_id: str
    tab: int
    ts_ms: int
    exposures: tuple[Exposure, ...]

    @property
    def item_ids(self) -> tuple[str, ...]:
        return tuple(e.item_id for e in self.exposures)
