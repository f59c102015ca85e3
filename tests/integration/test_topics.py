"""The topic catalogue on the real broker: idempotent creation and the retention it promises."""

from __future__ import annotations

import pytest
from confluent_kafka.admin import AdminClient, ConfigResource, ResourceType

from streams.kafka.topics import CATALOGUE, ensure_topics
from tests.integration.conftest import Stack

pytestmark = pytest.mark.integration


def test_ensure_topics_is_idempotent_and_realigns_drifted_config_R4(stack: Stack) -> None:
    """Running the topics command twice creates nothing new; a drifted retention is put back,
    so the log store can never lose a held record to broker time-retention (R4/R5/R6)."""
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
    for spec in CATALOGUE:
        configs = described[spec.name(stack.topology)]
        assert configs["cleanup.policy"].value == spec.cleanup, spec.field
        assert configs["retention.ms"].value == str(spec.retention_ms), spec.field
    assert described[log_store]["retention.ms"].value == "-1"
    assert described[log_store]["cleanup.policy"].value == "compact"
    assert described[stack.topology.dead_letters]["retention.ms"].value == str(30 * 86_400_000)
