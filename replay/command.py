"""``prerank replay``: the closed funnel on a dataset, through the real agents, one run per mode.

For each ``--mode`` the replay gets fresh topics, a fresh Redis key prefix and its own workers
(serving: history, joiner, scorer; the fine ranker; trainer + publisher with that loss mode), so
modes never share state. ``--baselines`` adds the article's older pre-rankers and ``--peers``
Vowpal Wabbit and river LR-FTRL, evaluated on the same requests and candidates in process (they
are not part of the streaming system); they learn the pre-period's logged exposures first, as the
fine ranker and the student's warm start do, then every streamed request. The report holds, per
mode, baseline and peer, the metrics computed over events at or after ``--eval-from``.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from dataclasses import replace
from pathlib import Path

from kafka.errors import KafkaError

from core.kafka import kafka_python_options
from core.processes import Worker
from core.redis import RedisUnavailable, redis_client
from core.settings import Settings
from funnel.store import ModelStore, open_store
from replay.candidates import CandidateConfig
from replay.evaluator import BASELINE_BATCH_REQUESTS
from replay.exceptions import ReplayInterrupted
from replay.load import load_dataset
from replay.offline import local_date_ms
from replay.progress import RunProgress, find_resumable
from replay.sparsity import request_samples, sweep
from replay.state import ReplayState
from replay.stream import (
    StreamConfig,
    StreamingReplay,
    prefit_teacher,
    replay_requests,
)
from replay.warm_start import install_as_first_checkpoint, pretrain_student
from streams.registry import delete_topics

log = logging.getLogger(__name__)

MODES = ("cascade", "distill", "impressions", "ranked")
MIN_JOIN_WINDOW_S = 3600.0
MAX_JOIN_WINDOW_S = 12 * 3600.0


def replay_join_window_s(requests, inflight: int) -> float:
    """The joiner's event-time window for a replay: four times the widest event-time span of
    ``inflight`` consecutive requests, within [1 h, 12 h].

    The replay compresses event time: up to ``inflight`` requests, possibly hours apart in event
    time, are in flight at once, and a narrower window drops their impressions as late. The
    joiner's watermark is the largest event time over all partitions, and a CPU-starved consumer
    can run one partition dozens of requests ahead of the other (CI: twice the span was not
    enough), hence four.

    >>> from types import SimpleNamespace
    >>> requests = [SimpleNamespace(ts_ms=i * 1_800_000) for i in range(10)]  # one every 30 min
    >>> replay_join_window_s(requests, inflight=4) / 3600
    6.0
    """
    ts = [r.ts_ms for r in requests]
    widest = max((ts[i + inflight - 1] - ts[i] for i in range(len(ts) - inflight + 1)), default=0)
    return min(MAX_JOIN_WINDOW_S, max(MIN_JOIN_WINDOW_S, 4 * widest / 1000))


def mode_settings(settings: Settings, mode: str, run_id: str, work: Path,
                  join_window_s: float = MIN_JOIN_WINDOW_S) -> Settings:
    data = settings.model_dump()
    data["topics"] = {**data["topics"], "prefix": f"replay-{run_id}-{mode}."}
    data["redis"] = {**data["redis"], "key_prefix": f"replay-{run_id}-{mode}"}
    data["model"] = {**data["model"], "mode": mode}
    data["worker"] = {**data["worker"], "app_id": f"prerank-replay-{run_id}-{mode}",
                      "data_dir": work / mode / "faust", "checkpoint_dir": work / mode / "checkpoints",
                      "teacher_path": work / "teacher.safetensors", "join_window_s": join_window_s}
    return Settings(**data)


def wait_until_learned(store, answered: int, timeout_s: float, joiner=None, quiet_s: float = 45.0) -> dict:
    """Wait for a published version that holds one training record per answered request; returns
    that version's metadata.

    ``joiner()`` (the serving worker's :func:`joiner_counts`) ends the wait early when the joiner
    has accounted for every answered request and the trainer learned every record it emitted (the
    rest were dropped as orphans). Without progress of either count for ``quiet_s``, it gives up.
    """
    last, last_change = None, time.monotonic()
    deadline = time.monotonic() + timeout_s
    meta = {}
    while time.monotonic() < deadline:
        current = store.current_version()
        meta = (store.meta(current) if current else None) or meta
        learned = meta.get("records_learned") or 0
        if learned >= answered:
            break
        counts = joiner() if joiner is not None else {}
        emitted = counts.get("joiner_records")
        if emitted is not None and emitted + counts.get("joiner_orphan", 0) >= answered and learned >= emitted:
            break
        if (learned, emitted) != last:
            last, last_change = (learned, emitted), time.monotonic()
        elif time.monotonic() - last_change >= quiet_s and learned > 0:
            log.warning("stopped waiting: %d of %d records learned, joiner %s", learned, answered, counts)
            break
        time.sleep(0.5)
    meta["expected_records"] = answered
    return meta


def joiner_counts(settings: Settings) -> dict[str, int]:
    """The serving worker's (index 0) join counters: records emitted and events dropped, so a
    report can account for every request (answered = learned + dropped)."""
    from monitoring.scrape import metric_sum, scrape

    try:
        samples = scrape(settings.worker.metrics_port, settings.worker.metrics_host)
    except OSError as exc:
        log.warning("joiner counters unavailable (worker metrics at port %d): %s", settings.worker.metrics_port, exc)
        return {}
    counts = {"joiner_records": int(metric_sum(samples, "prerank_joiner_records_total"))}
    for event in ("late", "orphan", "duplicate"):
        counts[f"joiner_{event}"] = int(metric_sum(samples, "prerank_joiner_events_total", event=event))
    return counts


def wait_for_workers(store, workers: list[Worker], timeout_s: float = 90.0) -> None:
    """Until the trainer has published a version (so the scorer can answer); names a dead worker."""
    deadline = time.monotonic() + timeout_s
    while store.current_version() is None and time.monotonic() < deadline:
        for worker in workers:
            if not worker.alive():
                raise RuntimeError(f"{worker.log_path} worker died:\n{worker.log_tail()}")
        time.sleep(0.5)


def wait_for_groups(settings: Settings, groups: list[str], workers: list[Worker], timeout_s: float = 90.0) -> None:
    """Until every consumer group is Stable with members, so the first requests are not held up
    by a rebalance; names a dead worker. After ``timeout_s`` it warns and goes on (nothing is
    lost: new groups read from the earliest offset)."""
    from kafka.admin import KafkaAdminClient

    admin = KafkaAdminClient(**kafka_python_options(settings.kafka), client_id="prerank-replay")
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            described = admin.describe_groups(groups)
            if all(group["group_state"] == "Stable" and group["members"] for group in described.values()):
                return
            for worker in workers:
                if not worker.alive():
                    raise RuntimeError(f"{worker.log_path} worker died:\n{worker.log_tail()}")
            if time.monotonic() > deadline:
                log.warning("consumer groups not stable after %.0f s: %s", timeout_s,
                            {name: group["group_state"] for name, group in described.items()})
                return
            time.sleep(0.5)  # a poll interval: the condition is re-checked
    finally:
        admin.close()


def workers_cpu(workers: list[Worker], before: list[float], wall_s: float, requests: int) -> dict[str, dict]:
    """Each worker's CPU over the stream, by its agents: the share of one core and the ms per
    answered request (which stage of the closed funnel limits its rate)."""
    out = {}
    for worker, start in zip(workers, before):
        used = worker.cpu_seconds() - start
        out[worker.agents] = {"cpu_share": used / wall_s if wall_s > 0 else 0.0,
                              "cpu_ms_per_request": 1000 * used / requests if requests else 0.0}
    return out


def run_mode(settings: Settings, mode: str, dataset, config: StreamConfig, teacher, prefit, streamed,
             work: Path, run_id: str, progress, baselines: dict | None = None,
             on_started=None, on_finished=None, student=None) -> tuple[dict, dict]:
    """One mode's funnel; resumes from ``work/MODE/eval.json`` when an earlier attempt left one.

    Raises :class:`~replay.exceptions.ReplayInterrupted` on Ctrl-C, after the requests in flight
    were answered, their training records learned (best effort) and the replay checkpointed."""
    from streams.registry import create_topics

    ms = mode_settings(settings, mode, run_id, work, replay_join_window_s(streamed, config.inflight))
    create_topics(kafka_python_options(ms.kafka), ms.topics)
    state = ReplayState(dataset, config)
    mode_dir = work / mode  # its replay checkpoint and worker logs (the workers' own state: ms.worker)
    resuming = (mode_dir / "eval.json").exists()
    # The riders learn the pre-period's logged exposures, as the fine ranker did and the student's
    # warm start does (a resumed run restores what they learned).
    learn_prefit(state, prefit, baselines if baselines and not resuming else {})
    replay = StreamingReplay(ms, state, teacher, progress=lambda p: progress({"mode": mode, **p}),
                             baselines=baselines)
    if resuming:
        by_id = {r.request_id: r for r in streamed}
        completed = replay.restore(mode_dir)
        for request_id in completed:  # histories and popularity as they were when it stopped
            state.after(by_id[request_id])
        progress({"mode": mode, "resumed_after_requests": len(completed), "of": len(streamed)})
    if student is not None:  # the trainer starts from it (unless a resumed run has its own checkpoint)
        install_as_first_checkpoint(student, mode, ms.worker.checkpoint_dir)
    workers = [
        Worker(ms, "history,joiner,scorer", mode_dir / "serving.log", index=0),
        Worker(ms, "ranker", mode_dir / "ranker.log", index=1),
        Worker(ms, "trainer,publisher", mode_dir / "trainer.log", index=2),
    ]
    store = open_store(ms.redis)
    try:
        wait_for_workers(store, workers)
        wait_for_groups(ms, [ms.worker.app_id, f"{ms.worker.app_id}-ranker"], workers)
        if on_started is not None:
            on_started(ms)
        cpu_before, wall_before = [worker.cpu_seconds() for worker in workers], time.perf_counter()
        try:
            result = replay.run(streamed, checkpoint=lambda: replay.save(mode_dir))
        except ReplayInterrupted:
            # What is in flight reaches the trainer's checkpoint before the workers stop (open
            # joins would survive in the joiner's tables, but the saved progress counts only what
            # was learned); a second Ctrl-C or SIGTERM skips the wait.
            try:
                wait_until_learned(store, len(replay.completed), timeout_s=60, quiet_s=4.0)
            except KeyboardInterrupt:
                pass
            raise
        result["workers_cpu"] = workers_cpu(workers, cpu_before, time.perf_counter() - wall_before,
                                            result["counts"]["answered"])
        meta = wait_until_learned(store, result["counts"]["answered"], timeout_s=180,
                                  joiner=lambda: joiner_counts(ms))
        result["counts"].update(joiner_counts(ms))
        if on_finished is not None:
            on_finished(ms)
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
        "ftrl_l1": ms.model.trainer_ftrl_l1,
    })
    return result, replay.baseline_summaries()


DAY_MS = 86_400_000
UTC_OFFSET_MS = 8 * 3_600_000  # KuaiRand's dates are Beijing time


def default_dates(dataset, eval_days: int = 2) -> tuple[int, int]:
    """(train_until, eval_from): evaluate the last ``eval_days`` local days, pre-fit before the day
    before them.

    >>> from types import SimpleNamespace
    >>> from replay.offline import local_date_ms
    >>> log = SimpleNamespace(exposures=[SimpleNamespace(ts_ms=local_date_ms("2022-04-25") + 5),
    ...                                  SimpleNamespace(ts_ms=local_date_ms("2022-05-05") + 9)])
    >>> [d == local_date_ms(day) for d, day in zip(default_dates(log), ("2022-05-03", "2022-05-04"))]
    [True, True]
    """
    last_day = (dataset.exposures[-1].ts_ms + UTC_OFFSET_MS) // DAY_MS * DAY_MS - UTC_OFFSET_MS
    eval_from = last_day - (eval_days - 1) * DAY_MS
    return eval_from - DAY_MS, eval_from


def new_baselines(dataset=None, baselines: bool = True, peers: bool = False) -> dict:
    """The riders of a replay's first mode: the article's baselines and / or the peers (Vowpal
    Wabbit, river LR-FTRL over ``dataset``'s catalog, :func:`replay.peers.new_peers`)."""
    from models.baselines import GlobalCTR, LogisticFTRL, OnlineTree

    riders = {"global_ctr": GlobalCTR(), "logistic_ftrl": LogisticFTRL(), "online_tree": OnlineTree()} if baselines else {}
    if peers:
        from replay.peers import new_peers

        riders.update(new_peers(list(dataset.catalog.values())))
    return riders


def learn_prefit(state: ReplayState, prefit, riders: dict, batch: int = BASELINE_BATCH_REQUESTS) -> None:
    """Walk the pre-period (histories and popularity warm up); ``riders`` learn its logged samples."""
    pending = []
    for request in prefit:
        if riders:
            pending.append(state.logged_sample(request, state.snapshot(request)))
        state.after(request)
        if len(pending) >= batch:
            for rider in riders.values():
                rider.learn_many(pending)
            pending = []
    for rider in riders.values() if pending else ():
        rider.learn_many(pending)


def run_replay(
    settings: Settings, data: Path | None, modes: list[str], eval_from: str | None, report_dir: Path,
    until: str | None = None, train_until: str | None = None, baselines: bool = False, peers: bool = False,
    max_requests: int | None = 3000, n_candidates: int = 1000, progress=print, on_mode_started=None,
    speed: float | None = None, on_mode_finished=None, resume: bool = False,
    l1_sweep: tuple[float, ...] = (), l1_sweep_requests: int = 20_000, warm_start: bool = True,
    inflight: int = StreamConfig.inflight,
) -> dict:
    """Replay ``data`` (None: synthetic) once per mode; ``on_mode_started(settings)`` is called when
    a mode's workers are up, ``on_mode_finished(settings)`` after they learned everything and
    before they stop (e.g. to attach or read a monitor). ``l1_sweep`` adds FTRL's l1 against
    all-zero rows, export size and AUC on the last ``l1_sweep_requests`` replayed requests, in
    process (``run.json``; the report plots it). ``warm_start`` trains the student on the
    pre-period the fine ranker was fitted on before the stream starts (:mod:`replay.warm_start`).
    ``inflight``: requests outstanding at once (the closed funnel's concurrency).

    With ``resume`` the newest interrupted run under ``report_dir`` continues with its own
    parameters (the other arguments are ignored): same run id, topics, Redis prefix, teacher,
    trainer checkpoints and evaluation logs; finished modes are not run again."""
    from models.teacher import TeacherLearner

    report_dir.mkdir(parents=True, exist_ok=True)
    if resume:
        run = RunProgress.load(find_resumable(report_dir))
        progress({"resuming": str(run.directory), "finished_modes": list(run.finished),
                  "pending_modes": run.pending_modes()})
    else:
        run = RunProgress(report_dir / f"run-{uuid.uuid4().hex[:6]}", params={
            "data": str(data) if data else None, "modes": list(modes), "eval_from": eval_from, "until": until,
            "train_until": train_until, "baselines": baselines, "peers": peers, "max_requests": max_requests,
            "candidates": n_candidates, "speed": speed, "l1_sweep": list(l1_sweep),
            "l1_sweep_requests": l1_sweep_requests, "warm_start": warm_start, "inflight": inflight,
        })
        run.save()
    params, work = run.params, run.directory
    started = time.perf_counter()
    dataset = load_dataset(Path(params["data"]) if params["data"] else None)
    default_train_until, default_eval_from = default_dates(dataset)
    eval_from_ms = local_date_ms(params["eval_from"]) if params["eval_from"] else default_eval_from
    config = StreamConfig(
        train_until_ms=(local_date_ms(params["train_until"]) if params["train_until"]
                        else min(default_train_until, eval_from_ms)),
        eval_from_ms=eval_from_ms, until_ms=local_date_ms(params["until"]) if params["until"] else None,
        max_requests=params["max_requests"], candidates=replace(CandidateConfig(), n_candidates=params["candidates"]),
        speed=params["speed"], inflight=params.get("inflight", StreamConfig.inflight),  # older runs: the default
    )
    prefit, streamed, sampling = replay_requests(dataset, config)
    progress({"dataset": dataset.report.to_dict() if hasattr(dataset.report, "to_dict") else str(dataset.report),
              **sampling})
    teacher_path = work / "teacher.safetensors"
    if run.prefit is not None and teacher_path.exists():
        teacher = TeacherLearner.load(teacher_path)
    else:
        teacher = TeacherLearner()
        run.prefit = prefit_teacher(ReplayState(dataset, config), teacher, prefit)
        teacher.save(teacher_path)
        run.save()
    student = None
    if params.get("warm_start") and run.pending_modes():
        student, warm = pretrain_student(settings, dataset, prefit)  # seeded: the same on resume
        run.prefit = {**run.prefit, **warm}
        progress(warm)
        run.save()
    for mode in run.pending_modes():
        # Baselines ride along the first mode's replay: same requests, same candidates.
        wanted = params["baselines"], params.get("peers", False)  # older runs: no peers
        riders = (new_baselines(dataset, *wanted) if any(wanted) and mode == params["modes"][0] else None)
        run.finished[mode], from_baselines = run_mode(settings, mode, dataset, config, teacher, prefit, streamed,
                                                      work, run.run_id, progress, riders, on_mode_started,
                                                      on_mode_finished, student)
        run.baselines.update(from_baselines)
        run.save()
    if params.get("l1_sweep") and "l1_sweep" not in run.extras:
        progress({"l1_sweep": params["l1_sweep"], "requests": params["l1_sweep_requests"]})
        swept = (prefit + streamed)[-params["l1_sweep_requests"]:]
        run.extras["l1_sweep"] = {"requests": len(swept),
                                  "results": sweep(request_samples(dataset, swept), params["l1_sweep"])}
        run.save()
    report = {**run.finished, **run.baselines}
    details = {name: result.get("latencies_ms", []) for name, result in report.items()}
    report = {name: {k: v for k, v in result.items() if k != "latencies_ms"} for name, result in report.items()}
    summary = {"sampling": sampling, "prefit": run.prefit, "total_s": time.perf_counter() - started,
               "data": params["data"] or "synthetic", "eval_from": params["eval_from"], "until": params["until"],
               "candidates": params["candidates"], "work_dir": str(work), "latencies_ms": details,
               **run.extras}
    (report_dir / "report.json").write_text(json.dumps(report, indent=2, default=float))
    (report_dir / "run.json").write_text(json.dumps(summary, indent=2, default=float))
    run.complete = True
    run.save()
    try:  # a finished run's topics are not needed again (an interrupted run keeps them to resume)
        delete_topics(kafka_python_options(settings.kafka), (f"replay-{run.run_id}-", f"prerank-replay-{run.run_id}-"))
    except KafkaError as error:
        log.warning("could not delete the topics of run %s: %s", run.run_id, error)
    for mode in params["modes"]:  # nor its versions in Redis (a mode's are ~20 MB each, for an hour)
        try:
            ModelStore(redis_client(settings.redis), f"replay-{run.run_id}-{mode}").delete_everything()
        except RedisUnavailable as error:
            log.warning("could not delete the Redis keys of run %s: %s", run.run_id, error)
    return report
