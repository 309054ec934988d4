"""Serving-side agents: catalog, profiles, user history, label joiner and scorer.

They share one Faust app (consumer group) because the history and profile tables are read by
the scorer for the same user: every input topic is keyed by user id and has the same partition
count, so a user's request, impressions and table rows live on one worker.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass

from faust import web as faust_web
from pydantic import ValidationError

from agents.app import Runtime
from agents.join_tables import JoinTables, check_store
from core.redis import RedisUnavailable
from funnel.catalog import ItemCatalog
from funnel.convert import (
    item_from_catalog,
    profile_fields,
    record_from_sample,
    snapshot_from_user,
    user_from_snapshot,
)
from funnel.history import HistoryConfig, UserHistory, local_hour_and_weekday
from funnel.labels import JoinConfig, LabelConfig, LabelJoin, build_request_sample
from funnel.scoring import Scorer
from funnel.store import ModelStore, open_store
from models.served import ServedStudent
from monitoring.metrics import PrerankMetrics
from streams import (
    impressions,
    item_catalog,
    rank_scores,
    score_requests,
    score_responses,
    training_samples,
    user_profiles,
)
from streams.exceptions import RecordError
from streams.score_requests import ScoreRequest
from streams.score_responses import ScoreResponse
from streams.training_samples import UserSnapshot

log = logging.getLogger(__name__)

MAX_HTTP_BODY = 1024 * 1024
# The join's own counters, by the metric event they are reported as (far-future events count as late).
JOIN_COUNTERS = {"late": ("late_", "future_"), "duplicate": ("duplicate_",), "orphan": ("orphan_requests",)}
UNRANKED_IDLE_FLUSH_S = 30.0


@dataclass
class Serving:
    """State shared by the serving agents of one worker."""

    runtime: Runtime
    metrics: PrerankMetrics
    store: ModelStore
    catalog: ItemCatalog
    history_config: HistoryConfig = HistoryConfig()
    scorer: Scorer | None = None


async def with_retries(write, what: str, first_delay_s: float = 0.2, max_delay_s: float = 5.0) -> None:
    """Retry a Redis write until it succeeds: the catalog must not lose updates during an outage."""
    delay = first_delay_s
    while True:
        try:
            write()
            return
        except RedisUnavailable as exc:
            log.warning("%s failed, retrying in %.1fs: %s", what, delay, exc)
            await asyncio.sleep(delay)
            delay = min(delay * 2, max_delay_s)


def install(runtime: Runtime, metrics: PrerankMetrics, agents: set[str]) -> Serving:
    settings = runtime.settings
    app = runtime.app
    store = open_store(settings.redis)
    serving = Serving(runtime, metrics, store, ItemCatalog(store, capacity=settings.worker.catalog_items))
    history = app.Table("user-history", default=None, partitions=settings.topics.partitions)
    profiles = app.Table("user-profiles", default=None, partitions=settings.topics.partitions)

    def snapshot(user_id: str, ts_ms: int, tab: int):
        state = history.get(user_id)
        user = UserHistory.from_dict(state, serving.history_config) if state else UserHistory(user_id, serving.history_config)
        return user.snapshot(ts_ms, tab=tab, profile=profile_fields(profiles.get(user_id)))

    if "catalog" in agents:
        @app.agent(runtime.topic("item_catalog"), name="catalog")
        async def catalog_agent(stream):
            async for event in stream.events():
                if event.value is None and event.key is not None:  # compaction tombstone
                    item_id = event.key.decode(errors="replace")
                    serving.catalog.remove(item_id)
                    await with_retries(lambda: serving.store.delete_item(item_id), "catalog delete")
                    continue
                record = await runtime.decode(item_catalog.CODEC, event, "catalog")
                if record is not None:
                    item = item_from_catalog(record)
                    serving.catalog.put(item)
                    await with_retries(lambda: serving.store.put_items([item]), "catalog write")

        @app.agent(runtime.topic("user_profiles"), name="profiles")
        async def profiles_agent(stream):
            async for event in stream.events():
                record = await runtime.decode(user_profiles.CODEC, event, "profiles")
                if record is not None:
                    profiles[record.user_id] = dict(record.fields)

    if "history" in agents:
        @app.agent(runtime.topic("impressions"), name="history")
        async def history_agent(stream):
            async for event in stream.events():
                record = await runtime.decode(impressions.CODEC, event, "history")
                if record is None:
                    continue
                state = history.get(record.user_id)
                user = (UserHistory.from_dict(state, serving.history_config) if state
                        else UserHistory(record.user_id, serving.history_config))
                user.observe(serving.catalog.features([record.item_id])[0], record.ts_ms)
                history[record.user_id] = user.to_dict()

    if "joiner" in agents:
        _install_joiner(runtime, serving)

    if "scorer" in agents:
        _install_scorer(runtime, serving, snapshot)
    return serving


def _install_joiner(runtime: Runtime, serving: Serving) -> None:
    """The label join over changelog-backed tables, one join per input partition
    (``agents/join_tables.py``): a restarted or newly assigned worker resumes the open windows."""
    settings = runtime.settings
    app = runtime.app
    check_store(settings.worker.store)
    label_config = LabelConfig(top_n=settings.model.top_n, n_easy_negatives=settings.model.easy_negatives,
                               seed=settings.model.seed)
    state = JoinTables(app, settings.topics.partitions, JoinConfig(window_ms=int(settings.worker.join_window_s * 1000)),
                       source_topic=runtime.topic_name("rank_scores"))
    # One event at a time across both agents and the timer: an event's table writes may reach the
    # changelog only after the records it emitted are delivered, and another event's flush of the
    # shared queue must not send them earlier.
    lock = asyncio.Lock()
    last_event = [time.monotonic()]
    idle_flush_s = settings.worker.join_idle_flush_s
    unranked_flush_s = max(UNRANKED_IDLE_FLUSH_S, idle_flush_s)
    metrics = serving.metrics

    @app.on_partitions_assigned.connect
    async def on_assigned(sender, assigned, **kwargs) -> None:
        state.on_assigned(assigned)

    async def emit(ready) -> None:
        deliveries = []
        for part in ready:
            if part.user is None:  # rank-scores without the scorer's snapshot: nothing to learn from
                metrics.count_join_event("orphan")
                continue
            snapshot = UserSnapshot.model_validate(part.user)
            user = user_from_snapshot(snapshot)
            ids = [r.item_id for r in part.ranked] + list(part.candidates) + [f.item_id for f in part.impressions]
            features = serving.catalog.features(list(dict.fromkeys(ids)))
            sample = build_request_sample(
                part.request_id, part.ts_ms, user, features, part.ranked, part.impressions, label_config,
            )
            # force: sent now rather than attached to the event's commit, so delivery can be awaited
            deliveries.append(await runtime.topic("training_samples").send(
                key=part.user_id.encode(), value=training_samples.CODEC.encode(record_from_sample(sample, snapshot)), force=True,
            ))
            metrics.joiner_records_total.inc()
        if deliveries:
            await asyncio.gather(*deliveries)

    def report(join: LabelJoin) -> None:
        for event, prefixes in JOIN_COUNTERS.items():
            total = sum(count for name, count in join.counters.items() if name.startswith(prefixes))
            if total:
                metrics.count_join_event(event, total)
        join.counters.clear()
        metrics.joiner_pending_requests.set(state.pending_requests())

    async def handle(partition: int, add) -> None:
        async with lock:
            found = state.join(partition)
            if found is None:  # buffered before its partition moved away; the new owner reads it
                return
            await emit(add(found.join))
            found.save_watermark()
            state.send_changelog()
            report(found.join)

    @app.agent(runtime.topic("rank_scores"), name="joiner-rank-scores")
    async def joiner_rank_scores(stream):
        async for event in stream.events():
            record = await runtime.decode(rank_scores.CODEC, event, "joiner")
            if record is None:
                continue
            last_event[0] = time.monotonic()
            user = None if record.user is None else record.user.model_dump(mode="json")
            await handle(event.message.partition, lambda join: join.add_rank_scores(
                record.request_id, record.user_id, record.ts_ms, record.items, record.candidates, user=user))

    @app.agent(runtime.topic("impressions"), name="joiner-impressions")
    async def joiner_impressions(stream):
        async for event in stream.events():
            record = await runtime.decode(impressions.CODEC, event, "joiner")
            if record is None:
                continue
            last_event[0] = time.monotonic()
            await handle(event.message.partition,
                         lambda join: join.add_impression(record.request_id, record.user_id, record))

    @app.timer(interval=1.0)
    async def close_idle_windows():
        # With no new events the event-time watermark stalls; after a quiet spell, close what is
        # open. Requests still waiting for their rank-scores get longer: a fine ranker starved of
        # CPU can fall seconds behind the impressions, and closing them would orphan them.
        if app.rebalancing:  # tables are being recovered: no join may be built from them yet
            return
        idle_s = time.monotonic() - last_event[0]
        async with lock:
            for partition in sorted(state.owned):
                found = state.join(partition)  # also resumes partitions that have had no event yet
                if found is not None and idle_s > idle_flush_s and found.join.pending:
                    await emit(found.join.flush(keep_unranked=idle_s <= unranked_flush_s))
                    state.send_changelog()
                    report(found.join)
            metrics.joiner_pending_requests.set(state.pending_requests())


def _install_scorer(runtime: Runtime, serving: Serving, snapshot) -> None:
    settings = runtime.settings
    app = runtime.app
    worker = settings.worker
    scorer = Scorer(
        serving.store, ServedStudent.from_bytes, dtype=worker.vector_dtype, lru_items=worker.local_cache_items,
        max_candidates=worker.max_candidates, max_k=worker.max_k,
        easy_negatives=settings.model.easy_negatives, audit_every=worker.audit_every, catalog=serving.catalog,
    )
    metrics = serving.metrics

    def answer(request: ScoreRequest) -> ScoreResponse:
        started = time.perf_counter()
        user = snapshot(request.user_id, request.ts_ms, request.context.tab)
        hour, weekday = request.context.hour, request.context.weekday
        if hour == 0 and weekday == 0:
            hour, weekday = local_hour_and_weekday(request.ts_ms, serving.history_config.utc_offset_hours)
        user = type(user)(**{**user.__dict__, "hour": hour, "weekday": weekday})
        response = scorer.score(request, user)
        elapsed = time.perf_counter() - started
        metrics.scorer_requests_total.inc()
        if response.error:
            metrics.scorer_errors_total.labels(reason=_error_reason(response.error)).inc()
        else:
            metrics.scorer_latency_seconds.observe(elapsed)
            metrics.scorer_candidates.observe(len(request.candidates))
            metrics.observe_item_vectors(**{tier: response.cache_tiers.get(tier, 0)
                                            for tier in ("local", "redis", "computed")})
        return response.model_copy(update={"latency_ms": elapsed * 1000, "ts_ms": request.ts_ms,
                                           "user": snapshot_from_user(user)})

    @app.agent(runtime.topic("score_requests"), name="scorer")
    async def scorer_agent(stream):
        async for event in stream.events():
            try:
                request = score_requests.CODEC.decode(
                    event.value, topic=event.message.topic, partition=event.message.partition,
                    offset=event.message.offset,
                )
            except RecordError as error:
                await runtime.dead_letter(error, event.key, event.value, "scorer")
                metrics.scorer_errors_total.labels(reason="invalid_request").inc()
                continue
            try:
                response = answer(request)
            except Exception as exc:  # noqa: BLE001 - one bad request must not kill the agent
                log.exception("scoring request %s failed", request.request_id)
                metrics.scorer_errors_total.labels(reason="internal").inc()
                response = ScoreResponse(request_id=request.request_id, user_id=request.user_id,
                                         error=f"internal error: {type(exc).__name__}")
            await runtime.topic("score_responses").send(
                key=request.user_id.encode(), value=score_responses.CODEC.encode(response)
            )

    class ScoreView(faust_web.View):
        """``POST /score`` with a JSON score request: 400 bad input, 411 no length, 413 huge body."""

        async def post(self, request, **kwargs):
            length = request.content_length
            if length is None:
                return self.json({"error": "a Content-Length header is required"}, status=411)
            if length > MAX_HTTP_BODY:
                return self.json({"error": f"body of {length} bytes exceeds {MAX_HTTP_BODY}"}, status=413)
            try:
                body = await request.read()
                if len(body) > MAX_HTTP_BODY:
                    return self.json({"error": f"body exceeds {MAX_HTTP_BODY} bytes"}, status=413)
                score_request = ScoreRequest.model_validate(json.loads(body))
            except (ValueError, RecursionError, ValidationError) as exc:
                metrics.scorer_errors_total.labels(reason="invalid_request").inc()
                return self.json({"error": f"invalid score request: {str(exc)[:500]}"}, status=400)
            response = answer(score_request)
            status = 200 if response.error is None else 422
            return self.json(response.model_dump(mode="json", exclude={"user"}), status=status)

    app.page("/score")(ScoreView)

    reported_version = [None]

    @app.timer(interval=0.5)
    async def refresh_version():
        scorer.refresh(force=True)
        if scorer.version is not None and scorer.version != reported_version[0]:
            # the switch may have happened on a request's own check, between two ticks
            metrics.set_model_version("scorer", scorer.version, time.time())
            reported_version[0] = scorer.version

    serving.scorer = scorer


def _error_reason(error: str) -> str:
    if error.startswith("too many candidates"):
        return "too_many_candidates"
    if error.startswith("no model"):
        return "no_model"
    if error.startswith("k too large"):
        return "invalid_request"
    return "internal"
