"""Redis restarted under a running pipeline (a private Redis; the shared one is never touched).

One scenario runs once per module and records what it saw; each test checks one claim:

1. a version is published and served from Redis;
2. Redis stops: every score request is still answered, marked ``degraded``, from the model the
   scorer holds (vectors computed locally); a catalog update arrives meanwhile;
3. Redis starts again, empty (no persistence): the scorer leaves the degraded mode, the publisher
   publishes the current model again (first without, then with new training data), and the
   catalog update is in Redis.
"""

from __future__ import annotations

import time

import pytest

from monitoring.scrape import metric_sum, scrape
from streams import item_catalog, score_responses
from streams.item_catalog import CatalogItem
from tests.reliability.harness import (
    Sender,
    TopicReader,
    Worker,
    create_topics,
    derive,
    fresh_settings,
    private_redis,
    redis_store,
    response_ids,
    score_request,
    send_funnel,
    wait_for,
)

pytestmark = pytest.mark.integration

REPUBLISH_WAIT_S = 15.0
OUTAGE_S = 5.0


def _answers(reader: TopicReader, ids: set[str], workers, timeout_s: float = 120.0) -> dict:
    """The responses to ``ids`` (request id -> response), waiting until all arrived."""
    reader.until(lambda got: ids <= set(response_ids(got)), timeout_s, workers)
    responses = (score_responses.CODEC.decode(m.value) for m in reader.messages)
    return {r.request_id: r for r in responses if r.request_id in ids}


@pytest.fixture(scope="module")
def outage(base_settings, tmp_path_factory):
    from tests.conftest import need_service

    need_service("Kafka", base_settings.stack.host, base_settings.stack.kafka_port)
    folder = tmp_path_factory.mktemp("redis-restart")
    redis, settings = private_redis(fresh_settings(base_settings, folder), folder / "stack")
    settings = derive(settings, worker={"publish_interval_s": 1.0, "checkpoint_interval_s": 1.0})
    seen: dict = {}
    create_topics(settings)
    redis.start()
    redis.wait_ready(30)
    serving = Worker(settings, "history,joiner,scorer", folder / "serving.log", index=0)
    trainer = Worker(settings, "trainer,publisher", folder / "trainer.log", index=1)
    workers = [serving, trainer]
    reader = TopicReader(settings, "score_responses")
    sender = Sender(settings)
    store = redis_store(settings)
    try:
        send_funnel(settings, 20)
        seen["version_before"] = wait_for(store.current_version, 120, "a first version", workers)

        def ask(prefix: str, n: int) -> dict:
            ids = {f"{prefix}{i}" for i in range(n)}
            for rid in sorted(ids):
                sender.request(score_request(rid, f"u{len(rid) % 5}"))
            sender.flush()
            return _answers(reader, ids, workers)

        # the serving worker is up once its scorer holds a model: ask only then, so the "before"
        # answers come from that model, not from a scorer still starting
        wait_for(lambda: _scorer_version(settings) >= seen["version_before"], 120, "the scorer's first model",
                 workers)
        seen["before"] = ask("before", 5)
        redis.stop()
        down_at = time.monotonic()
        sender.send("item_catalog", b"new-item", item_catalog.CODEC.encode(
            CatalogItem(item_id="new-item", author_id="a-new", tags=["t-new"])))
        seen["during"] = ask("during", 20)
        time.sleep(max(0.0, OUTAGE_S - (time.monotonic() - down_at)))
        seen["down_s"] = time.monotonic() - down_at
        redis.start()
        redis.wait_ready(30)
        up_at = time.monotonic()
        seen["degraded_until_s"] = _first_clean_answer(ask, up_at)
        try:
            wait_for(store.current_version, REPUBLISH_WAIT_S, "a version without new data", workers)
            seen["republished_without_data_s"] = time.monotonic() - up_at
        except AssertionError:
            seen["republished_without_data_s"] = None
        send_funnel(settings, 10, start=20)
        new_data_at = time.monotonic()
        wait_for(lambda: (store.current_version() or 0) > seen["version_before"], 60, "a version with new data", workers)
        seen["republished_s"] = time.monotonic() - new_data_at
        # the scorer switches on its next version check (every 0.5 s, the version read whole first):
        # ask once it holds the newest one
        wait_for(lambda: _scorer_version(settings) == store.current_version(), 60, "the scorer on the new version",
                 workers)
        seen["version_after"] = store.current_version()
        seen["after"] = ask("after", 5)
        sender.send("item_catalog", b"later-item", item_catalog.CODEC.encode(
            CatalogItem(item_id="later-item", author_id="a-later")))
        sender.flush()
        time.sleep(2.0)
        seen["catalog_items"] = store.items(["new-item", "later-item"])
        seen["alive"] = [w.alive() for w in workers]
    finally:
        for worker in workers:
            worker.stop()
        reader.close()
        sender.close()
        redis.stop()
    return seen


def _scorer_version(settings) -> float:
    """The model version the serving worker's scorer holds (0 while its metrics are not up yet)."""
    try:
        return metric_sum(scrape(settings.worker.metrics_port), "prerank_model_version", agent="scorer")
    except OSError:
        return 0.0


def _first_clean_answer(ask, since: float) -> float:
    """Seconds after ``since`` until a request is answered without ``degraded``."""
    for attempt in range(60):
        answers = ask(f"probe{attempt}-", 1)
        if all(not r.degraded and r.error is None for r in answers.values()):
            return time.monotonic() - since
        time.sleep(0.5)
    raise AssertionError("the scorer never left the degraded mode")


def test_every_request_is_answered_during_the_outage_marked_degraded(outage, measure):
    during = outage["during"]
    measure("requests_sent", 20)
    measure("requests_answered", len(during))
    measure("requests_lost", 20 - len(during))
    measure("degraded_answers", sum(1 for r in during.values() if r.degraded))
    measure("outage_s", round(outage["down_s"], 1))
    assert len(during) == 20
    problems = {r.request_id: r.error for r in during.values() if r.error is not None or not r.items}
    assert not problems
    served = {r.model_version for r in during.values()}
    held = max(r.model_version for r in outage["before"].values())  # what the scorer served before
    assert len(served) == 1 and served.pop() >= held  # the model held in memory
    assert sum(1 for r in during.values() if r.degraded) >= 19  # at most the first may beat the failure
    assert all(not r.degraded for r in outage["before"].values())


def test_scorer_recovers_and_serves_the_new_version(outage, measure):
    measure("recover_s", round(outage["degraded_until_s"], 1))
    measure("new_data_to_version_s", round(outage["republished_s"], 1))
    assert all(outage["alive"])
    after = outage["after"]
    assert all(not r.degraded and r.error is None for r in after.values())
    # the version it held when asked, or one the publisher made since
    assert all(r.model_version >= outage["version_after"] for r in after.values())


def test_publisher_republishes_the_current_model_without_new_data(outage, measure):
    measure("republished_without_data_s", outage["republished_without_data_s"])
    assert outage["republished_without_data_s"] is not None


def test_catalog_updates_during_and_after_the_outage_are_not_lost(outage, measure):
    during, after = outage["catalog_items"]
    measure("catalog_update_during_outage_lost", int(during is None))
    measure("catalog_update_after_recovery_lost", int(after is None))
    assert during is not None and during.author_id == "a-new"
    assert after is not None and after.author_id == "a-later"
