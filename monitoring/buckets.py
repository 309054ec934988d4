"""Histogram buckets, each tuned to the target the histogram is watched against.

A quantile read from a histogram is only as precise as the buckets around it, so each
tuple puts edges on both sides of its target (``design.md`` section 3) and at the alert
thresholds of ``monitoring/prometheus/rules``.

>>> SCORER_LATENCY_SECONDS[0], SCORER_LATENCY_SECONDS[-1]
(0.00025, 0.1)
>>> 0.002 in SCORER_LATENCY_SECONDS and 0.01 in SCORER_LATENCY_SECONDS
True
>>> 5.0 in FRESHNESS_SECONDS
True
>>> all(a < b for a, b in zip(FRESHNESS_SECONDS, FRESHNESS_SECONDS[1:]))
True
"""

#: In-process scoring of one request: target p99 <= 2 ms warm, alert at 10 ms, 25 ms over Kafka.
SCORER_LATENCY_SECONDS = (
    0.00025, 0.0005, 0.00075, 0.001, 0.0015, 0.002, 0.003, 0.005,
    0.0075, 0.01, 0.015, 0.025, 0.05, 0.1,
)

#: Candidates per score request: the topic allows 1..5000, the design's typical value is ~1000.
CANDIDATES_PER_REQUEST = (10, 50, 100, 250, 500, 750, 1000, 1500, 2000, 3000, 5000)

#: One trainer micro-batch: at >= 5,000 samples/s a batch of a few hundred takes tens of ms.
TRAINER_BATCH_SECONDS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
)

#: One publish (item tower over the hot set, Redis writes, version flip).
PUBLISH_SECONDS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 30.0)

#: Impression to its item's vector readable in Redis: target p95 <= 5 s.
FRESHNESS_SECONDS = (0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 4.0, 5.0, 7.5, 10.0, 15.0, 30.0, 60.0)
