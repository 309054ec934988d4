"""Hostile input on every input topic and on ``POST /score`` (cases drawn by hypothesis).

Malformed records: one dead letter per consuming agent, exactly at the record's partition and
offset; the dead-letter counters match; no worker dies. Valid-but-hostile requests (k larger
than the candidates, unknown ids, duplicate request ids, timestamps out of order or far ahead):
answered. HTTP: every body gets 200 or a documented error status with a JSON ``error``.
"""

from __future__ import annotations

import json
from collections import Counter

import pytest
from hypothesis import HealthCheck, given, settings

from monitoring.scrape import metric_sum, scrape
from streams import dead_letters, score_responses
from streams.base import SCHEMA_VERSION
from streams.exceptions import RecordError
from streams.registry import TOPIC_MODULES
from tests.reliability.harness import (
    Sender,
    TopicReader,
    Worker,
    create_topics,
    fresh_settings,
    post,
    publish_model,
    wait_for,
)
from tests.reliability.hostile import (
    CONSUMERS,
    INPUT_TOPICS,
    NOW_MS,
    any_hostile_record,
    draw_examples,
    http_bodies,
    tricky_requests,
)

HTTP_ERRORS = {400, 411, 413, 422}


# --- the codecs alone: fast, many examples ---------------------------------------------------
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=any_hostile_record())
def test_every_malformed_record_is_a_record_error(case):
    with pytest.raises(RecordError):
        TOPIC_MODULES[case.topic].CODEC.decode(case.value, topic=case.topic, partition=0, offset=7)


def test_deeply_nested_json_is_a_record_error():
    with pytest.raises(RecordError):
        TOPIC_MODULES["score_requests"].CODEC.decode(b"[" * 100_000)


def test_one_far_future_event_does_not_make_every_later_event_late():
    from funnel.labels import Feedback, JoinConfig, LabelJoin, Ranked

    join = LabelJoin(JoinConfig(window_ms=60_000))
    join.add_impression("evil", "u0", Feedback("x", ts_ms=NOW_MS * 10))  # year ~7000 is rejected; this is 2508
    for r in range(5):
        join.add_rank_scores(f"r{r}", "u1", NOW_MS + r, [Ranked("a", 0, {"click": 1.0})])
    assert join.counters["late_rank_scores"] == 0
    assert {p.request_id for p in join.flush()} >= {f"r{r}" for r in range(5)}


# --- the running workers ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def workers(base_settings, tmp_path_factory):
    from tests.conftest import need_service

    need_service("Kafka", base_settings.stack.host, base_settings.stack.kafka_port)
    need_service("Redis", base_settings.stack.host, base_settings.stack.redis_port)
    folder = tmp_path_factory.mktemp("hostile")
    stack = fresh_settings(base_settings, folder)
    create_topics(stack)
    publish_model(stack)
    serving = Worker(stack, "history,joiner,scorer", folder / "serving.log", index=0)
    trainer = Worker(stack, "trainer", folder / "trainer.log", index=1)
    try:
        wait_for(lambda: _up(serving) and _up(trainer), 90, "workers serving /metrics", [serving, trainer])
        yield stack, serving, trainer
    finally:
        serving.stop()
        trainer.stop()


def _up(worker) -> bool:
    try:
        scrape(worker.metrics_port)
        return True
    except OSError:
        return False


def _letters(messages) -> set[tuple]:
    decoded = (dead_letters.CODEC.decode(m.value) for m in messages)
    return {(d.source_topic, d.partition, d.offset, d.agent) for d in decoded}


