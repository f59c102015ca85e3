"""The broker the project starts itself, and both of the project's Kafka clients against it.

confluent-kafka (librdkafka) runs the router; aiokafka is the client under faust-streaming
(the retention job). Each must produce, consume, commit group offsets and use transactions
on the pinned release; ``infra/kafka/compat-check`` runs this file against other releases.
The authenticated broker is the R18 least-privilege setup: SASL/PLAIN + StandardAuthorizer.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import (
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import (
    AclBinding,
    AclOperation,
    AclPermissionType,
    AdminClient,
    NewTopic,
    ResourcePatternType,
    ResourceType,
)

from streams.infra.broker import LocalKafka

pytestmark = pytest.mark.integration

Config = dict[str, Any]


def _name(kind: str) -> str:
    return f"test-broker-{kind}-{uuid.uuid4().hex[:8]}"


def create_topic(config: Config, partitions: int = 3) -> str:
    topic = _name("topic")
    admin = AdminClient(config)
    for future in admin.create_topics([NewTopic(topic, partitions, 1)]).values():
        future.result(30)
    return topic


def produce(config: Config, topic: str, count: int) -> None:
    producer = Producer({**config, "enable.idempotence": True, "linger.ms": 5})
    for i in range(count):
        producer.produce(topic, key=f"k{i % 7}".encode(), value=f"v{i}".encode())
    assert producer.flush(30) == 0


def consume(
    config: Config, topic: str, count: int, extra: Config | None = None, timeout_s: float = 30
) -> list[bytes]:
    """``count`` values from ``topic`` through a new consumer group, or fewer on timeout."""
    consumer = Consumer(
        {
            **config,
            "group.id": _name("group"),
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            **(extra or {}),
        }
    )
    consumer.subscribe([topic])
    values: list[bytes] = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(values) < count and time.monotonic() < deadline:
            message = consumer.poll(0.25)
            if message is None:
                continue
            if message.error() is not None:
                raise KafkaException(message.error())
            values.append(message.value() or b"")
    finally:
        consumer.close()
    return values


@pytest.fixture()
def config(kafka_bootstrap: str) -> Config:
    return {"bootstrap.servers": kafka_bootstrap}


# --- confluent-kafka ------------------------------------------------------------------------
def test_confluent_produce_and_consume_through_a_group(config: Config) -> None:
    topic = create_topic(config)
    produce(config, topic, 300)
    values = consume(config, topic, 300)
    assert sorted(values) == sorted(f"v{i}".encode() for i in range(300))


def test_confluent_group_commit_resumes_where_it_left_off(config: Config) -> None:
    topic = create_topic(config, partitions=1)
    produce(config, topic, 10)
    group = _name("group")
    settings = {**config, "group.id": group, "auto.offset.reset": "earliest"}
    first = Consumer({**settings, "enable.auto.commit": False})
    first.subscribe([topic])
    seen: list[bytes] = []
    while len(seen) < 4:
        message = first.poll(1)
        if message is not None and message.error() is None:
            seen.append(message.value() or b"")
    first.commit(asynchronous=False)
    first.close()
    second = Consumer(settings)
    committed = second.committed([TopicPartition(topic, 0)], timeout=10)[0].offset
    second.close()
    assert committed == 4
    assert consume(config, topic, 6, {"group.id": group}) == [
        f"v{i}".encode() for i in range(4, 10)
    ]


def test_confluent_transactions_read_committed_sees_only_commits(config: Config) -> None:
    """What the router relies on for exactly-once: an aborted batch is never read."""
    topic = create_topic(config, partitions=2)
    producer = Producer({**config, "transactional.id": _name("txn")})
    producer.init_transactions(30)
    producer.begin_transaction()
    for i in range(5):
        producer.produce(topic, key=b"k", value=f"committed-{i}".encode())
    producer.commit_transaction(30)
    producer.begin_transaction()
    for i in range(5):
        producer.produce(topic, key=b"k", value=f"aborted-{i}".encode())
    producer.flush(30)
    producer.abort_transaction(30)
    producer.begin_transaction()
    producer.produce(topic, key=b"k", value=b"last")
    producer.commit_transaction(30)

    committed = consume(config, topic, 6, {"isolation.level": "read_committed"})
    assert committed == [*(f"committed-{i}".encode() for i in range(5)), b"last"]
    everything = consume(config, topic, 11, {"isolation.level": "read_uncommitted"})
    assert len(everything) == 11 and b"aborted-0" in everything


def test_confluent_consume_transform_produce_commits_offsets_in_the_transaction(
    config: Config,
) -> None:
    source, sink = create_topic(config, 1), create_topic(config, 1)
    produce(config, source, 5)
    group = _name("group")
    consumer = Consumer(
        {**config, "group.id": group, "auto.offset.reset": "earliest", "enable.auto.commit": False}
    )
    consumer.subscribe([source])
    producer = Producer({**config, "transactional.id": _name("txn")})
    producer.init_transactions(30)
    messages: list[Message] = []
    while len(messages) < 5:
        message = consumer.poll(1)
        if message is not None and message.error() is None:
            messages.append(message)
    producer.begin_transaction()
    for message in messages:
        producer.produce(sink, key=message.key(), value=(message.value() or b"").upper())
    producer.send_offsets_to_transaction(
        consumer.position(consumer.assignment()), consumer.consumer_group_metadata(), 30
    )
    producer.commit_transaction(30)
    consumer.close()
    assert sorted(consume(config, sink, 5, {"isolation.level": "read_committed"})) == sorted(
        f"V{i}".encode() for i in range(5)
    )
    check = Consumer({**config, "group.id": group})
    assert check.committed([TopicPartition(source, 0)], timeout=10)[0].offset == 5
    check.close()


# --- aiokafka (faust-streaming's client) -------------------------------------------------------
def test_aiokafka_admin_produce_consume_and_group_commit(kafka_bootstrap: str) -> None:
    """faust's client creates topics, produces, consumes in a group and commits offsets."""
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
    from aiokafka.admin import AIOKafkaAdminClient
    from aiokafka.admin import NewTopic as AioNewTopic

    topic, group = _name("aio"), _name("group")

    async def scenario() -> tuple[list[bytes], int | None, list[bytes]]:
        admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
        await admin.start()
        try:
            await admin.create_topics([AioNewTopic(topic, 2, 1)])
            assert topic in await admin.list_topics()
        finally:
            await admin.close()
        producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
        await producer.start()
        try:
            for i in range(20):
                await producer.send_and_wait(topic, f"a{i}".encode(), key=f"k{i % 3}".encode())
        finally:
            await producer.stop()

        consumer = AIOKafkaConsumer(
            topic,
            bootstrap_servers=kafka_bootstrap,
            group_id=group,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
        )
        await consumer.start()
        got: list[bytes] = []
        try:
            async with asyncio.timeout(60):
                while len(got) < 20:
                    batch = await consumer.getmany(timeout_ms=500)
                    got += [m.value for msgs in batch.values() for m in msgs if m.value]
            await consumer.commit()
            committed = [await consumer.committed(tp) for tp in consumer.assignment()]
        finally:
            await consumer.stop()

        # A second member of the same group resumes after the commit: nothing is left.
        late = AIOKafkaConsumer(
            topic, bootstrap_servers=kafka_bootstrap, group_id=group, enable_auto_commit=False
        )
        await late.start()
        try:
            rest = await late.getmany(timeout_ms=2000)
        finally:
            await late.stop()
        return got, sum(c or 0 for c in committed), [m.value for v in rest.values() for m in v]

    got, committed, rest = asyncio.run(scenario())
    assert sorted(got) == sorted(f"a{i}".encode() for i in range(20))
    assert committed == 20
    assert rest == []


