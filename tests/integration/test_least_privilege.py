"""R18: the shipped ACLs, applied to a broker with authentication on, let each role read only
what it needs."""

from __future__ import annotations

import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

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
from streams.jobs.processes import Cluster, start_job, stop_jobs
from streams.kafka.serde import Codec, Contracts, DecodeError, registry_client
from streams.kafka.topics import CATALOGUE, ROLES, Topology, acl_bindings, ensure_topics, key_for
from streams.traffic import TrafficGenerator, TrafficMix

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def secured() -> Iterator[tuple[LocalKafka, Topology]]:
    kafka = LocalKafka(authenticated=True, users={role: f"{role}-pw" for role in ROLES})
    kafka.start()
    try:
        admin = AdminClient(kafka.client_config())
        topics = Topology()
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
    secured: tuple[LocalKafka, Topology], field: str, allowed: str, denied: tuple[str, ...]
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


def _produce_as(kafka: LocalKafka, role: str, topic: str, records: list[tuple[str, bytes]]) -> None:
    producer = Producer({**kafka.client_config(role), "linger.ms": 5})
    for key, value in records:
        producer.produce(topic, key=key, value=value)
    assert producer.flush(30) == 0


def _audited(kafka: LocalKafka, topics: Topology, codec: Codec) -> set[str]:
    """Subjects of every committed audit record, read as the privacy-audit team."""
    consumer = Consumer(
        {
            **kafka.client_config("privacy-audit"),
            "group.id": f"privacy-audit-{uuid.uuid4().hex[:6]}",
            "isolation.level": "read_committed",
            "enable.auto.commit": False,
        }
    )
    subjects: set[str] = set()
    try:
        parts = range(_partitions(kafka, topics.audit))
        consumer.assign([TopicPartition(topics.audit, p, OFFSET_BEGINNING) for p in parts])
        idle = 0
        while idle < 3:
            message = consumer.poll(0.5)
            if message is None or message.error() is not None:
                idle += 1
                continue
            idle = 0
            try:
                subjects.add(codec.decode(message.value())["subject_id"])
            except DecodeError:
                continue  # the fixture's probe record
    finally:
        consumer.close()
    return subjects


def _job_env(role: str) -> dict[str, str]:
    return {
        "KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
        "KAFKA_SASL_MECHANISM": "PLAIN",
        "KAFKA_SASL_USERNAME": role,
        "KAFKA_SASL_PASSWORD": f"{role}-pw",
    }


def test_router_worker_runs_as_its_own_principal_and_needs_its_grants_R18(
    secured: tuple[LocalKafka, Topology], schema_registry_url: str, tmp_path: Path
) -> None:
    """R18: the router job connects as User:router (its SASL settings from the environment)
    and routes requests with only the shipped grants; the same job started with the
    training team's credentials is refused and routes nothing."""
    kafka, topics = secured
    contracts = Contracts(registry_client(schema_registry_url), topics)
    contracts.register_all()
    now = time.time_ns() // 1_000_000
    traffic = TrafficGenerator(TrafficMix(orgs=4), seed=5, start_ms=now - 60_000)
    controls = contracts.codec("data_controls")
    _produce_as(
        kafka,
        "control-plane",
        topics.data_controls,
        [(key_for("data_controls", c), controls.encode(c)) for c in traffic.control_changes()],
    )
    mark = {"watermark_ms": now, "published_at_ms": now}
    _produce_as(
        kafka,
        "control-plane",
        topics.controls_watermark,
        [("watermark", contracts.codec("controls_watermark").encode(mark))],
    )
    requests = [traffic.request(now - 60_000 + i) for i in range(20)]
    codec = contracts.codec("request_logs")
    _produce_as(
        kafka,
        "gateway",
        topics.request_logs,
        [(r["request_id"], codec.encode(r)) for r in requests],
    )
    ids = {r["request_id"] for r in requests}
    audit = contracts.codec("audit")
    cluster = Cluster(kafka.bootstrap_servers, schema_registry_url, topics, tmp_path)

    intruder = start_job(cluster, "router", "9", extra_env=_job_env("training"))
    try:
        intruder.wait(20)  # refused: it may exit, or keep failing without output
    except subprocess.TimeoutExpired:
        pass
    finally:
        stop_jobs([intruder])
    assert not ids & _audited(kafka, topics, audit), "routed without the router's grants"

    worker = start_job(cluster, "router", extra_env=_job_env("router"))
    try:
        deadline = time.monotonic() + 90
        while not ids <= _audited(kafka, topics, audit) and time.monotonic() < deadline:
            assert worker.poll() is None, (tmp_path / "router-0.log").read_text()[-3000:]
            time.sleep(1)
    finally:
        stop_jobs([worker])
    assert ids <= _audited(kafka, topics, audit)
    assert "AUTHORIZATION_FAILED" not in (tmp_path / "router-0.log").read_text()