@pytest.mark.integration
def test_every_malformed_record_becomes_one_dead_letter_per_agent(workers, measure):
    stack, serving, trainer = workers
    cases = draw_examples(any_hostile_record(), 150)
    sender = Sender(stack)
    expected: set[tuple] = set()
    try:
        for case in cases:
            meta = sender.send(case.topic, case.key, case.value).get(timeout=30)
            expected |= {(meta.topic, meta.partition, meta.offset, agent) for agent in CONSUMERS[case.topic]}
    finally:
        sender.close()
    reader = TopicReader(stack, "dead_letters")
    try:
        messages = reader.until(lambda got: expected <= _letters(got), 120, [serving, trainer])
    finally:
        reader.close()
    letters = _letters(messages)
    serving_metrics, trainer_metrics = scrape(serving.metrics_port), scrape(trainer.metrics_port)
    counted = {topic: metric_sum(serving_metrics, "prerank_dead_letters_total", topic=stack.topics.name(
        TOPIC_MODULES[topic].TOPIC.name)) + metric_sum(trainer_metrics, "prerank_dead_letters_total",
        topic=stack.topics.name(TOPIC_MODULES[topic].TOPIC.name)) for topic in INPUT_TOPICS}
    per_topic = Counter(case.topic for case in cases)
    measure("records_sent", len(cases))
    measure("mutations", len({case.mutation for case in cases}))
    measure("dead_letters_expected", len(expected))
    measure("dead_letters_missing", len(expected - letters))
    measure("workers_alive", int(serving.alive()) + int(trainer.alive()))
    assert letters == expected
    for topic in INPUT_TOPICS:
        assert counted[topic] == per_topic[topic] * len(CONSUMERS[topic]), topic
    invalid_requests = metric_sum(serving_metrics, "prerank_scorer_errors_total", reason="invalid_request")
    assert invalid_requests == per_topic["score_requests"]
    assert serving.alive() and trainer.alive()


@pytest.mark.integration
def test_valid_but_hostile_requests_are_all_answered(workers, measure):
    stack, serving, _ = workers
    requests = [json.loads(json.dumps(r)) for r in draw_examples(tricky_requests(request_id="dup"), 60)]
    for n, request in enumerate(requests):
        request["request_id"] = f"dup{n % 20}"  # every id three times
    sender = Sender(stack)
    try:
        for request in requests:
            sender.send("score_requests", request["user_id"].encode(),
                        json.dumps({**request, "v": SCHEMA_VERSION}).encode())
        sender.flush()
    finally:
        sender.close()
    reader = TopicReader(stack, "score_responses")
    try:
        messages = reader.until(lambda got: len(got) >= len(requests), 90, [serving])
    finally:
        reader.close()
    responses = [score_responses.CODEC.decode(m.value) for m in messages]
    measure("requests_sent", len(requests))
    measure("requests_answered", len(responses))
    assert Counter(r.request_id for r in responses) == Counter(r["request_id"] for r in requests)
    by_request: dict[tuple, list] = {}
    for response in responses:
        by_request.setdefault((response.request_id, response.user_id), []).append(response)
    for request in requests:  # one key's responses come back in its requests' order
        _check_answer(request, by_request[(request["request_id"], request["user_id"])].pop(0))


def _check_answer(request: dict, response) -> None:
    assert response.error is None, response.error
    candidates = request["candidates"]
    assert len(response.items) == min(request["k"], len(candidates))
    assert all(item.item_id in candidates for item in response.items)
    scores = [item.score for item in response.items]
    assert scores == sorted(scores, reverse=True)


@pytest.mark.integration
def test_http_answers_every_body_with_a_documented_status(workers, measure):
    stack, serving, _ = workers
    statuses: Counter = Counter()

    @settings(max_examples=200, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(http_bodies())
    def probe(case):
        kind, body = case
        status, answer = post(serving.web_port, body)
        statuses[status] += 1
        assert status == 200 or status in HTTP_ERRORS, (kind, status, answer)
        if status != 200:
            assert isinstance(answer.get("error"), str) and answer["error"], answer
        elif kind == "tricky":
            request = json.loads(body)
            assert len(answer["items"]) == min(request["k"], len(request["candidates"]))

    probe()
    for status, count in sorted(statuses.items()):
        measure(f"http_{status}", count)
    assert serving.alive()


@pytest.mark.integration
def test_http_bounds_the_body_and_the_method(workers, measure):
    _, serving, _ = workers
    big = json.dumps({"request_id": "big", "user_id": "u", "ts_ms": 0, "candidates": ["x" * 100] * 20_000}).encode()
    oversized, _ = post(serving.web_port, big)
    chunked, _ = post(serving.web_port, b'{"request_id": "c"}', chunked=True)
    too_many, answer = post(serving.web_port, json.dumps(
        {"request_id": "many", "user_id": "u", "ts_ms": 0, "candidates": [f"i{i}" for i in range(5001)]}).encode())
    measure("oversized_body_status", oversized)
    measure("chunked_body_status", chunked)
    measure("too_many_candidates_status", too_many)
    assert (oversized, chunked) == (413, 411)  # no Content-Length: 411 Length Required
    assert too_many == 400 and "candidates" in answer["error"]
    assert serving.alive()


@pytest.mark.integration
def test_http_deeply_nested_json_is_a_400(workers):
    _, serving, _ = workers
    status, _ = post(serving.web_port, b"[" * 100_000)
    assert status == 400
