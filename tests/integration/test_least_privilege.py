"""R18: the shipped ACLs, applied to a broker with authentication on, let each role read only
what it needs."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient

from streams.infra.broker import LocalKafka
from streams.kafka.topics import CATALOGUE, ROLES, acl_bindings, ensure_topics
from streams.policy.config import Topics

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def secured() -> Iterator[tuple[LocalKafka, Topics]]:
    kafka = LocalKafka(authenticated=True, users={role: f"{role}-pw" for role in ROLES})
    kafka.start()
    try:
        admin = AdminClient(kafka.client_config())
        topics = Topics()
        ensure_topics(admin, topics)
        for future in admin.create_acls(acl_bindings(topics)).values():
            future.result()
        producer = Producer(kafka.client_config())
        for spec in CATALOGUE:
            producer.produce(spec.name(topics), key=b"k", value=b"probe")
        assert producer.flush(30) == 0
        # Warm the group coordinator up so the first probe does not race its creation.
        assert can_read(kafka, "admin", topics.audit)
        yield kafka, topics
    finally:
        kafka.stop()


def can_read(kafka: LocalKafka, role: str, topic: str) -> bool:
    consumer = Consumer(
        {
            **kafka.client_config(role),
            "group.id": f"{role}-probe-{uuid.uuid4().hex[:6]}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    try:
        # A topic a role may not even describe answers its metadata request with an error.
        if consumer.list_topics(topic, timeout=10).topics[topic].error is not None:
            return False
        consumer.assign(
            [TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(_partitions(kafka, topic))]
        )
        for _ in range(20):
            message = consumer.poll(0.5)
            if message is None:
                continue
            error = message.error()
            if error is None:
                return True
            if error.code() in (
                KafkaError.TOPIC_AUTHORIZATION_FAILED,
                KafkaError.GROUP_AUTHORIZATION_FAILED,
            ):
                return False
        return False
    except KafkaException:
        return False
    finally:
        consumer.close()


def _partitions(kafka: LocalKafka, topic: str) -> int:
    admin = AdminClient(kafka.client_config())
    return len(admin.list_topics(topic, timeout=10).topics[topic].partitions)


@pytest.mark.parametrize(
    ("field", "allowed", "denied"),
    [
        ("training_candidates", "training", ("analytics", "safety-team", "log-sink")),
        ("safety_review", "safety-team", ("training", "analytics", "usage")),
        ("usage_metrics", "analytics", ("training", "safety-team")),
        ("log_store", "log-sink", ("training", "analytics", "safety-team")),
        ("audit", "privacy-audit", ("training", "analytics")),
    ],
)
def test_each_output_topic_is_readable_only_by_its_role_R18(
    secured: tuple[LocalKafka, Topics], field: str, allowed: str, denied: tuple[str, ...]
) -> None:
    """R18: safety review for the safety team, candidates for training, usage for analytics."""
    kafka, topics = secured
    topic = getattr(topics, field)
    assert can_read(kafka, allowed, topic), f"{allowed} should read {topic}"
    for role in denied:
        assert not can_read(kafka, role, topic), f"{role} must not read {topic}"


def test_readers_in_the_catalogue_are_least_privilege_R18() -> None:
    """R18: the people-facing output topics name exactly one reading team."""
    readers = {spec.field: set(spec.readers) for spec in CATALOGUE}
    assert readers["training_candidates"] == {"training"}
    assert readers["safety_evaluation"] == {"safety-team"}
    assert readers["usage_metrics"] == {"analytics"}
    assert "training" not in readers["safety_review"] | readers["log_store"]
