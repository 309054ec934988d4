"""The streaming replay's request building, without a broker (the funnel itself is in integration)."""

from __future__ import annotations

import pytest

from core.settings import Settings
from replay.grouping import group_requests
from replay.state import ReplayState
from replay.stream import StreamConfig, StreamingReplay
from replay.synthetic import SyntheticConfig, generate
from streams import score_requests


class RecordingProducer:
    def __init__(self) -> None:
        self.sent = []

    def send(self, topic, key, value):
        self.sent.append((topic, key, value))


@pytest.fixture(scope="module")
def dataset():
    with pytest.warns(UserWarning, match="(?i)synthetic"):
        return generate(SyntheticConfig(n_users=50, n_items=400, days=2))


def test_exposed_items_are_not_first_in_the_candidates_and_the_order_is_reproducible(dataset):
    requests = [r for r in group_requests(dataset.exposures) if len(r.item_ids) >= 2][:40]
    orders = []
    for _ in range(2):
        replay = StreamingReplay(Settings(), ReplayState(dataset, StreamConfig(train_until_ms=0, eval_from_ms=0)),
                                 teacher=None)
        producer, outstanding = RecordingProducer(), {}
        for request in requests:
            replay._send(producer, request, outstanding)
        orders.append([outstanding[r.request_id].candidates for r in requests])
    assert orders[0] == orders[1]
    exposed_first = sum(cands[: len(r.item_ids)] == list(r.item_ids) for r, cands in zip(requests, orders[0]))
    assert exposed_first < len(requests) / 4  # a tie-breaking arm gains nothing from the position
    sent = score_requests.CODEC.decode(producer.sent[0][2])
    assert sent.candidates == orders[0][0] and set(requests[0].item_ids) <= set(sent.candidates)


def test_a_funnel_that_stops_answering_raises_instead_of_hanging(dataset):
    import time

    from replay.exceptions import ReplayStalled

    replay = StreamingReplay(Settings(), ReplayState(dataset, StreamConfig(train_until_ms=0, eval_from_ms=0,
                                                                           response_timeout_s=5.0)), teacher=None)
    replay._last_answer = time.monotonic() - 6.0
    replay._check_stalled({})  # nothing in flight: nothing to wait for
    with pytest.raises(ReplayStalled, match=r"score-responses for 6 s with 1 requests in flight"):
        replay._check_stalled({"r1": object()})
    replay._last_answer = time.monotonic()
    replay._check_stalled({"r1": object()})  # a recent answer: still fine


def test_all_users_streams_every_request_of_the_replay_period(dataset):
    from prerank.cli import build_parser
    from replay.stream import replay_requests

    args = build_parser().parse_args(["replay", "--all-users"])
    assert args.max_requests is None and build_parser().parse_args(["replay"]).max_requests == 3000
    with pytest.raises(SystemExit):  # one or the other
        build_parser().parse_args(["replay", "--all-users", "--max-requests", "10"])
    start = dataset.exposures[0].ts_ms
    config = StreamConfig(train_until_ms=start + 86_400_000, eval_from_ms=start + 86_400_000,
                          max_requests=args.max_requests)
    _, streamed, sampling = replay_requests(dataset, config)
    assert sampling["user_sample_rate"] == 1.0
    assert len(streamed) == sampling["streamed_requests"] == sampling["replay_period_requests"] > 0
    _, sampled, sampling = replay_requests(dataset, StreamConfig(train_until_ms=config.train_until_ms,
                                                                 eval_from_ms=config.eval_from_ms, max_requests=20))
    assert sampling["user_sample_rate"] < 1.0 and len(sampled) < len(streamed)


def test_a_user_sampled_replay_uses_the_sampled_l1_unless_one_is_configured():
    from prerank.cli import SAMPLED_FTRL_L1, _with_ftrl_l1

    default = Settings()
    assert _with_ftrl_l1(default, None, sampled=True).model.ftrl_l1 == SAMPLED_FTRL_L1
    assert _with_ftrl_l1(default, None, sampled=False).model.ftrl_l1 is None  # the mode's knee
    assert _with_ftrl_l1(default, 3.0, sampled=True).model.ftrl_l1 == 3.0
    configured = Settings(model={"ftrl_l1": 2.0})
    assert _with_ftrl_l1(configured, None, sampled=True).model.ftrl_l1 == 2.0
