"""The trainer's loop without a broker: a fake consumer feeds micro-batches to the real loop, so the
order of learn steps, offsets, dead letters and checkpoints can be checked while steps are queued
behind each other; and the progressive AUC against its per-pair definition."""

from __future__ import annotations

import asyncio
import threading
from types import SimpleNamespace

import numpy as np
import pytest
from aiokafka import TopicPartition
from prometheus_client import CollectorRegistry

from agents import trainer as trainer_module
from agents.trainer import Trainer
from core.settings import Settings
from funnel.convert import record_from_sample
from funnel.training import ProgressiveAUC
from models.synthetic import SyntheticRequests
from monitoring.metrics import PrerankMetrics
from streams.training_samples import CODEC

TOPIC = "t.training-samples"


class FakeRuntime:
    """What the trainer needs of the runtime; dead letters are recorded, not sent."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.letters: list[int] = []  # offsets
        self.survived: list[tuple[str, int]] = []  # what failed (not the codec), offset

    def topic_name(self, name: str) -> str:
        return TOPIC

    async def dead_letter(self, error, key, value, agent, reason=None) -> bool:
        self.letters.append(error.offset)
        return True

    async def survive(self, agent, exc, *, offset=-1, **where) -> None:
        self.letters.append(offset)
        self.survived.append((where["what"], offset))


class FakeConsumer:
    """Hands out the given micro-batches, then stops the trainer."""

    def __init__(self, batches: list[dict]) -> None:
        self.batches, self.trainer, self.tps = list(batches), None, []

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def assign(self, tps) -> None:
        self.tps = list(tps)

    def seek(self, tp, offset) -> None: ...

    async def seek_to_beginning(self, tp) -> None: ...

    def assignment(self):
        return set(self.tps)

    async def end_offsets(self, tps):
        return {tp: 0 for tp in tps}

    async def getmany(self, timeout_ms: int, max_records: int) -> dict:
        await asyncio.sleep(0)
        if self.batches:
            return self.batches.pop(0)
        self.trainer.stop()
        return {}


def _settings(tmp_path, checkpoint_interval_s: float) -> Settings:
    base = Settings(_env_file=None).model_dump()
    base["model"] = {**base["model"], "hidden_dim": 16, "output_dim": 8, "embedding_dim": 4}
    base["worker"] = {**base["worker"], "checkpoint_dir": tmp_path / "checkpoints",
                      "checkpoint_interval_s": checkpoint_interval_s}
    return Settings(**base)


def _messages(n: int, bad: set[int]) -> list[SimpleNamespace]:
    samples = SyntheticRequests(seed=2, items_per_request=5).batch(n)
    return [SimpleNamespace(topic=TOPIC, partition=0, offset=offset, key=b"k", timestamp=offset,
                            value=b"{not json" if offset in bad else CODEC.encode(record_from_sample(sample)))
            for offset, sample in enumerate(samples)]


@pytest.mark.parametrize("checkpoint_interval_s", [3600.0, 1e-6])
async def test_queued_steps_are_learned_and_counted_in_order_and_checkpoints_see_nothing_in_flight(
        tmp_path, monkeypatch, checkpoint_interval_s):
    settings = _settings(tmp_path, checkpoint_interval_s)
    bad = {5, 13}
    messages = _messages(24, bad)
    tp = TopicPartition(TOPIC, 0)
    consumer = FakeConsumer([{tp: messages[i:i + 4]} for i in range(0, len(messages), 4)])
    monkeypatch.setattr(trainer_module, "AIOKafkaConsumer", lambda **options: consumer)
    monkeypatch.setattr(Trainer, "_partitions", lambda self: [0])
    trainer = Trainer(FakeRuntime(settings), PrerankMetrics(CollectorRegistry()), publish=False)
    consumer.trainer = trainer

    learned: list[list[int]] = []  # request offsets of each learn step, in the order they ran
    queued_behind_a_running_step = []
    running = threading.Event()
    real_learn, real_submit = trainer.learn, trainer.executor.submit

    def learn(records):
        running.set()
        try:
            learned.append([int(r.ts_ms) for r in records])
            return real_learn(records)
        finally:
            running.clear()

    def submit(fn, *args):
        if fn == trainer.learn_messages:
            queued_behind_a_running_step.append(running.is_set())
        return real_submit(fn, *args)

    checkpoints = []
    real_checkpoint = trainer.checkpoint

    def checkpoint():
        # The learn thread runs this, so no step runs beside it; none may wait behind it either,
        # or the offsets saved would be older than the model (the loop applies a step's offsets).
        checkpoints.append((dict(trainer.state.offsets), trainer.state.counters["records"],
                            trainer.executor._work_queue.qsize()))
        real_checkpoint()

    monkeypatch.setattr(trainer, "learn", learn)
    monkeypatch.setattr(trainer.executor, "submit", submit)
    monkeypatch.setattr(trainer, "checkpoint", checkpoint)
    ts_of = {m.offset: int(CODEC.decode(m.value).ts_ms) for m in messages if m.offset not in bad}
    unlearnable = 9  # decodes, but its step fails on it: learned one record at a time, it is set aside
    real_convert = trainer_module.sample_from_record

    def convert(record):
        if record.ts_ms == ts_of[unlearnable]:
            raise ValueError("this record cannot be learned")
        return real_convert(record)

    monkeypatch.setattr(trainer_module, "sample_from_record", convert)
    try:
        await asyncio.wait_for(trainer.run(), 60)
    finally:
        trainer.executor.shutdown()

    assert [ts for step in learned for ts in step] == [ts_of[o] for o in sorted(ts_of)]  # each once, in order
    assert trainer.state.offsets == {"0": len(messages)}
    assert trainer.state.counters["records"] == len(messages) - len(bad) - 1
    assert sorted(trainer.runtime.letters) == sorted({*bad, unlearnable})
    assert trainer.runtime.survived == [("learning record", unlearnable)]  # the bad JSON has the codec's reason
    assert checkpoints and all(waiting == 0 for _, _, waiting in checkpoints)
    for offsets, records, _ in checkpoints:  # the records learned are exactly those before the offsets
        assert records == sum(1 for o in ts_of if o < offsets["0"] and o != unlearnable)
    if checkpoint_interval_s > 1:  # nothing due: steps go straight behind the one learning
        assert any(queued_behind_a_running_step)
    else:  # a checkpoint due whenever a step was learned: the loop drains and takes one every other step
        assert len(checkpoints) >= len(learned) // 2


def _per_pair_auc_pairs(samples, logits, window):
    """The progressive AUC's window by its definition: one (label, score) per exposed pair."""
    pairs = {label: [] for label in ProgressiveAUC.LABELS}
    offset = 0
    for sample in samples:
        for i, shown in enumerate(sample.exposed()):
            if shown:
                for label in ProgressiveAUC.LABELS:
                    pairs[label].append((getattr(sample, label)[i], float(logits[offset + i])))
        offset += sample.n_items
    return {label: values[-window:] for label, values in pairs.items()}


@pytest.mark.parametrize("window", [7, 5000])
def test_the_progressive_auc_keeps_every_exposed_pair_scored_before_learning(window):
    generator, rng = SyntheticRequests(seed=4, items_per_request=9), np.random.default_rng(0)
    progressive, seen, logits = ProgressiveAUC(window), [], []
    for _ in range(5):
        batch = generator.batch(4)
        scores = rng.normal(size=sum(s.n_items for s in batch)).astype(np.float32)
        progressive.observe(batch, scores)
        seen.extend(batch)
        logits.append(scores)
    expected = _per_pair_auc_pairs(seen, np.concatenate(logits), window)
    assert {label: list(pairs) for label, pairs in progressive.pairs.items()} == expected
    assert all(type(y) is int and type(s) is float for pairs in progressive.pairs.values() for y, s in pairs)
