"""What ``prerank replay`` and ``prerank demo`` show a person: status lines and progress bars.

The replay reports its progress as small dicts (``replay.command.run_replay``'s ``progress``);
:class:`ReplayConsole` turns each into one readable line, and the per-request progress of a mode
into a ``tqdm`` bar with rate and time left.

>>> line = status_line({"warm_start_requests": 120, "warm_start_s": 3.2, "warm_start_auc_long_view": 0.61})
>>> line
'warm start: the student learned 120 pre-period requests in 3s (progressive long-view AUC 0.610)'
>>> status_line({"something_new": 1})
'something_new: 1'
"""

from __future__ import annotations

import sys
from collections.abc import Mapping

from tqdm import tqdm

# What each arm of the report is, for the line under the table.
ARMS = {
    "cascade": "two-tower student trained on cascade labels (the fine ranker's top-N are the positives)",
    "distill": "two-tower student distilled from the fine ranker's logits with a growing lambda",
    "impressions": "two-tower student trained on logged feedback only (click / long view): the old way",
    "ranked": "two-tower student learning the fine ranker's order (listwise softmax) plus feedback BCE",
    "global_ctr": "baseline: one global click rate per item (popularity)",
    "logistic_ftrl": "baseline: river logistic regression with FTRL over one-hot ids",
    "online_tree": "baseline: river Hoeffding tree over running item/user statistics",
}


def describe_arms(names) -> str:
    """One line per arm saying what it is.

    >>> print(describe_arms(["cascade", "mystery"]))
    - cascade: two-tower student trained on cascade labels (the fine ranker's top-N are the positives)
    - mystery
    """
    return "\n".join(f"- {name}: {ARMS[name]}" if name in ARMS else f"- {name}" for name in names)


def status_line(event: Mapping) -> str:
    """One line for one progress event of the replay."""
    if "dataset" in event:
        data = event["dataset"]
        source = data.get("source", "?") if isinstance(data, Mapping) else str(data)
        rows = data.get("rows_read", {}) if isinstance(data, Mapping) else {}
        skipped = sum((data.get("skipped") or {}).values()) if isinstance(data, Mapping) else 0
        read = ", ".join(f"{count:,} {what}" for what, count in rows.items())
        return (f"data: {source} ({read}{f'; {skipped:,} malformed rows skipped' if skipped else ''}); "
                f"{event.get('prefit_requests', 0):,} pre-period requests fit the fine ranker, "
                f"{event.get('streamed_requests', 0):,} of {event.get('replay_period_requests', 0):,} later "
                f"requests are streamed (user sample {event.get('user_sample_rate', 1.0):.1%})")
    if "warm_start_requests" in event:
        return (f"warm start: the student learned {event['warm_start_requests']:,} pre-period requests in "
                f"{event['warm_start_s']:.0f}s (progressive long-view AUC {event['warm_start_auc_long_view']:.3f})")
    if "l1_sweep" in event:
        values = ", ".join(f"{value:g}" for value in event["l1_sweep"])
        return f"FTRL l1 sweep: l1 in {{{values}}} on the last {event['requests']:,} requests, in process"
    if "resuming" in event:
        return (f"resuming {event['resuming']}: finished {', '.join(event['finished_modes']) or 'none'}, "
                f"to do {', '.join(event['pending_modes']) or 'none'}")
    if "resumed_after_requests" in event:
        return f"[{event.get('mode', '')}] resumed after {event['resumed_after_requests']:,} of {event['of']:,} requests"
    if "interrupted" in event:
        return f"[{event.get('mode', '')}] interrupted: {event['interrupted']}"
    return "; ".join(f"{key}: {value}" for key, value in event.items())


class ReplayConsole:
    """A progress callback for ``run_replay``: a bar per mode, a status line for anything else."""

    def __init__(self, stream=None) -> None:
        self.stream = stream or sys.stderr
        self.bar: tqdm | None = None
        self.mode: str | None = None

    def __call__(self, event: Mapping) -> None:
        if "requests" in event and "total" in event:
            self._advance(event)
            return
        if "mode" in event and event["mode"] != self.mode:
            self.close()
        line = status_line(event)
        if self.bar is not None:
            self.bar.write(line, file=self.stream)
        else:
            print(line, file=self.stream, flush=True)

    def _advance(self, event: Mapping) -> None:
        mode = event.get("mode", "")
        if mode != self.mode or self.bar is None:
            self.close()
            self.mode = mode
            self.bar = tqdm(total=event["total"], initial=event["requests"], desc=f"[{mode}] requests",
                            unit="req", file=self.stream, dynamic_ncols=True, smoothing=0.1)
        self.bar.update(event["requests"] - self.bar.n)
        self.bar.set_postfix(in_flight=event["inflight"], impressions=event["impressions"], refresh=False)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        self.bar = None
        self.mode = None
