"""Typed errors of the replay package."""

from core.errors import PrerankError


class ReplayError(PrerankError):
    """Base class of every error raised by :mod:`replay`."""


class DatasetLayoutError(ReplayError, ValueError):
    """A data folder or CSV file does not have the layout a loader expects."""


class ReplayConfigError(ReplayError, ValueError):
    """A replay configuration value is out of range."""


class ReplayInterrupted(ReplayError):
    """Ctrl-C during a replay; its progress was checkpointed and ``--resume`` continues it."""

    def __init__(self, completed: int, total: int) -> None:
        super().__init__(f"interrupted after {completed} of {total} requests")
        self.completed = completed
        self.total = total


class ReplayStalled(ReplayError):
    """No answer from the scorer for too long: a worker or the broker is down. The replay's
    progress was checkpointed, so ``--resume`` continues once the cause is fixed."""


class EvaluatorFailed(ReplayError):
    """The replay's evaluation process (:mod:`replay.evaluator`) failed or is gone; the message
    holds its traceback or exit code."""