def test_aiokafka_transactions_as_faust_exactly_once_uses_them(kafka_bootstrap: str) -> None:
    """faust's ``processing_guarantee="exactly_once"``: a transactional aiokafka producer
    commits consumed offsets with its output; read_committed readers skip aborted batches."""
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
    from aiokafka.structs import ConsumerRecord
    from aiokafka.structs import TopicPartition as AioTP

    config = {"bootstrap.servers": kafka_bootstrap}
    source, sink = create_topic(config, 1), create_topic(config, 1)
    produce(config, source, 5)
    group = _name("group")

    async def scenario() -> None:
        consumer = AIOKafkaConsumer(
            source,
            bootstrap_servers=kafka_bootstrap,
            group_id=group,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            isolation_level="read_committed",
        )
        producer = AIOKafkaProducer(
            bootstrap_servers=kafka_bootstrap, transactional_id=_name("txn")
        )
        await consumer.start()
        await producer.start()
        try:
            records: list[ConsumerRecord[bytes, bytes]] = []
            async with asyncio.timeout(60):
                while len(records) < 5:
                    batch = await consumer.getmany(timeout_ms=500)
                    records += [m for msgs in batch.values() for m in msgs]
            await producer.begin_transaction()
            await producer.send_and_wait(sink, b"aborted", key=b"k")
            await producer.abort_transaction()
            async with producer.transaction():
                for record in records:
                    await producer.send(sink, record.value.upper(), key=record.key)
                await producer.send_offsets_to_transaction({AioTP(source, 0): 5}, group)
        finally:
            await producer.stop()
            await consumer.stop()

    asyncio.run(scenario())
    assert sorted(consume(config, sink, 5, {"isolation.level": "read_committed"})) == sorted(
        f"V{i}".encode() for i in range(5)
    )
    check = Consumer({**config, "group.id": group})
    assert check.committed([TopicPartition(source, 0)], timeout=10)[0].offset == 5
    check.close()


