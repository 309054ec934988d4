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

import aiohttp
import aiohttp.web
from faust import web as faust_web
from pydantic import ValidationError

from agents.app import Runtime, bounded, error_reason, frames
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
from monitoring.metrics import CACHE_TIERS, PrerankMetrics
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
# The join's own counters, by the metric event they are reported as (far-future events count as
# late; "ahead": joined, but the watermark held back, see funnel.labels).
JOIN_COUNTERS = {"late": ("late_", "future_"), "duplicate": ("duplicate_",), "orphan": ("orphan_requests",),
                 "ahead": ("ahead_",)}
UNRANKED_IDLE_FLUSH_S = 30.0
MAX_AHEAD_MS = 5 * 60_000  # the joiner's watermark bound, at most its window (funnel.labels)
SEND_RETRIES = 5  # a training record whose delivery failed for a reason other than its size
SEND_RETRY_FIRST_S, SEND_RETRY_MAX_S = 0.5, 8.0


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

    # Every step below runs in runtime.isolated: whatever one record makes fail becomes its dead
    # letter (topic, partition, offset, reason) and the agent goes on with the next (agents/app.py).
    if "catalog" in agents:
        @app.agent(runtime.topic("item_catalog"), name="catalog")
        async def catalog_agent(stream):
            async for event in stream.events():
                async with runtime.isolated("catalog", event):
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
                async with runtime.isolated("profiles", event):
                    record = await runtime.decode(user_profiles.CODEC, event, "profiles")
                    if record is not None and await runtime.check_user_key(record, event, "profiles"):
                        profiles[record.user_id] = dict(record.fields)

    if "history" in agents:
        @app.agent(runtime.topic("impressions"), name="history")
        async def history_agent(stream):
            async for event in stream.events():
                async with runtime.isolated("history", event):
                    record = await runtime.decode(impressions.CODEC, event, "history")
                    if record is None or not await runtime.check_user_key(record, event, "history"):
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
    (``agents/join_tables.py``): a restarted or newly assigned worker resumes the open windows.

    A request that cannot be emitted (its snapshot or sample does not validate, its record is over
    the budget, the broker refuses it) becomes a dead letter naming its rank-scores record
    (topic, partition, offset), and the others of the same close are emitted as usual; a delivery
    that fails for another reason is retried a few times first. The idle-flush timer catches per
    partition: one partition's bad state never stops the others, nor the worker."""
    settings = runtime.settings
    app = runtime.app
    check_store(settings.worker.store)
    label_config = LabelConfig(top_n=settings.model.top_n, n_easy_negatives=settings.model.easy_negatives,
                               seed=settings.model.seed)
    window_ms = int(settings.worker.join_window_s * 1000)
    state = JoinTables(app, settings.topics.partitions,
                       JoinConfig(window_ms=window_ms, max_ahead_ms=min(MAX_AHEAD_MS, window_ms)),
                       source_topic=runtime.topic_name("rank_scores"))
    rank_scores_topic = runtime.topic_name("rank_scores")
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

    def training_record(part) -> bytes:
        snapshot = UserSnapshot.model_validate(part.user)
        user = user_from_snapshot(snapshot)
        ids = [r.item_id for r in part.ranked] + list(part.candidates) + [f.item_id for f in part.impressions]
        features = serving.catalog.features(list(dict.fromkeys(ids)))
        sample = build_request_sample(
            part.request_id, part.ts_ms, user, features, part.ranked, part.impressions, label_config,
        )
        return training_samples.CODEC.encode(record_from_sample(sample, snapshot))

    async def not_emitted(part, partition: int, exc: BaseException) -> None:
        """A closed request whose record cannot be written: a dead letter of its rank-scores."""
        offset = -1 if part.offset is None else int(part.offset)
        head = json.dumps({"request_id": part.request_id, "user_id": part.user_id, "ts_ms": part.ts_ms,
                           "ranked": len(part.ranked or ()), "candidates": len(part.candidates),
                           "impressions": len(part.impressions)}).encode()
        await runtime.survive("joiner", exc, topic=rank_scores_topic, partition=partition, offset=offset,
                              key=part.user_id.encode(), value=head,
                              what=f"training record of request {bounded(part.request_id, 80)!r}")

    async def deliver(part, value: bytes):
        """Send one training record and await its delivery; a failure other than the record's
        size is retried with backoff (the broker restarting), then raised."""
        delay = SEND_RETRY_FIRST_S
        for attempt in range(SEND_RETRIES + 1):
            try:
                # force: sent now rather than attached to the event's commit, so delivery can be awaited
                delivery = await runtime.topic("training_samples").send(
                    key=part.user_id.encode(), value=value, force=True)
                return await delivery
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - classified below
                if error_reason(exc) == "output_too_large" or attempt == SEND_RETRIES:
                    raise
                log.warning("training record of %.80s not delivered, retrying in %.1fs: %s", part.request_id, delay,
                            bounded(f"{type(exc).__name__}: {exc}"))
                await asyncio.sleep(delay)
                delay = min(delay * 2, SEND_RETRY_MAX_S)

    async def emit(ready, partition: int) -> None:
        sends = []
        for part in ready:
            if part.user is None:  # rank-scores without the scorer's snapshot: nothing to learn from
                metrics.count_join_event("orphan")
                continue
            try:
                sends.append((part, asyncio.ensure_future(deliver(part, training_record(part)))))
            except Exception as exc:  # noqa: BLE001 - this request only; the others are emitted
                await not_emitted(part, partition, exc)
        for part, delivery in sends:
            try:
                await delivery
                metrics.joiner_records_total.inc()
            except asyncio.CancelledError:
                for _, other in sends:
                    other.cancel()
                raise
            except Exception as exc:  # noqa: BLE001
                await not_emitted(part, partition, exc)

    def report(join: LabelJoin) -> None:
        for event, prefixes in JOIN_COUNTERS.items():
            total = sum(count for name, count in join.counters.items() if name.startswith(prefixes))
            if total:
                metrics.count_join_event(event, total)
        join.counters.clear()
        metrics.joiner_pending_requests.set(state.pending_requests())

    def settle(found) -> None:
        """The join's table writes go to the changelog, after the records they close were sent."""
        found.save_watermark()
        state.send_changelog()
        report(found.join)

    async def handle(steps) -> None:
        """One joiner step over a batch of ``(event, add)``: each event's addition to its
        partition's join (a failing one is that event's dead letter), then every request the
        batch closed emitted at once, then the changelog of the whole batch."""
        async with lock:
            touched = {}
            ready: dict[int, list] = {}
            for event, add in steps:
                async with runtime.isolated("joiner", event):
                    found = state.join(event.message.partition)
                    if found is None:  # buffered before its partition moved away; the new owner reads it
                        continue
                    touched[found.partition] = found
                    ready.setdefault(found.partition, []).extend(add(found.join))
            try:  # emit raises only when cancelled; what the joins did is kept either way
                await asyncio.gather(*(emit(parts, partition) for partition, parts in ready.items()))
            finally:
                for found in touched.values():
                    found.save_watermark()
                state.send_changelog()
                for found in touched.values():
                    report(found.join)

    # What an event adds to its partition's join, as a function of the join: bound per record here
    # (a lambda in the batch loop would see only the loop's last record).
    def adding_rank_scores(record, event):
        user = None if record.user is None else record.user.model_dump(mode="json")
        offset = event.message.offset
        return lambda join: join.add_rank_scores(record.request_id, record.user_id, record.ts_ms, record.items,
                                                 record.candidates, user=user, offset=offset)

    def adding_impression(record, event):
        return lambda join: join.add_impression(record.request_id, record.user_id, record)

    async def joiner_steps(events, codec, adding) -> list:
        """The batch's valid records as ``(event, add)``; each invalid one is a dead letter."""
        steps = []
        for event in events:
            async with runtime.isolated("joiner", event):
                record = await runtime.decode(codec, event, "joiner")
                if record is not None and await runtime.check_user_key(record, event, "joiner"):
                    steps.append((event, adding(record, event)))
        return steps

    async def join_batches(stream, codec, adding) -> None:
        async for events in stream.take_events(settings.worker.joiner_batch, within=settings.worker.joiner_batch_wait_s):
            steps = await joiner_steps(events, codec, adding)
            if steps:
                last_event[0] = time.monotonic()
                await handle(steps)

    @app.agent(runtime.topic("rank_scores"), name="joiner-rank-scores")
    async def joiner_rank_scores(stream):
        await join_batches(stream, rank_scores.CODEC, adding_rank_scores)

    @app.agent(runtime.topic("impressions"), name="joiner-impressions")
    async def joiner_impressions(stream):
        await join_batches(stream, impressions.CODEC, adding_impression)

    @app.timer(interval=1.0)
    async def close_idle_windows():
        # With no new events the event-time watermark stalls; after a quiet spell, close what is
        # open. Requests still waiting for their rank-scores get longer: a fine ranker starved of
        # CPU can fall seconds behind the impressions, and closing them would orphan them.
        # A timer that raises stops the whole worker (Faust treats it as a crash): each partition
        # is closed on its own, and a failure is logged, counted and dead-lettered.
        if app.rebalancing:  # tables are being recovered: no join may be built from them yet
            return
        idle_s = time.monotonic() - last_event[0]
        async with lock:
            for partition in sorted(state.owned):
                async with runtime.isolated("joiner", topic=rank_scores_topic, partition=partition,
                                            what="idle flush of partition"):
                    found = state.join(partition)  # also resumes partitions that have had no event yet
                    if found is not None and idle_s > idle_flush_s and found.join.pending:
                        try:
                            await emit(found.join.flush(keep_unranked=idle_s <= unranked_flush_s), partition)
                        except Exception:
                            settle(found)
                            raise
                        settle(found)
            metrics.joiner_pending_requests.set(state.pending_requests())


