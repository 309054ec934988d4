"""The replay driver's own CPU: whether the driver, rather than the funnel, limits a replay's rate.

:class:`DriverClock` adds up the driver thread's CPU time (``time.thread_time``) per named stage,
and the whole process's CPU time (``time.process_time``, which includes kafka-python's I/O
thread) against wall time, from :meth:`DriverClock.start` to :meth:`DriverClock.summary`. A
``cpu_share`` near 1.0 means the driver keeps one core busy: the funnel waits for it.

>>> clock = DriverClock()
>>> clock.start()
>>> with clock.stage("candidates"):
...     _ = sum(range(10_000))
>>> summary = clock.summary(requests=2)
>>> sorted(summary)
['cpu_ms_per_request', 'cpu_s', 'cpu_share', 'requests', 'stages_ms_per_request', 'wall_s']
>>> sorted(summary["stages_ms_per_request"])
['candidates', 'other_threads', 'unstaged']
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager


class DriverClock:
    """CPU seconds per stage of the driver thread, and of the process, over one replay attempt."""

    def __init__(self) -> None:
        self.stages: dict[str, float] = {}
        self._wall = self._process = self._thread = 0.0

    def start(self) -> None:
        self.stages = {}
        self._wall, self._process, self._thread = time.perf_counter(), time.process_time(), time.thread_time()

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        started = time.thread_time()
        try:
            yield
        finally:
            self.stages[name] = self.stages.get(name, 0.0) + time.thread_time() - started

    def summary(self, requests: int) -> dict:
        """Totals since :meth:`start`; per-request figures are over ``requests`` (answered ones)."""
        wall = time.perf_counter() - self._wall
        process = time.process_time() - self._process
        thread = time.thread_time() - self._thread
        stages = dict(self.stages)
        # Stages do not nest, so what the driver thread spent outside them is the rest of its time;
        # the process's time beyond the driver thread's is kafka-python's I/O thread.
        stages["unstaged"] = max(0.0, thread - sum(self.stages.values()))
        stages["other_threads"] = max(0.0, process - thread)
        per_request = 1e3 / requests if requests else float("nan")
        return {
            "requests": requests, "wall_s": wall, "cpu_s": process,
            "cpu_share": process / wall if wall > 0 else float("nan"),
            "cpu_ms_per_request": process * per_request,
            "stages_ms_per_request": {name: seconds * per_request for name, seconds in sorted(stages.items())},
        }
