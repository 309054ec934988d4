"""Every topic of the system, and idempotent creation with kafka-python's admin client."""

from __future__ import annotations

from streams import (
    dead_letters,
    impressions,
    item_catalog,
    rank_scores,
    score_requests,
    score_responses,
    training_samples,
    user_profiles,
)
from streams.base import TopicSpec

TOPIC_MODULES = {  # the key every client uses for a topic -> its module (TOPIC, CODEC, record type)
    "item_catalog": item_catalog,
    "user_profiles": user_profiles,
    "score_requests": score_requests,
    "score_responses": score_responses,
    "rank_scores": rank_scores,
    "impressions": impressions,
    "training_samples": training_samples,
    "dead_letters": dead_letters,
}
ALL_TOPICS: tuple[TopicSpec, ...] = tuple(module.TOPIC for module in TOPIC_MODULES.values())


def create_topics(kafka_config: dict, topic_settings) -> dict[str, str]:
    """Create every missing topic; returns ``{full_name: "created" | "exists"}``.

    ``kafka_config`` is :meth:`core.settings.KafkaSettings.kafka_python_config`;
    ``topic_settings`` is :class:`core.settings.TopicSettings`.
    """
    from kafka.admin import KafkaAdminClient, NewTopic
    from kafka.errors import TopicAlreadyExistsError

    admin = KafkaAdminClient(client_id="prerank-topics", **kafka_config)
    try:
        existing = set(admin.list_topics())
        outcome: dict[str, str] = {}
        new_topics = []
        for spec in ALL_TOPICS:
            name = topic_settings.name(spec.name)
            if name in existing:
                outcome[name] = "exists"
                continue
            new_topics.append(
                NewTopic(
                    name=name,
                    num_partitions=spec.partitions or topic_settings.partitions,
                    replication_factor=topic_settings.replication_factor,
                    topic_configs=spec.configs(topic_settings.retention_ms),
                )
            )
            outcome[name] = "created"
        for topic in new_topics:
            try:
                admin.create_topics([topic])
            except TopicAlreadyExistsError:  # created concurrently by another process
                outcome[topic.name] = "exists"
        return outcome
    finally:
        admin.close()


def delete_topics(kafka_config: dict, prefixes: tuple[str, ...]) -> list[str]:
    """Delete every topic whose name starts with one of ``prefixes`` (a finished replay's or test's
    topics, Faust's changelogs included); returns the names. A long-lived broker otherwise keeps
    thousands of partitions and, on 2 cores, stalls re-electing them."""
    from kafka.admin import KafkaAdminClient
    from kafka.errors import UnknownTopicOrPartitionError

    if not prefixes or any(not prefix for prefix in prefixes):
        raise ValueError(f"refusing to delete topics by an empty prefix: {prefixes!r}")
    admin = KafkaAdminClient(client_id="prerank-topics", **kafka_config)
    try:
        doomed = sorted(name for name in admin.list_topics() if name.startswith(prefixes))
        if doomed:
            try:
                admin.delete_topics(doomed)
            except UnknownTopicOrPartitionError:
                # Some were being deleted already (the list still shows a topic until its deletion
                # completes): the others of the request were deleted; each one left is tried alone.
                for name in doomed:
                    try:
                        admin.delete_topics([name])
                    except UnknownTopicOrPartitionError:
                        pass  # already gone
        return doomed
    finally:
        admin.close()
