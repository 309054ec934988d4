"""The student a replay starts from: trained on the same pre-period the fine ranker was fitted on.

The fine ranker (teacher) is pre-fit on the days before the streamed period; a student starting
from random weights would be compared with a teacher that had days of data. Like a production
pre-ranker that was batch-trained before it went online, the student first learns the logged
exposures of that pre-period (click and long view, the ``impressions`` objective, since cascade
labels need a serving pre-ranker to exist), then every mode continues online with its own loss.
The result is written as the trainer's first checkpoint (no offsets: it reads its topic from
the start), so the trainer worker loads it like any restart.
"""

from __future__ import annotations

import time
from pathlib import Path

from core.settings import Settings
from funnel.checkpoint import CheckpointDir
from funnel.metrics import auc
from funnel.training import MODEL_FILE, new_learner
from models.learner import StudentLearner
from models.losses import StudentObjective
from replay.sparsity import learn_progressively, request_samples


def pretrain_student(settings: Settings, dataset, requests, batch: int = 64) -> tuple[StudentLearner, dict]:
    """A student (``settings.model`` sizes) trained on the logged exposures of ``requests``, in
    order; the summary holds its progressive long-view AUC over the second half."""
    started = time.perf_counter()
    learner = new_learner(settings.model_copy(update={"model": settings.model.model_copy(update={"mode": "impressions"})}))
    samples = request_samples(dataset, requests)
    labels, scores = learn_progressively(learner, samples, batch)
    return learner, {
        "warm_start_requests": len(samples), "warm_start_s": time.perf_counter() - started,
        "warm_start_auc_long_view": auc(labels, scores),
    }


def install_as_first_checkpoint(learner: StudentLearner, mode: str, checkpoint_dir: Path) -> bool:
    """Write ``learner`` (switched to ``mode``'s loss, its step reset so a growing distillation
    lambda starts at its beginning) as the trainer's checkpoint; False if one already exists (a
    resumed run keeps what the trainer learned)."""
    store = CheckpointDir(checkpoint_dir)
    if store.latest() is not None:
        return False
    learner.objective = StudentObjective(mode=mode)
    learner.step = 0
    store.save(lambda folder: learner.save(folder / MODEL_FILE), {}, {"records": 0, "samples": 0, "version": 0})
    return True
