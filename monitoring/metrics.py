"""Every Prometheus metric of the pre-ranking system, created in one place.

Names start with ``prerank_`` and carry their unit (``_seconds``, ``_ratio``, ``_total``,
``_messages``); histograms have explicit buckets (:mod:`monitoring.buckets`); the registry is
passed in, so tests use a fresh :class:`~prometheus_client.CollectorRegistry` and workers use
:func:`metrics_from_default_registry`. Label values come from closed sets (constants below) so
the number of series stays bounded; their children are created up front, so every series
exists (at zero) from the first scrape and ``rate()`` sees the first increment.

Which agent updates which metric
--------------------------------
=========  ==================================================================================
agent      metrics (attribute names; the exposed name is ``prerank_`` + attribute)
=========  ==================================================================================
scorer     ``scorer_latency_seconds``, ``scorer_candidates``, ``scorer_item_vectors_total``
           {tier}, ``scorer_stage_seconds_total`` {stage}, ``scorer_requests_total``,
           ``scorer_errors_total`` {reason},
           ``model_version`` and ``model_version_age_seconds`` {agent="scorer"}
trainer    ``trainer_samples_total`` {mode}, ``trainer_loss`` {mode}, ``trainer_batch_seconds``,
           ``trainer_duplicate_records_total``,
           ``trainer_progressive_auc_ratio`` {label}, ``embedding_rows``,
           ``embedding_zero_rows_ratio``, ``embedding_admissions_total``,
           ``embedding_evictions_total`` {table}, ``model_version`` {agent="trainer"}
publisher  ``publish_duration_seconds``, ``published_items_total``,
           ``published_versions_total``, ``publish_deleted_items_total``, ``freshness_seconds``,
           ``model_version`` and ``model_version_age_seconds`` {agent="publisher"}
joiner     ``joiner_records_total``, ``joiner_events_total`` {event}, ``joiner_pending_requests``,
           ``consistency_recall_ratio`` {k} (fine ranker's top-N inside the pre-ranker's top-K)
every one  ``dead_letters_total`` {topic, reason}, ``agent_errors_total`` {agent},
           ``dead_letter_failures_total`` {agent}, ``consumer_lag_messages``
           {agent, topic, partition} (see :mod:`monitoring.lag`)
=========  ==================================================================================

Faust's own sensor adds ``prerank_faust_*`` metrics to the same registry
(:func:`monitoring.faust_sensor.enable_faust_sensor`); each worker serves the registry on
``/metrics`` (:func:`monitoring.server.serve_metrics`).

Examples
--------
>>> from prometheus_client import CollectorRegistry
>>> registry = CollectorRegistry()
>>> metrics = PrerankMetrics(registry)
>>> metrics.scorer_latency_seconds.observe(0.0012)
>>> metrics.scorer_item_vectors_total.labels(tier="local").inc(990)
>>> registry.get_sample_value("prerank_scorer_item_vectors_total", {"tier": "local"})
990.0
>>> registry.get_sample_value("prerank_scorer_item_vectors_total", {"tier": "computed"})
0.0
>>> registry.get_sample_value("prerank_scorer_latency_seconds_bucket", {"le": "0.0015"})
1.0
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

from monitoring import buckets
from monitoring.exceptions import UnknownLabelValueError

AGENTS = ("joiner", "history", "trainer", "publisher", "scorer")
CACHE_TIERS = ("local", "computed")  # in process (resident or cached), or the item tower now
FEEDBACK_LABELS = ("click", "long_view")
RECALL_AT_K = (50, 100, 200)
JOIN_EVENTS = ("late", "orphan", "duplicate", "ahead")
LOSS_MODES = ("cascade", "distill", "impressions", "ranked")
SCORER_STAGES = ("decode", "user_features", "user_tower", "item_vectors", "product_top_k", "response", "encode",
                 "produce")  # a request's CPU, in order: the agent's stages around funnel.scoring's
SCORER_ERROR_REASONS = ("invalid_request", "too_many_candidates", "no_model", "response_too_large", "internal")
#: Why a record became a dead letter: never the error's text, which is the sender's to choose.
#: ``invalid_json`` / ``invalid_msgpack``: the bytes do not parse; ``schema``: a field is missing,
#: of the wrong type or out of range (or the payload is not an object); ``unknown_field``: a field
#: the schema does not have; ``too_large``: over the codec's byte limit; ``tombstone``: no value
#: where a record is expected; ``version``: an unknown schema version; ``key_mismatch``: the Kafka
#: key is not the record's ``user_id``; ``output_invalid``: what the agent built from the record
#: does not validate (a training sample over its bounds); ``output_too_large``: what it built is
#: over the producer's limit; ``send_failed``: the broker refused or the send failed otherwise;
#: ``internal``: any other exception while processing the record (a bug, not bad input).
DEAD_LETTER_REASONS = (
    "invalid_json", "invalid_msgpack", "schema", "unknown_field", "too_large", "tombstone", "version",
    "key_mismatch", "output_invalid", "output_too_large", "send_failed", "internal",
)
#: The agents (and their timers) of a worker, as they name themselves in dead letters and errors.
WORKER_AGENTS = ("catalog", "profiles", "history", "joiner", "scorer", "ranker", "trainer", "publisher")


def _check(label: str, value: str, allowed: tuple) -> str:
    if value not in allowed:
        raise UnknownLabelValueError(f"{label}={value!r} is not one of {allowed}")
    return value


class PrerankMetrics:
    """Every metric of the system, registered on ``registry``.

    Parameters
    ----------
    registry
        Where the metrics are registered. Two instances on one registry collide
        (``ValueError: Duplicated timeseries``), as they would in one process.
    clock
        Wall-clock seconds, used for model-version age; injectable for tests.
    """

    def __init__(self, registry: CollectorRegistry, clock: Callable[[], float] = time.time) -> None:
        if not isinstance(registry, CollectorRegistry):
            raise TypeError(f"registry must be a CollectorRegistry, got {type(registry).__name__}")
        self.registry = registry
        self._clock = clock
        self._create_serving(registry)
        self._create_training(registry)
        self._create_embeddings(registry)
        self._create_publishing(registry)
        self._create_streaming(registry)
        self._create_children()

    def _create_serving(self, registry: CollectorRegistry) -> None:
        self.scorer_latency_seconds = Histogram(
            "prerank_scorer_latency_seconds",
            "Time to score one request in the scorer (user tower, item vectors, cosine, top-k).",
            registry=registry, buckets=buckets.SCORER_LATENCY_SECONDS,
        )
        self.scorer_candidates = Histogram(
            "prerank_scorer_candidates",
            "Candidate items per score request.",
            registry=registry, buckets=buckets.CANDIDATES_PER_REQUEST,
        )
        self.scorer_item_vectors_total = Counter(
            "prerank_scorer_item_vectors_total",
            "Item vectors used by the scorer, by the cache tier that supplied them "
            "(local LRU hit, Redis hit, or computed by the item tower on a miss).",
            ["tier"], registry=registry,
        )
        self.scorer_stage_seconds_total = Counter(
            "prerank_scorer_stage_seconds_total",
            "Seconds the scorer spent per stage of its requests (divide by requests: the CPU breakdown).",
            ["stage"], registry=registry,
        )
        self.scorer_requests_total = Counter(
            "prerank_scorer_requests_total", "Score requests handled (answered or failed).",
            registry=registry,
        )
        self.scorer_errors_total = Counter(
            "prerank_scorer_errors_total", "Score requests that failed, by reason.",
            ["reason"], registry=registry,
        )

    def _create_training(self, registry: CollectorRegistry) -> None:
        self.trainer_samples_total = Counter(
            "prerank_trainer_samples_total", "Training samples (request x item) learned, by loss mode.",
            ["mode"], registry=registry,
        )
        self.trainer_loss = Gauge(
            "prerank_trainer_loss", "Mean loss of the last micro-batch, by loss mode.",
            ["mode"], registry=registry,
        )
        self.trainer_duplicate_records_total = Counter(
            "prerank_trainer_duplicate_records_total",
            "Training records dropped because the trainer had already learned their request "
            "(the joiner emits at least once; this makes it exactly once into the model).",
            registry=registry,
        )
        self.trainer_batch_seconds = Histogram(
            "prerank_trainer_batch_seconds", "Time to learn one micro-batch.",
            registry=registry, buckets=buckets.TRAINER_BATCH_SECONDS,
        )
        self.trainer_progressive_auc_ratio = Gauge(
            "prerank_trainer_progressive_auc_ratio",
            "Progressive (score before learn) AUC of the student over a recent window, by label.",
            ["label"], registry=registry,
        )
        self.consistency_recall_ratio = Gauge(
            "prerank_consistency_recall_ratio",
            "Recall of the fine ranker's top-N inside the pre-ranker's top-K, over a recent window.",
            ["k"], registry=registry,
        )

    def _create_embeddings(self, registry: CollectorRegistry) -> None:
        self.embedding_rows = Gauge(
            "prerank_embedding_rows", "Rows currently admitted in a dynamic embedding table.",
            ["table"], registry=registry,
        )
        self.embedding_zero_rows_ratio = Gauge(
            "prerank_embedding_zero_rows_ratio",
            "Fraction of admitted rows whose FTRL weights are all exactly zero.",
            ["table"], registry=registry,
        )
        self.embedding_admissions_total = Counter(
            "prerank_embedding_admissions_total", "Ids given their own row after min_count sightings.",
            ["table"], registry=registry,
        )
        self.embedding_evictions_total = Counter(
            "prerank_embedding_evictions_total", "Rows evicted after their TTL without updates.",
            ["table"], registry=registry,
        )

    def _create_publishing(self, registry: CollectorRegistry) -> None:
        self.model_version = Gauge(
            "prerank_model_version", "Model version an agent holds (trainer: last checkpoint, "
            "publisher: last published, scorer: currently served).",
            ["agent"], registry=registry,
        )
        self.model_version_age_seconds = Gauge(
            "prerank_model_version_age_seconds",
            "Seconds since the agent's model version was created, computed at scrape time.",
            ["agent"], registry=registry,
        )
        self.publish_duration_seconds = Histogram(
            "prerank_publish_duration_seconds",
            "Time to publish one version (item vectors, dense weights, flip of current).",
            registry=registry, buckets=buckets.PUBLISH_SECONDS,
        )
        self.published_items_total = Counter(
            "prerank_published_items_total", "Item vectors written to Redis.", registry=registry,
        )
        self.published_versions_total = Counter(
            "prerank_published_versions_total", "Model versions made current.", registry=registry,
        )
        self.publish_deleted_items_total = Counter(
            "prerank_publish_deleted_items_total",
            "Evicted items dropped from the published vector set.",
            registry=registry,
        )
        self.freshness_seconds = Histogram(
            "prerank_freshness_seconds",
            "From an impression's arrival to a model version reflecting it being readable in Redis.",
            registry=registry, buckets=buckets.FRESHNESS_SECONDS,
        )

    def _create_streaming(self, registry: CollectorRegistry) -> None:
        self.joiner_records_total = Counter(
            "prerank_joiner_records_total", "Training records (one per request) emitted by the joiner.",
            registry=registry,
        )
        self.joiner_pending_requests = Gauge(
            "prerank_joiner_pending_requests",
            "Requests whose join window is open in this worker (held in the joiner's tables).",
            registry=registry,
        )
        self.joiner_events_total = Counter(
            "prerank_joiner_events_total",
            "Events the joiner could not join normally: late (after the window), orphan "
            "(no matching request), duplicate (seen before).",
            ["event"], registry=registry,
        )
        self.dead_letters_total = Counter(
            "prerank_dead_letters_total", "Records sent to the dead-letter topic, by source topic "
            "and reason (one of DEAD_LETTER_REASONS).", ["topic", "reason"], registry=registry,
        )
        self.agent_errors_total = Counter(
            "prerank_agent_errors_total",
            "Exceptions an agent or one of its timers caught and survived (the record, if any, "
            "becomes a dead letter), by agent.",
            ["agent"], registry=registry,
        )
        self.dead_letter_failures_total = Counter(
            "prerank_dead_letter_failures_total",
            "Dead letters that could not be sent even without the record's bytes (logged instead).",
            ["agent"], registry=registry,
        )
        self.consumer_lag_messages = Gauge(
            "prerank_consumer_lag_messages",
            "Messages between a partition's end offset and the agent's committed offset.",
            ["agent", "topic", "partition"], registry=registry,
        )

    def _create_children(self) -> None:
        for tier in CACHE_TIERS:
            self.scorer_item_vectors_total.labels(tier=tier)
        for stage in SCORER_STAGES:
            self.scorer_stage_seconds_total.labels(stage=stage)
        for reason in SCORER_ERROR_REASONS:
            self.scorer_errors_total.labels(reason=reason)
        for mode in LOSS_MODES:
            self.trainer_samples_total.labels(mode=mode)
        for event in JOIN_EVENTS:
            self.joiner_events_total.labels(event=event)
        for agent in WORKER_AGENTS:
            self.agent_errors_total.labels(agent=agent)
            self.dead_letter_failures_total.labels(agent=agent)

    # Helpers where a metric needs more than one call, or a checked label.

    def observe_item_vectors(self, local: int, computed: int) -> None:
        """Count one request's item vectors by the tier that supplied them.

        >>> from prometheus_client import CollectorRegistry
        >>> metrics = PrerankMetrics(CollectorRegistry())
        >>> metrics.observe_item_vectors(local=980, computed=20)
        >>> metrics.registry.get_sample_value("prerank_scorer_item_vectors_total", {"tier": "computed"})
        20.0
        """
        for tier, count in (("local", local), ("computed", computed)):
            if count < 0:
                raise ValueError(f"{tier} count must be >= 0, got {count}")
            self.scorer_item_vectors_total.labels(tier=tier).inc(count)

    def add_scorer_stages(self, seconds: dict[str, float]) -> None:
        """Add seconds per stage (names of :data:`SCORER_STAGES`) to the breakdown.

        >>> from prometheus_client import CollectorRegistry
        >>> metrics = PrerankMetrics(CollectorRegistry())
        >>> metrics.add_scorer_stages({"decode": 0.25, "encode": 0.5})
        >>> metrics.registry.get_sample_value("prerank_scorer_stage_seconds_total", {"stage": "encode"})
        0.5
        """
        for stage, spent in seconds.items():
            if spent:
                self.scorer_stage_seconds_total.labels(stage=_check("stage", stage, SCORER_STAGES)).inc(spent)

    def set_progressive_auc(self, label: str, auc: float) -> None:
        """Record the student's progressive AUC for ``label`` (click or long_view)."""
        if not 0.0 <= auc <= 1.0:
            raise ValueError(f"AUC must lie in [0, 1], got {auc}")
        self.trainer_progressive_auc_ratio.labels(label=_check("label", label, FEEDBACK_LABELS)).set(auc)

    def set_consistency_recall(self, k: int, recall: float) -> None:
        """Record recall of the fine ranker's top-N inside the pre-ranker's top-``k``.

        >>> from prometheus_client import CollectorRegistry
        >>> metrics = PrerankMetrics(CollectorRegistry())
        >>> metrics.set_consistency_recall(100, 0.8)
        >>> metrics.registry.get_sample_value("prerank_consistency_recall_ratio", {"k": "100"})
        0.8
        >>> metrics.set_consistency_recall(7, 0.8)
        Traceback (most recent call last):
        ...
        monitoring.exceptions.UnknownLabelValueError: k=7 is not one of (50, 100, 200)
        """
        if not 0.0 <= recall <= 1.0:
            raise ValueError(f"recall must lie in [0, 1], got {recall}")
        self.consistency_recall_ratio.labels(k=str(_check("k", k, RECALL_AT_K))).set(recall)

    def count_dead_letter(self, topic: str, reason: str) -> None:
        """Count one dead letter written for a record of ``topic``; ``reason`` is one of
        :data:`DEAD_LETTER_REASONS` (a closed set: the error's text never becomes a label).

        >>> from prometheus_client import CollectorRegistry
        >>> metrics = PrerankMetrics(CollectorRegistry())
        >>> metrics.count_dead_letter("prerank.impressions", "unknown_field")
        >>> metrics.registry.get_sample_value("prerank_dead_letters_total",
        ...                                   {"topic": "prerank.impressions", "reason": "unknown_field"})
        1.0
        >>> metrics.count_dead_letter("prerank.impressions", "injected: Extra inputs are not permitted")
        Traceback (most recent call last):
        ...
        monitoring.exceptions.UnknownLabelValueError: reason='injected: Extra inputs are not permitted' is not one of ...
        """
        self.dead_letters_total.labels(topic=topic, reason=_check("reason", reason, DEAD_LETTER_REASONS)).inc()

    def count_agent_error(self, agent: str) -> None:
        """Count one exception an agent (or its timer) caught and survived."""
        self.agent_errors_total.labels(agent=_check("agent", agent, WORKER_AGENTS)).inc()

    def count_dead_letter_failure(self, agent: str) -> None:
        """Count one dead letter that could not be sent at all."""
        self.dead_letter_failures_total.labels(agent=_check("agent", agent, WORKER_AGENTS)).inc()

    def count_join_event(self, event: str, amount: int = 1) -> None:
        """Count late, orphan, duplicate or ahead (watermark held back) events seen by the joiner."""
        self.joiner_events_total.labels(event=_check("event", event, JOIN_EVENTS)).inc(amount)

    def set_model_version(self, agent: str, version: int, created_at_s: float) -> None:
        """Record the model version ``agent`` holds; its age is computed at every scrape.

        Parameters
        ----------
        agent
            One of :data:`AGENTS`.
        version
            The integer model version (the store's ``current`` key).
        created_at_s
            Wall-clock creation time of the version, in seconds since the epoch.

        >>> from prometheus_client import CollectorRegistry
        >>> now = [1000.0]
        >>> metrics = PrerankMetrics(CollectorRegistry(), clock=lambda: now[0])
        >>> metrics.set_model_version("scorer", 7, created_at_s=990.0)
        >>> metrics.registry.get_sample_value("prerank_model_version_age_seconds", {"agent": "scorer"})
        10.0
        >>> now[0] = 1030.0
        >>> metrics.registry.get_sample_value("prerank_model_version_age_seconds", {"agent": "scorer"})
        40.0
        """
        if isinstance(version, bool) or not isinstance(version, int):
            raise TypeError(f"version must be an int, got {type(version).__name__}")
        _check("agent", agent, AGENTS)
        self.model_version.labels(agent=agent).set(version)
        clock = self._clock
        self.model_version_age_seconds.labels(agent=agent).set_function(
            lambda: max(clock() - created_at_s, 0.0)
        )


@functools.cache
def metrics_from_default_registry() -> PrerankMetrics:
    """The process-wide metrics of a worker, on prometheus_client's default registry.

    Cached, because a metric name can be registered only once on a registry.
    """
    return PrerankMetrics(REGISTRY)


_SAMPLE_SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "summary": ("", "_count", "_sum", "_created"),
    "info": ("_info",),
}


def exposed_sample_names(registry: CollectorRegistry | PrerankMetrics) -> frozenset[str]:
    """Every sample name ``registry`` can expose, whether or not a labelled child exists yet.

    This is the set a PromQL query may name (``..._bucket`` of a histogram, ``..._total``
    of a counter).

    >>> from prometheus_client import CollectorRegistry
    >>> names = exposed_sample_names(PrerankMetrics(CollectorRegistry()))
    >>> "prerank_dead_letters_total" in names and "prerank_freshness_seconds_bucket" in names
    True
    >>> "prerank_freshness_seconds" in names
    False
    """
    if isinstance(registry, PrerankMetrics):
        registry = registry.registry
    names = set()
    for family in registry.collect():
        names.update(family.name + suffix for suffix in _SAMPLE_SUFFIXES.get(family.type, ("",)))
        names.update(sample.name for sample in family.samples)
    return frozenset(names)
