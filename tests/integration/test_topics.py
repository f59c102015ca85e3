"""The topic catalogue on the real broker: idempotent creation and the retention it promises."""

from __future__ import annotations

import pytest
from confluent_kafka.admin import AdminClient, ConfigResource, ResourceType

from streams.kafka.topics import CATALOGUE, deletion_bound_ms, ensure_topics
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
