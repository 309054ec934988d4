"""A replay run's progress on disk, so ``prerank replay --resume`` continues an interrupted run.

A run lives in ``OUT/run-ID/``: ``progress.json`` holds the run's parameters, the fine ranker's
pre-fit summary, the results of the modes already finished and whether the run is complete; the
mode in progress keeps its own checkpoint (``MODE/eval.json``, written by
:meth:`replay.stream.StreamingReplay.save`) next to its workers' Faust state and the trainer's
checkpoints, and reuses its topics and Redis prefix (both named after the run id). Every file is
replaced atomically, so a crash while writing leaves the previous checkpoint.

>>> import tempfile
>>> directory = Path(tempfile.mkdtemp()) / "run-abc123"
>>> progress = RunProgress(directory, params={"modes": ["cascade", "distill"]})
>>> progress.finished["cascade"] = {"auc_click": 0.6}
>>> progress.save()
>>> find_resumable(directory.parent) == directory, RunProgress.load(directory).pending_modes()
(True, ['distill'])
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from replay.exceptions import ReplayError

PROGRESS_FILE = "progress.json"


def write_json_atomic(path: Path, data) -> None:
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(data, indent=1, default=float))
    os.replace(temporary, path)


@dataclass
class RunProgress:
    directory: Path
    params: dict
    prefit: dict | None = None
    finished: dict[str, dict] = field(default_factory=dict)  # mode -> its result
    baselines: dict[str, dict] = field(default_factory=dict)  # baseline -> its result
    extras: dict = field(default_factory=dict)  # results beside the modes (e.g. the l1 sweep)
    complete: bool = False

    @property
    def run_id(self) -> str:
        return self.directory.name.removeprefix("run-")

    def pending_modes(self) -> list[str]:
        return [mode for mode in self.params["modes"] if mode not in self.finished]

    def save(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.directory / PROGRESS_FILE, {
            "params": self.params, "prefit": self.prefit, "finished": self.finished,
            "baselines": self.baselines, "extras": self.extras, "complete": self.complete,
        })

    @classmethod
    def load(cls, directory: Path) -> RunProgress:
        try:
            state = json.loads((directory / PROGRESS_FILE).read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise ReplayError(f"{directory / PROGRESS_FILE}: cannot read the run's progress ({error})") from error
        return cls(directory, state["params"], state.get("prefit"), state.get("finished", {}),
                   state.get("baselines", {}), state.get("extras", {}), bool(state.get("complete")))


def find_resumable(report_dir: Path) -> Path:
    """The newest unfinished run under ``report_dir``; :class:`ReplayError` if there is none."""
    runs = sorted(Path(report_dir).glob(f"run-*/{PROGRESS_FILE}"), key=lambda p: p.stat().st_mtime, reverse=True)
    for path in runs:
        if not json.loads(path.read_text()).get("complete"):
            return path.parent
    raise ReplayError(f"no interrupted replay to resume under {report_dir} (looked for run-*/{PROGRESS_FILE})")
