"""Consumer lag: how far an agent's committed offsets trail the ends of its partitions.

Kafka offsets name the *next* record: a partition's end offset is where the next record
will be written and a committed offset is the next record the group will read. So the
lag of a partition is ``end - committed`` messages.

>>> consumer_lag({("impressions", 0): 120, ("impressions", 1): 80},
...              {("impressions", 0): 100, ("impressions", 1): 80})
{('impressions', 0): 20, ('impressions', 1): 0}
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from monitoring.exceptions import InvalidOffsetsError

if TYPE_CHECKING:
    from monitoring.metrics import PrerankMetrics

TopicPartition = tuple[str, int]


def _offset(value: object, what: str, partition: TopicPartition) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidOffsetsError(f"{what} offset of {partition} must be an int, got {value!r}")
    if value < 0:
        raise InvalidOffsetsError(f"{what} offset of {partition} must be >= 0, got {value}")
    return value


def consumer_lag(
    end_offsets: Mapping[TopicPartition, int],
    committed: Mapping[TopicPartition, int | None],
    start_offsets: Mapping[TopicPartition, int] | None = None,
) -> dict[TopicPartition, int]:
    """Lag in messages of every partition in ``end_offsets``.

    Parameters
    ----------
    end_offsets
        ``(topic, partition) -> end offset`` (the high watermark, as returned by
        ``KafkaConsumer.end_offsets`` or aiokafka's ``end_offsets``).
    committed
        ``(topic, partition) -> committed offset`` of the group; ``None`` or a missing key
        means nothing was committed yet.
    start_offsets
        ``(topic, partition) -> log start offset``; a partition without a commit lags by
        ``end - start`` (the group would start reading at the log start). Missing: 0.

    Returns
    -------
    dict
        ``(topic, partition) -> lag >= 0``. A commit ahead of the end offset (the two are
        read at different instants) counts as no lag rather than a negative one.

    Examples
    --------
    Nothing committed yet: the whole retained log is lag.

    >>> consumer_lag({("t", 0): 50}, {}, start_offsets={("t", 0): 10})
    {('t', 0): 40}
    >>> consumer_lag({("t", 0): 50}, {("t", 0): 55})
    {('t', 0): 0}
    >>> consumer_lag({("t", 0): -1}, {})
    Traceback (most recent call last):
    ...
    monitoring.exceptions.InvalidOffsetsError: end offset of ('t', 0) must be >= 0, got -1
    """
    starts = start_offsets or {}
    lags = {}
    for partition, end in end_offsets.items():
        end = _offset(end, "end", partition)
        position = committed.get(partition)
        if position is None:
            position = starts.get(partition, 0)
            position = _offset(position, "start", partition)
        else:
            position = _offset(position, "committed", partition)
        lags[partition] = max(end - position, 0)
    return lags


def record_consumer_lag(
    metrics: PrerankMetrics, agent: str, lags: Mapping[TopicPartition, int]
) -> None:
    """Set ``prerank_consumer_lag_messages`` for each partition of ``agent``.

    >>> from prometheus_client import CollectorRegistry
    >>> from monitoring.metrics import PrerankMetrics
    >>> metrics = PrerankMetrics(CollectorRegistry())
    >>> record_consumer_lag(metrics, "trainer", {("training-samples", 3): 42})
    >>> metrics.registry.get_sample_value("prerank_consumer_lag_messages",
    ...     {"agent": "trainer", "topic": "training-samples", "partition": "3"})
    42.0
    """
    for (topic, partition), lag in lags.items():
        metrics.consumer_lag_messages.labels(agent=agent, topic=topic, partition=str(partition)).set(lag)