_FAUST_PROBE = """
import os

import faust

env = os.environ
app = faust.App(
    env["PROBE_APP"],
    broker="kafka://" + env["PROBE_BOOTSTRAP"],
    store="memory://",
    datadir=env["PROBE_DATADIR"],
    web_enabled=False,
    topic_replication_factor=1,
    topic_partitions=1,
    consumer_auto_offset_reset="earliest",
    processing_guarantee="exactly_once",
    broker_commit_interval=0.5,
)
raw = {"key_type": bytes, "value_type": bytes, "key_serializer": "raw", "value_serializer": "raw"}
source = app.topic(env["PROBE_SOURCE"], **raw)
sink = app.topic(env["PROBE_SINK"], **raw)
seen = app.Table("seen", default=int, partitions=1)


@app.agent(source)
async def forward(stream):
    async for key, value in stream.items():
        seen[key.decode()] += 1
        await sink.send(key=key, value=value.upper())
"""


def test_faust_exactly_once_worker_runs_against_the_broker(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    """A real faust worker (exactly_once, a changelog-backed table it creates itself)
    consumes, produces in transactions and commits its group offsets."""
    config = {"bootstrap.servers": kafka_bootstrap}
    source, sink, app_id = create_topic(config, 1), create_topic(config, 1), _name("faust")
    produce(config, source, 5)
    (tmp_path / "faust_probe.py").write_text(_FAUST_PROBE)
    env = {
        **os.environ,
        "PYTHONPATH": str(tmp_path),
        "PROBE_APP": app_id,
        "PROBE_BOOTSTRAP": kafka_bootstrap,
        "PROBE_DATADIR": str(tmp_path / "state"),
        "PROBE_SOURCE": source,
        "PROBE_SINK": sink,
    }
    log_path = tmp_path / "worker.log"
    with open(log_path, "wb") as log_file:
        worker = subprocess.Popen(
            [sys.executable, "-m", "faust", "-A", "faust_probe", "worker", "-l", "warn"],
            cwd=tmp_path,
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
        try:
            out: list[bytes] = []
            deadline = time.monotonic() + 120
            while len(out) < 5 and worker.poll() is None and time.monotonic() < deadline:
                out = consume(config, sink, 5, {"isolation.level": "read_committed"}, 3)
            deadline = time.monotonic() + 30
            check = Consumer({**config, "group.id": app_id})
            offset = -1
            while len(out) == 5 and offset != 5 and time.monotonic() < deadline:
                offset = check.committed([TopicPartition(source, 0)], timeout=10)[0].offset
                time.sleep(0.2)
            check.close()
        finally:
            worker.terminate()
            try:
                worker.wait(30)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait(10)
    log_text = log_path.read_text(errors="replace")[-3000:]
    assert sorted(out) == sorted(f"V{i}".encode() for i in range(5)), log_text
    assert offset == 5, log_text
    topics = AdminClient(config).list_topics(timeout=10).topics
    assert f"{app_id}-seen-changelog" in topics, log_text


# --- the broker itself --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def own_broker() -> Iterator[LocalKafka]:
    if os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        pytest.skip("runs LocalKafka itself; KAFKA_BOOTSTRAP_SERVERS points elsewhere")
    with LocalKafka() as kafka:
        yield kafka


def test_local_kafka_is_on_loopback_and_reports_its_start_time(own_broker: LocalKafka) -> None:
    host, _, port = own_broker.bootstrap_servers.partition(":")
    assert host == "127.0.0.1" and int(port) == own_broker.port != own_broker.controller_port
    assert own_broker.startup_seconds is not None and 0 < own_broker.startup_seconds < 90
    props = own_broker.properties()
    assert props["process.roles"] == "broker,controller"
    assert props["auto.create.topics.enable"] == "false"
    assert own_broker.log_file.exists()


def test_restart_keeps_data_and_ports(own_broker: LocalKafka) -> None:
    """Chaos tests restart the broker under running jobs: same address, same records."""
    config = own_broker.client_config()
    topic = create_topic(config, 1)
    produce(config, topic, 10)
    address = own_broker.bootstrap_servers
    own_broker.restart()
    assert own_broker.bootstrap_servers == address
    produce(config, topic, 1)
    assert len(consume(config, topic, 11)) == 11


def test_auto_topic_creation_is_off(own_broker: LocalKafka) -> None:
    producer = Producer({**own_broker.client_config(), "message.timeout.ms": 3000})
    errors: list[KafkaError | None] = []
    producer.produce(_name("missing"), b"x", on_delivery=lambda err, _: errors.append(err))
    producer.flush(10)
    assert errors and errors[0] is not None


# --- authenticated broker (R18) ---------------------------------------------------------------
def _allow(principal: str, kind: ResourceType, name: str, op: AclOperation) -> AclBinding:
    pattern = (
        ResourcePatternType.PREFIXED if kind == ResourceType.GROUP else ResourcePatternType.LITERAL
    )
    return AclBinding(kind, name, pattern, principal, "*", op, AclPermissionType.ALLOW)


def _read_error(kafka: LocalKafka, user: str, topic: str, group: str) -> KafkaError | None:
    """None if ``user`` reads the first record of ``topic``, else the error it gets."""
    consumer = Consumer(
        {
            **kafka.client_config(user),
            "group.id": group,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([topic])
    try:
        for _ in range(60):
            message = consumer.poll(0.5)
            if message is None:
                continue
            error = message.error()
            if error is None:
                return None
            if error.code() != KafkaError._PARTITION_EOF:
                return error
        raise AssertionError(f"{user} got neither a record nor an error from {topic}")
    finally:
        consumer.close()


def test_acl_lets_one_user_read_and_denies_another_R18(kafka_authenticated: LocalKafka) -> None:
    """R18 least privilege: a READ ACL on a topic for alice lets her read it; bob, with the
    same group rights but no topic ACL, gets TOPIC_AUTHORIZATION_FAILED."""
    kafka = kafka_authenticated
    assert kafka.super_user.username == "admin"
    admin_config = kafka.client_config()  # the super user
    topic = create_topic(admin_config, 1)
    produce(admin_config, topic, 3)
    admin = AdminClient(admin_config)
    bindings = [
        _allow("User:alice", ResourceType.TOPIC, topic, AclOperation.READ),
        _allow("User:alice", ResourceType.GROUP, f"{topic}-alice", AclOperation.READ),
        _allow("User:bob", ResourceType.GROUP, f"{topic}-bob", AclOperation.READ),
    ]
    for future in admin.create_acls(bindings).values():
        future.result(30)

    assert _read_error(kafka, "alice", topic, f"{topic}-alice") is None
    denied = _read_error(kafka, "bob", topic, f"{topic}-bob")
    assert denied is not None and denied.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED
    # alice may read, not write (no WRITE ACL)
    producer = Producer({**kafka.client_config("alice"), "message.timeout.ms": 5000})
    errors: list[KafkaError | None] = []
    producer.produce(topic, b"x", on_delivery=lambda err, _: errors.append(err))
    producer.flush(15)
    assert errors and errors[0] is not None
    assert errors[0].code() == KafkaError.TOPIC_AUTHORIZATION_FAILED


def test_acl_is_enforced_for_aiokafka_too_R18(kafka_authenticated: LocalKafka) -> None:
    """faust's client authenticates with SASL/PLAIN; without a topic ACL it is refused."""
    from aiokafka import AIOKafkaConsumer
    from aiokafka.errors import TopicAuthorizationFailedError

    kafka = kafka_authenticated
    admin_config = kafka.client_config()
    topic = create_topic(admin_config, 1)
    produce(admin_config, topic, 2)
    admin = AdminClient(admin_config)
    bindings = [
        _allow("User:carol", ResourceType.TOPIC, topic, AclOperation.READ),
        _allow("User:carol", ResourceType.GROUP, f"{topic}-", AclOperation.READ),
        _allow("User:bob", ResourceType.GROUP, f"{topic}-", AclOperation.READ),
    ]
    for future in admin.create_acls(bindings).values():
        future.result(30)

    async def read(user: str) -> list[bytes]:
        consumer = AIOKafkaConsumer(
            topic,
            **kafka.aiokafka_config(user),
            group_id=f"{topic}-{user}",
            auto_offset_reset="earliest",
        )
        await consumer.start()
        try:
            async with asyncio.timeout(30):
                values: list[bytes] = []
                while not values:
                    batch = await consumer.getmany(timeout_ms=500)
                    values = [m.value or b"" for msgs in batch.values() for m in msgs]
            return values
        finally:
            await consumer.stop()

    assert asyncio.run(read("carol"))
    with pytest.raises(TopicAuthorizationFailedError):
        asyncio.run(read("bob"))


def test_wrong_password_and_anonymous_clients_are_refused_R18(
    kafka_authenticated: LocalKafka,
) -> None:
    bad = {**kafka_authenticated.client_config("alice"), "sasl.password": "wrong"}
    with pytest.raises(KafkaException):
        AdminClient(bad).list_topics(timeout=3)
    anonymous: Config = {"bootstrap.servers": kafka_authenticated.bootstrap_servers}
    with pytest.raises(KafkaException):
        AdminClient(anonymous).list_topics(timeout=3)
