"""Group a log's exposures into requests (pages).

A page is a run of one user's exposures on one tab where each exposure follows the previous
one by at most ``gap_ms``. A switch of tab or a longer pause starts a new page. Requests come
out in event-time order of their first exposure; the request id ``"{user}-{tab}-{ts_ms}"``
(plus ``-k`` for the rare k-th repeat) is unique and deterministic.

>>> from replay.events import Exposure
>>> log = [Exposure("u", "a", 0, tab=1), Exposure("v", "b", 5, tab=1),
...        Exposure("u", "c", 10, tab=1), Exposure("u", "d", 20, tab=2), Exposure("u", "e", 500, tab=2)]
>>> [(r.request_id, r.item_ids) for r in group_requests(log, gap_ms=100)]
[('u-1-0', ('a', 'c')), ('v-1-5', ('b',)), ('u-2-20', ('d',)), ('u-2-500', ('e',))]
"""

from __future__ import annotations

from collections.abc import Iterable

from replay.events import Exposure, Request
from replay.exceptions import ReplayConfigError

DEFAULT_GAP_MS = 60_000


def group_requests(exposures: Iterable[Exposure], gap_ms: int = DEFAULT_GAP_MS) -> list[Request]:
    """Split ``exposures`` (any order; sorted stably by time here) into pages."""
    if gap_ms < 0:
        raise ReplayConfigError(f"gap_ms must be >= 0, got {gap_ms}")
    open_pages: dict[str, list[Exposure]] = {}
    closed: list[list[Exposure]] = []
    for exposure in sorted(exposures, key=lambda e: e.ts_ms):
        page = open_pages.get(exposure.user_id)
        if page is not None and (page[-1].tab != exposure.tab or exposure.ts_ms - page[-1].ts_ms > gap_ms):
            closed.append(page)
            page = None
        if page is None:
            open_pages[exposure.user_id] = [exposure]
        else:
            page.append(exposure)
    closed.extend(open_pages.values())
    closed.sort(key=lambda page: (page[0].ts_ms, page[0].user_id, page[0].tab))
    requests: list[Request] = []
    seen: dict[str, int] = {}
    for page in closed:
        first = page[0]
        request_id = f"{first.user_id}-{first.tab}-{first.ts_ms}"
        # A user flipping tabs within one millisecond yields two pages with the same key.
        repeats = seen.get(request_id, 0)
        seen[request_id] = repeats + 1
        if repeats:
            request_id = f"{request_id}-{repeats}"
        requests.append(Request(request_id, first.user_id, first.tab, first.ts_ms, tuple(page)))
    return requests
