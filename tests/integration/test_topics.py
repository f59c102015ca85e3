"""The topic catalogue on the real broker: idempotent creation and the retention it promises."""

from __future__ import annotations

import time

import pytest
from confluent_kafka.admin import (
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    ResourceType,
)

from streams.kafka.topics import (
    CATALOGUE,
    MIN_ISR,
    Durability,
    DurabilityError,
    apply_topics,
    create_topic,
    deletion_bound_ms,
    ensure_topics,
    internal_topic,
)
from tests.integration.conftest import Stack

pytestmark = pytest.mark.integration


def test_ensure_topics_is_idempotent_and_realigns_drifted_config_R4(stack: Stack) -> None:
    """Running the topics command twice creates nothing new; a drifted retention is put back,
    so the log store can never lose a held record to broker time-retention (R4/R5/R6); every
    config the catalogue sets, the deletion bound's included (R4/R15/R17), is on the broker."""
    admin = AdminClient({"bootstrap.servers": stack.bootstrap})
    log_store = stack.topology.log_store
    drift = ConfigResource(ResourceType.TOPIC, log_store, set_config={"retention.ms": "1000"})
    for future in admin.alter_configs([drift]).values():
        future.result()
    assert ensure_topics(admin, stack.topology) == []
    resources = [
        ConfigResource(ResourceType.TOPIC, spec.name(stack.topology)) for spec in CATALOGUE
    ]
    described = {r.name: f.result() for r, f in admin.describe_configs(resources).items()}
    bound = deletion_bound_ms()
    for spec in CATALOGUE:
        configs = described[spec.name(stack.topology)]
        assert configs["cleanup.policy"].value == spec.cleanup, spec.field
        for key, value in spec.configs(bound).items():
            assert configs[key].value == value, (spec.field, key)
    assert described[log_store]["retention.ms"].value == "-1"
    assert described[log_store]["cleanup.policy"].value == "compact"
    assert int(described[log_store]["max.compaction.lag.ms"].value) <= bound // 4
    letters = described[stack.topology.dead_letters]
    month = 30 * 86_400_000
    assert int(letters["retention.ms"].value) + int(letters["segment.ms"].value) < month


def test_streams_topics_grows_never_shrinks_and_refuses_more_copies_than_brokers_R4(
    stack: Stack,
) -> None:
    """Issue 15 on the real broker: replication 3 on a one-broker cluster is refused in one
    line; more partitions grow the scaled topics but not a compacted one (R4: a tombstone
    in a new partition would leave the old value readable); fewer never shrink; a job's
    internal topic gets the deployment's min.insync.replicas."""
    admin = AdminClient({"bootstrap.servers": stack.bootstrap})
    brokers = len(admin.list_topics(timeout=10).brokers)
    with pytest.raises(DurabilityError, match=f"=3 but the cluster has {brokers} broker"):
        apply_topics(admin, stack.topology, durability=Durability(replication_factor=3))
    internal = internal_topic(stack.topology, "usage", "state")
    create_topic(admin, internal, 6, {"cleanup.policy": "compact"})
    set_min_isr = ConfigEntry(MIN_ISR, "2", incremental_operation=AlterConfigOpType.SET)
    drift = ConfigResource(ResourceType.TOPIC, internal, incremental_configs=[set_min_isr])
    for future in admin.incremental_alter_configs([drift]).values():
        future.result()
    wait_for_config(admin, internal, "2")

    grown = apply_topics(admin, stack.topology, durability=Durability(partitions=8))
    topics = admin.list_topics(timeout=10).topics
    assert len(topics[stack.topology.request_logs].partitions) == 8
    assert len(topics[stack.topology.log_store].partitions) == 6
    assert any("not grown, it is compacted" in line for line in grown.lines)
    assert any(line.startswith("Growing partitions") for line in grown.lines)
    assert f"{internal}: min.insync.replicas 2 -> 1" in grown.lines
    assert grown.lines[0].startswith("replication 1 (auto), min.insync.replicas 1")

    wait_for_config(admin, internal, "1")  # a config change reaches describe a moment later
    kept = apply_topics(admin, stack.topology, durability=Durability(partitions=4))
    assert len(admin.list_topics(timeout=10).topics[stack.topology.request_logs].partitions) == 8
    assert any("cannot shrink" in line for line in kept.lines)
    assert kept.lines[-1] == "topics: 0 created, 0 configs aligned, 0 grown"


def wait_for_config(admin: AdminClient, topic: str, value: str, timeout_s: float = 10) -> None:
    resource = ConfigResource(ResourceType.TOPIC, topic)
    deadline = time.monotonic() + timeout_s
    while admin.describe_configs([resource])[resource].result()[MIN_ISR].value != value:
        assert time.monotonic() < deadline, f"{MIN_ISR} of {topic} never became {value}"
        time.sleep(0.1)
