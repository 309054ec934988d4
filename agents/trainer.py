"""The trainer and publisher: micro-batches from ``training-samples``, checkpoints, versions.

The trainer consumes with its own aiokafka consumer inside the Faust worker instead of a Faust
stream, because its guarantee is the checkpoint, not Kafka's committed offsets: the model, its
optimiser state and the next offset of every partition are saved together, and on start the
consumer seeks to the checkpoint's offsets. A crash therefore replays exactly the records
learned after the last checkpoint, into a model that has not seen them: no loss, no double count.
The joiner emits at least once, so the same request may arrive twice: the trainer drops a record
whose request id it learned recently (``funnel/dedupe.py``; the ids are saved in the same
checkpoint), which makes every request reach the model exactly once.

One trainer owns every partition of ``training-samples``, or a group of them shares the
partitions and the embedding rows (``worker.trainer_world_size > 1``: :mod:`agents.trainer_group`).
Learning runs in a single worker thread so the event loop keeps heartbeating and publishing.
The learn thread decodes a micro-batch's records itself, right before learning them; the event
loop only moves messages: it queues the next micro-batch behind the step learning, so the learn
thread goes from step to step without waiting for the loop, and drains the queue before a version
or a checkpoint. Decoding on the loop beside a step would not overlap it: both threads share the
GIL, and torch takes it back between operations, the backward pass included (measured: a thread
holding the GIL made a backward pass ~3x slower), so each side waits for the other and decoding
beside a step cost more than decoding before it. What the trainer costs over learning from memory
is what decoding and converting a record costs (``bench.streaming_overhead``).

No record stops the trainer: a record that does not decode is a dead letter; a micro-batch whose
learn step raises is learned again one record at a time, and each record that fails alone is a
dead letter (``internal`` / ``output_invalid``, with its topic, partition and offset) while the
others are learned; a publish that fails is retried at the next interval. Only what is not about
data (the checkpoint folder, the broker's metadata at start) still stops the worker loudly.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from aiokafka import AIOKafkaConsumer, TopicPartition

from agents.app import Runtime, bounded, frames
from core.kafka import aiokafka_options, consumer_options, kafka_python_options
from core.redis import RedisUnavailable
from funnel.checkpoint import CheckpointDir
from funnel.convert import sample_from_record
from funnel.dedupe import RecentIds
from funnel.publishing import Publisher
from funnel.store import open_store
from funnel.training import MODEL_FILE, ProgressiveAUC, new_learner
from models.learner import StudentLearner
from monitoring.lag import consumer_lag, record_consumer_lag
from monitoring.metrics import PrerankMetrics
from streams import training_samples
from streams.exceptions import RecordError

log = logging.getLogger(__name__)

LEARNED_IDS_FILE = "learned-request-ids.json"
LAG_INTERVAL_S = 5.0


@dataclass
class TrainerState:
    learner: StudentLearner
    learned: RecentIds  # the request ids learned most recently: a second copy is dropped
    offsets: dict[str, int] = field(default_factory=dict)  # partition -> next offset to read
    counters: dict[str, int] = field(
        default_factory=lambda: {"records": 0, "samples": 0, "version": 0, "duplicate_records": 0}
    )


@dataclass
class LearnStep:
    """One micro-batch: its messages, the offsets after it, and its learn step once submitted."""

    messages: list = field(default_factory=list)  # as consumed; decoded in the learn thread
    offsets: dict[str, int] = field(default_factory=dict)  # partition -> next offset to read
    future: Future | None = None


class Trainer:
    """Consume, learn, checkpoint and publish; one instance per trainer worker."""

    learns_empty_steps = False  # a group's trainer takes part in every step, with or without records

    def __init__(self, runtime: Runtime, metrics: PrerankMetrics, publish: bool = True) -> None:
        self.runtime = runtime
        self.settings = runtime.settings
        self.metrics = metrics
        self.checkpoints = CheckpointDir(self.settings.worker.checkpoint_dir)
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="learn")
        self.state = self._restore()
        worker = self.settings.worker
        self.publisher = None
        if publish:
            store = open_store(self.settings.redis)
            self.publisher = Publisher(store, hot_items=worker.hot_items, dtype=worker.vector_dtype,
                                       ttl_s=worker.version_ttl_s)
            self.publisher.version = self.state.counters.get("version", 0)
        self.topic = runtime.topic_name("training_samples")
        self.progressive = ProgressiveAUC()
        self._dirty = False
        self._last_checkpoint = time.monotonic()
        self._last_publish = 0.0
        self._published_samples = 0
        self._lag_at = 0.0
        self._unpublished_ts_ms: list[int] = []  # produce times of records not yet in a version
        self._rows_seen: dict[str, int] = {}
        self._stopping = False

    def _restore(self) -> TrainerState:
        latest = self.checkpoints.latest()
        capacity = self.settings.worker.trainer_dedupe_requests
        if latest is None:
            return TrainerState(new_learner(self.settings), RecentIds(capacity))
        learner = StudentLearner.load(latest.folder / MODEL_FILE)
        learned = RecentIds.load(latest.folder / LEARNED_IDS_FILE, capacity)
        log.info("trainer restored %s: %s, %d recent request ids", latest.folder.name, latest.counters, len(learned))
        return TrainerState(learner, learned, dict(latest.offsets), {"duplicate_records": 0, **latest.counters})

    def checkpoint(self) -> None:
        def write(folder) -> None:
            self.state.learner.save(folder / MODEL_FILE)
            self.state.learned.save(folder / LEARNED_IDS_FILE)

        self.checkpoints.save(write, self.state.offsets, self.state.counters)
        self._dirty = False
        self._last_checkpoint = time.monotonic()

    def learn_messages(self, messages: list) -> dict:
        """Decode ``messages`` and learn their records: one step, in the learn thread.

        Returns :meth:`learn`'s result with ``failed`` indexed by message, and ``rejected``: the
        ``(index, exception)`` of each message that does not decode (the loop dead-letters both).
        """
        records, indices, rejected = [], [], []
        for index, message in enumerate(messages):
            try:
                records.append(training_samples.CODEC.decode(
                    message.value, topic=message.topic, partition=message.partition, offset=message.offset
                ))
                indices.append(index)
            except Exception as exc:  # noqa: BLE001 - any record the codec chokes on is a dead letter
                rejected.append((index, exc))
        if records or self.learns_empty_steps:
            result = self.learn(records)
        else:
            result = {"samples": 0, "duplicates": 0, "failed": []}
        result["failed"] = [(indices[i], exc) for i, exc in result["failed"]]
        result["rejected"] = rejected
        return result

    def learn(self, records: list) -> dict:
        """One learn step, in the learn thread; if it raises, one step per record, the records
        that fail alone listed in ``failed`` as ``(index, exception)`` (the agent dead-letters
        them). The record and sample counters and the learned ids move with the model (so a
        checkpoint of them can never disagree); the offsets move when the step is applied."""
        try:
            return {**self._learn_step(records), "failed": []}
        except Exception as exc:  # noqa: BLE001 - find the record(s) that cannot be learned
            if len(records) == 1:
                return {"samples": 0, "duplicates": 0, "failed": [(0, exc)]}
            log.warning("trainer: a step of %d records failed, learning them one by one: %s", len(records),
                        bounded(f"{type(exc).__name__}: {exc}"))
        result: dict = {"samples": 0, "duplicates": 0, "failed": []}
        losses = []
        for index, record in enumerate(records):
            try:
                one = self._learn_step([record])
            except Exception as exc:  # noqa: BLE001
                result["failed"].append((index, exc))
                continue
            result["samples"] += one["samples"]
            result["duplicates"] += one["duplicates"]
            if "loss" in one:
                losses.append(one["loss"])
        if losses:
            result["loss"] = sum(losses) / len(losses)
        return result

    def _learn_step(self, records: list) -> dict[str, float]:
        fresh, step_ids = [], set()
        for record in records:  # the first copy of a request wins, within a step as across steps
            if record.request_id not in self.state.learned and record.request_id not in step_ids:
                step_ids.add(record.request_id)
                fresh.append(record)
        duplicates = len(records) - len(fresh)
        if not fresh and not self.learns_empty_steps:
            self.state.counters["duplicate_records"] += duplicates
            return {"samples": 0, "duplicates": duplicates}
        samples = [sample_from_record(record) for record in fresh]
        started = time.perf_counter()
        result = {**self.state.learner.learn_many(samples), "samples": sum(s.n_items for s in samples),
                  "duplicates": duplicates}
        # Only once the step succeeded: a failed step must not mark its requests as learned.
        for record in fresh:
            self.state.learned.add(record.request_id)
        self.state.counters["duplicate_records"] += duplicates
        self.state.counters["records"] += len(fresh)
        self.state.counters["samples"] += result["samples"]
        self.progressive.observe(samples, self.state.learner.last_pair_logits)  # scored before learning
        self.metrics.trainer_batch_seconds.observe(time.perf_counter() - started)
        self._observe_items(samples)
        return result

    def _observe_items(self, samples) -> None:
        """The items a step learned count for the hot set (the published vectors)."""
        if self.publisher is not None:
            self.publisher.hot.observe((item for s in samples for item in s.items), time.monotonic())

    def publish(self) -> None:
        learner = self.state.learner
        published = self.publisher.publish(learner, self.state.counters["samples"],
                                           records_learned=self.state.counters["records"],
                                           evicted=learner.drain_evicted_item_ids())
        self._record_published(published, learner)

    def _record_published(self, published, learner: StudentLearner) -> None:
        """Counters, metrics and freshness of a version just published from ``learner``."""
        self.state.counters["version"] = published.version
        self.metrics.publish_duration_seconds.observe(published.publish_s)
        self.metrics.published_items_total.inc(published.n_items)
        self.metrics.published_versions_total.inc()
        self.metrics.publish_deleted_items_total.inc(published.deleted_items)
        self.metrics.set_model_version("publisher", published.version, published.created_at_ms / 1000)
        # Freshness: from a training record's production (the joiner emits it as soon as the
        # request's impressions are joined) to its item vectors being readable in a version.
        for produced_ms in self._unpublished_ts_ms:
            self.metrics.freshness_seconds.observe(max(0.0, (published.created_at_ms - produced_ms) / 1000))
        self._unpublished_ts_ms = []
        for name, table in learner.student.tables.items():
            rows = len(table.id_map)
            self.metrics.embedding_admissions_total.labels(table=name).inc(max(0, rows - self._rows_seen.get(name, 0)))
            self._rows_seen[name] = rows
            self.metrics.embedding_rows.labels(table=name).set(rows)
            self.metrics.embedding_zero_rows_ratio.labels(table=name).set(published.zero_row_ratio_by_table[name])
        self.metrics.embedding_evictions_total.labels(table="item").inc(published.deleted_items)
        for label, value in self.progressive.aucs().items():
            self.metrics.set_progressive_auc(label, value)

    async def run(self) -> None:
        consumer = AIOKafkaConsumer(
            **aiokafka_options(self.settings.kafka), **consumer_options(self.settings.kafka), enable_auto_commit=False,
            auto_offset_reset="earliest", max_partition_fetch_bytes=8 * 1024 * 1024,
        )
        await consumer.start()
        loop = asyncio.get_running_loop()
        try:
            if self.publisher is not None and await loop.run_in_executor(None, self._store_is_empty):
                # Cold start: serve the untrained model so the funnel can produce its first labels.
                await loop.run_in_executor(self.executor, self.publish)
            partitions = await self._assign(consumer)
            log.info("trainer reading %s partitions %s from %s", self.topic, partitions, self.state.offsets)
            worker = self.settings.worker
            submitted: list[LearnStep] = []  # in order: the first may be learning, a second queued behind it
            try:
                while not self._stopping:
                    batches = await consumer.getmany(
                        timeout_ms=int(worker.train_batch_timeout_s * 1000), max_records=worker.train_batch_requests
                    )
                    step = self._step(batches)
                    # Queued behind the step in flight, the learn thread goes on to this one without
                    # waiting for the loop to see the other end (a thread wake-up each way per step);
                    # not when a version or a checkpoint is due, which need nothing in flight.
                    queued = bool(step.messages and submitted) and not self._publish_or_checkpoint_due()
                    if queued:
                        step.future = self.executor.submit(self.learn_messages, step.messages)
                        submitted.append(step)
                    while len(submitted) > (1 if queued else 0):  # every step before the queued one
                        await self._finish(submitted[0])
                        submitted.pop(0)
                    if not queued:
                        # No step is in flight here, so the model and the offsets agree: the only point
                        # where a checkpoint (or a version) may be taken.
                        await self._maybe_publish_and_checkpoint(loop)
                        if step.messages:
                            step.future = self.executor.submit(self.learn_messages, step.messages)
                            submitted.append(step)
                    try:
                        await self._maybe_record_lag(consumer)
                    except Exception as exc:  # noqa: BLE001 - a metric; the next interval tries again
                        log.warning("trainer: consumer lag not recorded: %s", bounded(f"{type(exc).__name__}: {exc}"))
            finally:
                for step in submitted:  # on SIGTERM too: the steps finish and count before the checkpoint
                    self._apply(step, step.future.result())
        finally:
            # Runs on SIGTERM too (Faust cancels the task); blocking here is fine at shutdown.
            if self._dirty:
                self.executor.submit(self.checkpoint).result()
            await consumer.stop()

    @staticmethod
    def _step(batches) -> LearnStep:
        """The micro-batch of one ``getmany``: its messages in order and the offsets after them."""
        step = LearnStep()
        for tp, messages in batches.items():
            step.messages.extend(messages)
            if messages:
                step.offsets[str(tp.partition)] = messages[-1].offset + 1
        return step

    async def _finish(self, step: LearnStep) -> None:
        """Wait for a submitted step, count it and dead-letter the messages it could not decode
        or learn (they are not retried: their offsets moved on with the step's)."""
        result = await asyncio.wrap_future(step.future)
        self._apply(step, result)
        for index, exc in result["rejected"]:
            await self._dead_letter_rejected(step.messages[index], exc)
        await self._dead_letter_failed(step, result)

    def _publish_or_checkpoint_due(self) -> bool:
        """Whether :meth:`_maybe_publish_and_checkpoint` would publish or checkpoint now."""
        worker, now = self.settings.worker, time.monotonic()
        if self.publisher is not None and now - self._last_publish >= worker.publish_interval_s:
            return True
        return self._dirty and now - self._last_checkpoint >= worker.checkpoint_interval_s

    async def _dead_letter_failed(self, step: LearnStep, result: dict) -> None:
        """Each record its learn step could not learn alone becomes a dead letter (it is not
        retried: its offset has moved on with the step's)."""
        for index, exc in result["failed"]:
            message = step.messages[index]
            self.metrics.count_agent_error("trainer")
            log.error("trainer: record %s[%d]@%d not learned: %s\n%s", message.topic, message.partition, message.offset,
                      bounded(f"{type(exc).__name__}: {exc}"), frames(exc))
            await self.runtime.survive("trainer", exc, topic=message.topic, partition=message.partition,
                                       offset=message.offset, key=message.key, value=message.value,
                                       what="learning record")

    def _apply(self, step: LearnStep, result: dict) -> None:
        """Count a learned step and move the offsets past it (dead letters included)."""
        self._advance_offsets(step)
        rejected = {index for index, _ in result["rejected"]}
        # Producer timestamps of the records in the step, for freshness.
        self._unpublished_ts_ms.extend(m.timestamp for i, m in enumerate(step.messages) if i not in rejected)
        self._dirty = True
        self.metrics.trainer_duplicate_records_total.inc(result["duplicates"])
        if "loss" not in result:  # every record of the step was a duplicate
            return
        mode = self.settings.model.mode
        self.metrics.trainer_samples_total.labels(mode=mode).inc(result["samples"])
        self.metrics.trainer_loss.labels(mode=mode).set(result["loss"])

    def _advance_offsets(self, step: LearnStep) -> None:
        self.state.offsets.update(step.offsets)

    async def _assign(self, consumer: AIOKafkaConsumer) -> list[int]:
        partitions = await asyncio.get_running_loop().run_in_executor(None, self._partitions)
        if not partitions:
            raise RuntimeError(f"topic {self.topic} has no partitions; run `prerank topics create`")
        partitions = self._owned(partitions)
        tps = [TopicPartition(self.topic, p) for p in sorted(partitions)]
        consumer.assign(tps)
        for tp in tps:
            if str(tp.partition) in self.state.offsets:
                consumer.seek(tp, self.state.offsets[str(tp.partition)])
            else:
                await consumer.seek_to_beginning(tp)
        return sorted(partitions)

    def _owned(self, partitions: list[int]) -> list[int]:
        """The partitions this trainer learns: all of them (a group's rank owns a subset)."""
        return partitions

    def _store_is_empty(self) -> bool:
        return self.publisher.store.current_version() is None

    def _partitions(self) -> list[int]:
        from kafka.admin import KafkaAdminClient

        admin = KafkaAdminClient(**kafka_python_options(self.settings.kafka), client_id="prerank-trainer")
        try:
            described = admin.describe_topics([self.topic])
        finally:
            admin.close()
        return [p["partition_index"] for t in described for p in t.get("partitions", [])]

    async def _dead_letter_rejected(self, message, exc: Exception) -> None:
        """The dead letter of a message that did not decode: the codec's reason, or ``internal``."""
        if isinstance(exc, RecordError):
            await self.runtime.dead_letter(exc, message.key, message.value, "trainer")
        else:
            await self.runtime.survive("trainer", exc, topic=message.topic, partition=message.partition,
                                       offset=message.offset, key=message.key, value=message.value,
                                       what="decoding record")

    async def _maybe_publish_and_checkpoint(self, loop) -> None:
        worker = self.settings.worker
        now = time.monotonic()
        learned = self.state.counters["samples"]
        if self.publisher is not None and now - self._last_publish >= worker.publish_interval_s:
            self._last_publish = now
            try:
                # New samples make a new version; an emptied store (Redis restarted) gets the
                # current model again even without new data.
                if learned == self._published_samples and not await loop.run_in_executor(None, self._store_is_empty):
                    return await self._maybe_checkpoint(loop)
                await loop.run_in_executor(self.executor, self.publish)
                self._published_samples = learned
            except (RedisUnavailable, OSError) as exc:  # the next interval retries; training goes on
                log.warning("publish failed, will retry: %s", bounded(exc))
            except Exception as exc:  # noqa: BLE001 - a version that cannot be built: keep training
                self.metrics.count_agent_error("publisher")
                log.error("publish failed, will retry: %s\n%s", bounded(f"{type(exc).__name__}: {exc}"), frames(exc))
        await self._maybe_checkpoint(loop)

    async def _maybe_checkpoint(self, loop) -> None:
        if self._dirty and time.monotonic() - self._last_checkpoint >= self.settings.worker.checkpoint_interval_s:
            await loop.run_in_executor(self.executor, self.checkpoint)

    async def _maybe_record_lag(self, consumer: AIOKafkaConsumer) -> None:
        now = time.monotonic()
        if now - self._lag_at < LAG_INTERVAL_S:
            return
        self._lag_at = now
        tps = list(consumer.assignment())
        ends = await consumer.end_offsets(tps)
        positions = {tp: self.state.offsets.get(str(tp.partition), 0) for tp in tps}
        record_consumer_lag(self.metrics, "trainer", {
            (tp.topic, tp.partition): lag for tp, lag in consumer_lag(ends, positions).items()
        })

    def stop(self) -> None:
        self._stopping = True


def install(runtime: Runtime, metrics: PrerankMetrics, publish: bool = True) -> Trainer:
    if runtime.settings.worker.trainer_world_size > 1:
        from agents.trainer_group import GroupTrainer

        trainer = GroupTrainer(runtime, metrics, publish=publish)
    else:
        trainer = Trainer(runtime, metrics, publish=publish)

    @runtime.app.task
    async def train():
        try:
            await trainer.run()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # A trainer that cannot train must take its worker down loudly, not idle silently.
            log.exception("trainer crashed")
            await runtime.app.crash(exc)

    return trainer