def _install_scorer(runtime: Runtime, serving: Serving, snapshot) -> None:
    settings = runtime.settings
    app = runtime.app
    worker = settings.worker
    scorer = Scorer(
        serving.store, ServedStudent.from_bytes, computed_items=worker.local_cache_items,
        max_candidates=worker.max_candidates, max_k=worker.max_k,
        easy_negatives=settings.model.easy_negatives, audit_every=worker.audit_every, catalog=serving.catalog,
    )
    metrics = serving.metrics

    def user_features(request: ScoreRequest):
        user = snapshot(request.user_id, request.ts_ms, request.context.tab)
        hour, weekday = request.context.hour, request.context.weekday
        if hour == 0 and weekday == 0:
            hour, weekday = local_hour_and_weekday(request.ts_ms, serving.history_config.utc_offset_hours)
        return type(user)(**{**user.__dict__, "hour": hour, "weekday": weekday})

    def answer_many(requests: list[ScoreRequest]) -> list[ScoreResponse]:
        """The responses to a batch, each with its user snapshot attached, counted in the metrics.
        Raises if the batch cannot be scored (the caller then answers one by one)."""
        started = time.perf_counter()
        users = [user_features(request) for request in requests]
        features_s = time.perf_counter() - started
        responses = scorer.score_many(requests, users)
        elapsed = time.perf_counter() - started
        stages = {"user_features": features_s, **scorer.stage_s}
        scorer.stage_s = dict.fromkeys(scorer.stage_s, 0.0)
        metrics.add_scorer_stages(stages)
        out = []
        for request, user, response in zip(requests, users, responses):
            metrics.scorer_requests_total.inc()
            if response.error:
                metrics.scorer_errors_total.labels(reason=_error_reason(response.error)).inc()
            else:
                metrics.scorer_latency_seconds.observe(elapsed / len(requests))
                metrics.scorer_candidates.observe(len(request.candidates))
                metrics.observe_item_vectors(**{tier: response.cache_tiers.get(tier, 0) for tier in CACHE_TIERS})
            out.append(response.model_copy(update={"latency_ms": elapsed * 1000, "ts_ms": request.ts_ms,
                                                   "user": snapshot_from_user(user)}))
        return out

    def answer(request: ScoreRequest) -> ScoreResponse:
        return answer_many([request])[0]

    def error_response(request: ScoreRequest, error: str) -> ScoreResponse:
        return ScoreResponse(request_id=request.request_id[:256], user_id=request.user_id[:256],
                             error=bounded(error, 500), ts_ms=request.ts_ms,
                             model_version=-1 if scorer.version is None else scorer.version)

    async def respond(event, request: ScoreRequest, response: ScoreResponse, stages: dict[str, float]):
        """Send the response; returns its delivery (awaited with the batch's, before the batch's
        offsets can be committed). A response that cannot be encoded or sent (over the budget,
        refused) is replaced by an error response saying why; a request that cannot be answered
        even so becomes a dead letter (and None is returned)."""
        topic = runtime.topic("score_responses")
        key = request.user_id.encode()
        try:
            started = time.perf_counter()
            value = score_responses.CODEC.encode(response)
            encoded = time.perf_counter()
            delivery = await topic.send(key=key, value=value, force=True)
            stages["encode"] += encoded - started
            stages["produce"] += time.perf_counter() - encoded
            return delivery
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - answered below with an error response
            label = error_reason(exc)
            log.warning("response to %.80s not sent (%s): %s", request.request_id, label,
                        bounded(f"{type(exc).__name__}: {exc}"))
            metrics.scorer_errors_total.labels(
                reason="response_too_large" if label == "output_too_large" else "internal").inc()
            problem = f"response not sent ({label}): {type(exc).__name__}: {exc}"
        try:
            return await topic.send(key=key, value=score_responses.CODEC.encode(error_response(request, problem)),
                                    force=True)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001
            await runtime.survive("scorer", exc, topic=event.message.topic, partition=event.message.partition,
                                  offset=event.message.offset, key=event.key, value=event.value,
                                  what="error response to request")
            return None

    async def decoded(events) -> list[tuple[object, ScoreRequest]]:
        """The batch's valid requests with their events; each invalid one is a dead letter."""
        valid = []
        for event in events:
            async with runtime.isolated("scorer", event):
                try:
                    request = score_requests.CODEC.decode(
                        event.value, topic=event.message.topic, partition=event.message.partition,
                        offset=event.message.offset,
                    )
                except RecordError as error:
                    await runtime.dead_letter(error, event.key, event.value, "scorer")
                    metrics.scorer_errors_total.labels(reason="invalid_request").inc()
                    continue
                if not await runtime.check_user_key(request, event, "scorer"):
                    metrics.scorer_errors_total.labels(reason="invalid_request").inc()
                    continue
                valid.append((event, request))
        return valid

    def answered_one_by_one(requests: list[ScoreRequest]) -> list[ScoreResponse]:
        responses = []
        for request in requests:
            try:
                responses.append(answer(request))
            except Exception as exc:  # noqa: BLE001 - one bad request must not kill the agent
                log.error("scoring request %.80s failed: %s\n%s", request.request_id,
                          bounded(f"{type(exc).__name__}: {exc}"), frames(exc))
                metrics.scorer_errors_total.labels(reason="internal").inc()
                responses.append(error_response(request, f"internal error: {type(exc).__name__}"))
        return responses

    @app.agent(runtime.topic("score_requests"), name="scorer")
    async def scorer_agent(stream):
        # Requests are taken in batches of what has arrived (up to worker.scorer_batch, waiting at
        # most worker.scorer_batch_wait_s for more): the user tower runs once per batch.
        async for events in stream.take_events(worker.scorer_batch, within=worker.scorer_batch_wait_s):
            started = time.perf_counter()
            batch = await decoded(events)
            decode_s = time.perf_counter() - started
            if not batch:
                continue
            requests = [request for _, request in batch]
            try:
                responses = answer_many(requests)
            except Exception as exc:  # noqa: BLE001 - the batch failed: find the request that did
                log.warning("scoring a batch of %d failed, answering one by one: %s", len(requests),
                            bounded(f"{type(exc).__name__}: {exc}"))
                responses = answered_one_by_one(requests)
            stages = {"decode": decode_s, "encode": 0.0, "produce": 0.0}
            deliveries = []
            for (event, request), response in zip(batch, responses):
                async with runtime.isolated("scorer", event):
                    deliveries.append((event, await respond(event, request, response, stages)))
            metrics.add_scorer_stages(stages)
            # The batch's events are acked when this step ends, and an acked offset may be
            # committed: a response still in the producer's buffer would be lost with the worker.
            for event, delivery in deliveries:
                if delivery is not None:
                    async with runtime.isolated("scorer", event):
                        await delivery

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
            except (ConnectionError, asyncio.IncompleteReadError, aiohttp.ClientError,
                    aiohttp.web.HTTPException) as exc:
                # The client went away mid-body: nobody to answer, nothing to log but one line.
                log.info("POST /score: client disconnected mid-body: %s", bounded(f"{type(exc).__name__}: {exc}", 120))
                metrics.scorer_errors_total.labels(reason="invalid_request").inc()
                return self.json({"error": "the request body was not received whole"}, status=400)
            try:
                if len(body) > MAX_HTTP_BODY:
                    return self.json({"error": f"body exceeds {MAX_HTTP_BODY} bytes"}, status=413)
                score_request = ScoreRequest.model_validate(json.loads(body))
            except (ValueError, RecursionError, ValidationError) as exc:
                metrics.scorer_errors_total.labels(reason="invalid_request").inc()
                return self.json({"error": f"invalid score request: {str(exc)[:500]}"}, status=400)
            try:
                response = answer(score_request)
                payload = response.model_dump(mode="json", exclude={"user"})
            except Exception as exc:  # noqa: BLE001 - an answer, not a traceback, for the client
                log.error("POST /score for request %.80s failed: %s\n%s", score_request.request_id,
                          bounded(f"{type(exc).__name__}: {exc}"), frames(exc))
                metrics.scorer_errors_total.labels(reason="internal").inc()
                return self.json({"error": f"internal error: {type(exc).__name__}"}, status=500)
            status = 200 if response.error is None else 422
            return self.json(payload, status=status)

    app.page("/score")(ScoreView)

    reported_version = [None]

    @app.timer(interval=0.5)
    async def refresh_version():
        # A timer that raises stops the worker: a failed check is logged and counted, the scorer
        # keeps the model it holds, and the next tick checks again. The next version is read and
        # built in a thread, off the event loop: requests go on with the current one until the swap.
        try:
            await asyncio.to_thread(scorer.refresh)
            if scorer.version is not None and scorer.version != reported_version[0]:
                # the switch may have happened on a request's own check, between two ticks
                metrics.set_model_version("scorer", scorer.version, time.time())
                reported_version[0] = scorer.version
        except Exception as exc:  # noqa: BLE001
            metrics.count_agent_error("scorer")
            log.error("scorer: model version check failed, still serving %s: %s\n%s", scorer.version,
                      bounded(f"{type(exc).__name__}: {exc}"), frames(exc))

    serving.scorer = scorer


def _error_reason(error: str) -> str:
    if error.startswith("too many candidates"):
        return "too_many_candidates"
    if error.startswith("no model"):
        return "no_model"
    if error.startswith("k too large"):
        return "invalid_request"
    if error.startswith("response would exceed"):
        return "response_too_large"
    return "internal"
