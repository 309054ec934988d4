"""One rank of a data-parallel trainer group (``worker.trainer_world_size > 1``).

Every rank consumes its own partitions of ``training-samples`` (``funnel.trainer_group``) and the
group learns in lock-step: each loop turn is one *group step*, in the learn thread,

1. a header every rank sends (its message count; rank 0 adds whether a version or a checkpoint is
   due, so one clock decides for all);
2. if any rank has records, one collective learn step (``models.sharded``: rows exchanged with
   their owners, dense gradients all-reduced), ranks without records taking part with none;
3. if due, a version: every rank sends its rows, the items it learned and its evictions to rank 0,
   the group's only publisher, which assembles one model and flips ``current`` as a lone trainer does;
4. if due, a checkpoint: every rank saves its shard with its offsets at the same step, and rank 0
   writes the manifest once every rank has saved.

A rank that dies leaves the others failing their next collective (or after
``trainer_group_timeout_s``): they crash too, and the restarted group resumes from the manifest's
step on every rank. So a SIGKILL of any trainer loses nothing and learns nothing twice, at the
cost of re-learning what came after the last complete step. A SIGTERM does not checkpoint alone
for the same reason (a group's checkpoint needs every rank).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque

import msgpack
from aiokafka import AIOKafkaConsumer

from agents.app import bounded
from agents.trainer import LEARNED_IDS_FILE, LearnStep, Trainer, TrainerState
from core.kafka import aiokafka_options, consumer_options
from core.redis import RedisUnavailable
from funnel.dedupe import RecentIds
from funnel.trainer_group import (
    GroupManifest,
    SeenItems,
    TrainerGroupError,
    open_group,
    owned_partitions,
    read_manifest,
    seen_items,
    write_manifest,
)
from funnel.training import MODEL_FILE, new_learner
from models.learner import StudentLearner
from models.sharded import assembled_learner, shard_bytes

log = logging.getLogger(__name__)


class GroupTrainer(Trainer):
    """A :class:`~agents.trainer.Trainer` that learns, publishes and checkpoints with its group."""

    learns_empty_steps = True

    def __init__(self, runtime, metrics, publish: bool = True) -> None:
        worker = runtime.settings.worker
        if publish and worker.trainer_rank != 0:
            raise TrainerGroupError(f"only rank 0 of a trainer group publishes (this is rank {worker.trainer_rank})")
        super().__init__(runtime, metrics, publish=publish)
        self.rank, self.world_size = worker.trainer_rank, worker.trainer_world_size
        self.collective = None
        self.seen = SeenItems()
        self._cold_start = False
        self._group_busy = False  # whether any rank had records in the last group step
        self._unpublished_evictions: list[str] = []  # the group's evicted items no version has dropped yet
        self._checkpointed_step = 0
        self._published_step = -1

    def _restore(self) -> TrainerState:
        # The group's resume point needs the group: :meth:`_restore_group` runs once it is formed.
        return TrainerState(new_learner(self.settings), RecentIds(self.settings.worker.trainer_dedupe_requests))

    def _restore_group(self) -> TrainerState:
        """Every rank loads its checkpoint of the manifest's step (rank 0 reads the manifest)."""
        manifest = read_manifest(self.checkpoints.root) if self.rank == 0 else None
        if manifest is not None and manifest.world_size != self.world_size:
            raise TrainerGroupError(f"the manifest is of a group of {manifest.world_size}, this one has {self.world_size}")
        step = self.collective.all_ints([manifest.step if manifest else -1])[0][0]
        if step < 0:
            state = self._restore()
        else:
            checkpoint = self.checkpoints.at_step(step)
            if checkpoint is None:
                raise TrainerGroupError(f"rank {self.rank} has no checkpoint of group step {step} in {self.checkpoints.root}")
            learner = StudentLearner.load(checkpoint.folder / MODEL_FILE)
            learned = RecentIds.load(checkpoint.folder / LEARNED_IDS_FILE, self.settings.worker.trainer_dedupe_requests)
            log.info("trainer rank %d restored %s (group step %d): %s", self.rank, checkpoint.folder.name, step,
                     checkpoint.counters)
            state = TrainerState(learner, learned, dict(checkpoint.offsets),
                                 {"duplicate_records": 0, **checkpoint.counters})
        state.learner.join(self.collective)
        self._checkpointed_step = self._published_step = state.learner.step
        return state

    def learn(self, records: list) -> dict:
        """One collective step; unlike a lone trainer's, a step that raises is not retried record by
        record (the other ranks are inside the step): it fails the group, which resumes from its
        last complete step. The records were decoded and validated before, so this is a defect,
        not data."""
        return {**self._learn_step(records), "failed": []}

    def _advance_offsets(self, step: LearnStep) -> None:
        """Done by :meth:`group_step` in the learn thread, in step order (a checkpoint there must
        hold its step's offsets, and the loop may finish a step after the next one has started)."""

    def _owned(self, partitions: list[int]) -> list[int]:
        return owned_partitions(partitions, self.rank, self.world_size)

    def _observe_items(self, samples) -> None:
        items = (item for s in samples for item in s.items)
        if self.publisher is not None:
            self.publisher.hot.observe(items, time.monotonic())
        else:
            self.seen.observe(items)

    # ------------------------------------------------------------------ the loop
    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        worker = self.settings.worker
        self.collective = await loop.run_in_executor(self.executor, open_group, worker)
        self.state = await loop.run_in_executor(self.executor, self._restore_group)
        if self.publisher is not None:
            self.publisher.version = self.state.counters.get("version", 0)
            self._cold_start = await loop.run_in_executor(None, self._store_is_empty)
        consumer = AIOKafkaConsumer(
            **aiokafka_options(self.settings.kafka), **consumer_options(self.settings.kafka), enable_auto_commit=False,
            auto_offset_reset="earliest", max_partition_fetch_bytes=8 * 1024 * 1024,
        )
        await consumer.start()
        try:
            partitions = await self._assign(consumer)
            log.info("trainer rank %d/%d reading %s partitions %s from %s", self.rank, self.world_size, self.topic,
                     partitions, self.state.offsets)
            submitted: deque[LearnStep] = deque()  # the step learning and at most one queued behind it
            while not self._stopping:
                # While any rank had records, a rank without any must not hold the group up waiting
                # for its own: it takes what is buffered (maybe nothing) and joins the next step.
                timeout_s = 0.0 if self._group_busy else worker.train_batch_timeout_s
                batches = await consumer.getmany(timeout_ms=int(timeout_s * 1000), max_records=worker.train_batch_requests)
                step = self._step(batches)
                # Queued behind the step in flight, so fetching overlaps learning; the learn thread
                # runs the steps in order, which keeps every rank's collectives in the same order.
                step.future = self.executor.submit(self.group_step, step, self._wants())
                submitted.append(step)
                while len(submitted) > 1 or submitted[0].future.done():
                    await self._finish(submitted.popleft())
                    if not submitted:
                        break
                try:
                    await self._maybe_record_lag(consumer)
                except Exception as exc:  # noqa: BLE001 - a metric; the next interval tries again
                    log.warning("trainer: consumer lag not recorded: %s", exc)
        finally:
            await consumer.stop()

    def _wants(self) -> tuple[int, int]:
        """Rank 0's ``(publish, checkpoint)`` decision for this step (the other ranks send zeros)."""
        if self.rank != 0:
            return 0, 0
        worker, now, step = self.settings.worker, time.monotonic(), self.state.learner.step
        due = self.publisher is not None and now - self._last_publish >= worker.publish_interval_s
        if due and step == self._published_step and not self._cold_start:
            # Nothing new: publish again only if the store lost the version (Redis restarted empty).
            self._last_publish = now
            self._cold_start = self._store_is_empty_now()
        publish = self.publisher is not None and (self._cold_start or (due and step != self._published_step))
        checkpoint = step != self._checkpointed_step and now - self._last_checkpoint >= worker.checkpoint_interval_s
        # Counted from the request: a step queued behind this one must not ask again.
        if publish:
            self._last_publish = now
        if checkpoint:
            self._last_checkpoint = now
        return int(publish), int(checkpoint)

    def _store_is_empty_now(self) -> bool:
        try:
            return self._store_is_empty()
        except (RedisUnavailable, OSError):
            return False  # down: the publish would fail; asked again at the next interval

    def group_step(self, step: LearnStep, wants: tuple[int, int]) -> dict:
        """One group step, in the learn thread (see the module docstring)."""
        heads = self.collective.all_ints([len(step.messages), *wants])
        publish, checkpoint = heads[0][1], heads[0][2]
        result = {"samples": 0, "duplicates": 0, "failed": [], "rejected": []}
        self._group_busy = any(count for count, _, _ in heads)
        if self._group_busy:
            result = self.learn_messages(step.messages)
        # The model has learned this step: its offsets go into a checkpoint taken now.
        self.state.offsets.update(step.offsets)
        if publish:
            self.publish_group()
        if checkpoint:
            self.checkpoint_group()
        return result

    def publish_group(self) -> None:
        """Every rank's rows, items and evictions to rank 0, which publishes the assembled model."""
        learner, counters = self.state.learner, self.state.counters
        part = msgpack.packb({
            "shard": shard_bytes(learner.student.tables), "items": self.seen.drain(),
            "evicted": learner.drain_evicted_item_ids(), "samples": counters["samples"], "records": counters["records"],
        })
        parts = self.collective.gather(part)
        if self.rank != 0:
            return
        shards = [msgpack.unpackb(p) for p in parts]
        for shard in shards[1:]:
            self.publisher.hot.observe(seen_items(shard["items"]), time.monotonic())
        self._unpublished_evictions.extend(item for s in shards for item in s["evicted"])
        whole = assembled_learner(learner, [shard["shard"] for shard in shards])
        try:
            published = self.publisher.publish(
                whole, sum(s["samples"] for s in shards), records_learned=sum(s["records"] for s in shards),
                evicted=self._unpublished_evictions,
            )
        except (RedisUnavailable, OSError) as exc:  # as a lone trainer: the next interval retries, the group goes on
            log.warning("publish failed, will retry: %s", bounded(exc))
            return
        self._unpublished_evictions = []
        self._published_step = learner.step
        self._cold_start = False
        self._record_published(published, whole)

    def checkpoint_group(self) -> None:
        """Every rank saves its shard at this step; rank 0 writes the manifest once all have."""
        learner = self.state.learner
        self.state.counters.update(step=learner.step, rank=self.rank, world_size=self.world_size)
        self.checkpoint()
        folder = self.checkpoints.latest().folder.name
        shards = self.collective.gather(msgpack.packb({
            "rank": self.rank, "folder": folder, "partitions": sorted(int(p) for p in self.state.offsets),
        }))
        self._checkpointed_step = learner.step
        if self.rank == 0:
            write_manifest(self.checkpoints.root, GroupManifest(
                step=learner.step, world_size=self.world_size, shards=tuple(msgpack.unpackb(s) for s in shards),
            ))
