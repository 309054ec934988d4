"""``prerank replay``: the closed funnel on a dataset, through the real agents, one run per mode.

For each ``--mode`` the replay gets fresh topics, a fresh Redis key prefix and its own workers
(serving: history, joiner, scorer; the fine ranker; trainer + publisher with that loss mode), so
modes never share state. ``--baselines`` adds the article's older pre-rankers, evaluated on the
same requests in process (they are not part of the streaming system). The report holds, per mode
and baseline, the metrics computed over events at or after ``--eval-from``.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from dataclasses import replace
from pathlib import Path

from prerank.processes import Worker
from prerank.settings import Settings
from replay.candidates import CandidateConfig
from replay.load import load_dataset
from replay.offline import local_date_ms
from replay.stream import ReplayState, StreamConfig, StreamingReplay, prefit_teacher, replay_requests

log = logging.getLogger(__name__)

MODES = ("cascade", "distill", "impressions")


def mode_settings(settings: Settings, mode: str, run_id: str, work: Path) -> Settings:
    data = settings.model_dump()
    data["topics"] = {**data["topics"], "prefix": f"replay-{run_id}-{mode}."}
    data["redis"] = {**data["redis"], "key_prefix": f"replay-{run_id}-{mode}"}
    data["model"] = {**data["model"], "mode": mode}
    data["worker"] = {**data["worker"], "app_id": f"prerank-replay-{run_id}-{mode}",
                      "data_dir": work / mode / "faust", "checkpoint_dir": work / mode / "checkpoints",
                      "teacher_path": work / "teacher.safetensors", "publish_interval_s": 2.0}
    return Settings(**data)


def wait_until_learned(store, expected_records_hint: int, timeout_s: float, quiet_s: float = 6.0) -> dict:
    """Wait for the trainer to publish a version after the last training record (counter quiet)."""
    last, last_change = None, time.monotonic()
    deadline = time.monotonic() + timeout_s
    meta = {}
    while time.monotonic() < deadline:
        current = store.current_version()
        meta = (store.meta(current) if current else None) or meta
        learned = meta.get("records_learned")
        if learned != last:
            last, last_change = learned, time.monotonic()
        elif time.monotonic() - last_change >= quiet_s and (learned or 0) > 0:
            break
        time.sleep(0.5)
    meta["expected_records_hint"] = expected_records_hint
    return meta


def run_mode(settings: Settings, mode: str, dataset, config: StreamConfig, teacher, prefit, streamed,
             work: Path, run_id: str, progress) -> dict:
    from agents.serving import redis_client
    from agents.store import ModelStore
    from streams.registry import create_topics

    ms = mode_settings(settings, mode, run_id, work)
    create_topics(ms.kafka.kafka_python_config(), ms.topics)
    state = ReplayState(dataset, config)
    for request in prefit:  # the same warm state the teacher was fitted with, without refitting
        state.after(request)
    logs = work / mode
    workers = [
        Worker(ms, "history,joiner,scorer", logs / "serving.log", index=0),
        Worker(ms, "ranker", logs / "ranker.log", index=1),
        Worker(ms, "trainer,publisher", logs / "trainer.log", index=2),
    ]
    store = ModelStore(redis_client(ms), ms.redis.key_prefix)
    try:
        deadline = time.monotonic() + 90
        while store.current_version() is None and time.monotonic() < deadline:
            for worker in workers:
                if not worker.alive():
                    raise RuntimeError(f"{worker.log_path} worker died:\n{worker.log_tail()}")
            time.sleep(0.5)
        time.sleep(3.0)  # consumer groups settle before the first request
        replay = StreamingReplay(ms, state, teacher, progress=lambda p: progress({"mode": mode, **p}))
        result = replay.run(streamed)
        meta = wait_until_learned(store, result["counts"]["answered"], timeout_s=180)
    finally:
        for worker in workers:
            worker.stop()
    unpruned = meta.get("weights_bytes_unpruned") or 0
    result.update({
        "path": "stream",
        "samples_learned": int(meta.get("samples_learned", 0)),
        "records_learned": int(meta.get("records_learned", 0)),
        "zero_row_ratio": float(meta.get("zero_row_ratio", float("nan"))),
        "export_size_reduction": 1.0 - meta["weights_bytes"] / unpruned if unpruned else float("nan"),
        "export_bytes": meta.get("weights_bytes"),
        "export_bytes_unpruned": unpruned,
        "final_version": meta.get("version"),
    })
    return result


def run_replay(
    settings: Settings, data: Path | None, modes: list[str], eval_from: str, report_dir: Path,
    until: str | None = None, train_until: str | None = None, baselines: bool = False,
    max_requests: int | None = 3000, n_candidates: int = 1000, progress=print,
) -> dict:
    from models.teacher import TeacherLearner

    report_dir.mkdir(parents=True, exist_ok=True)
    run_id = uuid.uuid4().hex[:6]
    work = report_dir / f"run-{run_id}"
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    dataset = load_dataset(data)
    eval_from_ms = local_date_ms(eval_from)
    config = StreamConfig(
        train_until_ms=local_date_ms(train_until) if train_until else eval_from_ms,
        eval_from_ms=eval_from_ms, until_ms=local_date_ms(until) if until else None,
        max_requests=max_requests, candidates=replace(CandidateConfig(), n_candidates=n_candidates),
    )
    prefit, streamed, sampling = replay_requests(dataset, config)
    progress({"dataset": dataset.report.to_dict() if hasattr(dataset.report, "to_dict") else str(dataset.report),
              **sampling})
    teacher = TeacherLearner()
    prefit_info = prefit_teacher(ReplayState(dataset, config), teacher, prefit)
    teacher.save(work / "teacher.safetensors")
    report: dict = {}
    for mode in modes:
        report[mode] = run_mode(settings, mode, dataset, config, teacher, prefit, streamed, work, run_id, progress)
    if baselines:
        from replay.baselines_offline import run_baselines

        report.update(run_baselines(dataset, config, teacher, prefit, streamed))
    details = {name: result.pop("latencies_ms", []) for name, result in report.items()}
    run = {"sampling": sampling, "prefit": prefit_info, "total_s": time.perf_counter() - started,
           "data": str(data) if data else "synthetic", "eval_from": eval_from, "until": until,
           "candidates": n_candidates, "work_dir": str(work), "latencies_ms": details}
    (report_dir / "report.json").write_text(json.dumps(report, indent=2, default=float))
    (report_dir / "run.json").write_text(json.dumps(run, indent=2, default=float))
    return report
