"""Contracts in the real schema registry: BACKWARD compatibility per subject, wire format."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.schema_registry.error import SchemaRegistryError
from confluent_kafka.serialization import MessageField, SerializationContext

from streams.kafka.serde import Codec, load_schema_text, registry_client
from streams.kafka.topics import CATALOGUE

pytestmark = pytest.mark.integration


@pytest.fixture()
def registry(schema_registry_url: str) -> SchemaRegistryClient:
    if schema_registry_url.startswith("mock://"):
        pytest.skip("compatibility checks need a real schema registry")
    return registry_client(schema_registry_url)


def _with_field(schema_text: str, field: dict[str, Any]) -> str:
    schema = json.loads(schema_text)
    schema["fields"] = [*schema["fields"], field]
    return json.dumps(schema)


@pytest.mark.parametrize("spec", CATALOGUE, ids=lambda s: s.field)
def test_each_subject_is_backward_compatible_and_rejects_breaking_changes(
    registry: SchemaRegistryClient, spec: Any
) -> None:
    """BACKWARD for every subject: an optional field may be added, a required one may not."""
    subject = f"compat-{uuid.uuid4().hex[:8]}.{spec.field}-value"
    current = load_schema_text(spec.schema)
    registry.register_schema(subject, Schema(current, "AVRO"))
    registry.set_compatibility(subject, "BACKWARD")
    assert registry.get_compatibility(subject) == "BACKWARD"

    compatible = _with_field(
        current, {"name": "added_later", "type": ["null", "string"], "default": None}
    )
    breaking = _with_field(current, {"name": "added_required", "type": "string"})
    assert registry.test_compatibility(subject, Schema(compatible, "AVRO"))
    assert not registry.test_compatibility(subject, Schema(breaking, "AVRO"))
    with pytest.raises(SchemaRegistryError):
        registry.register_schema(subject, Schema(breaking, "AVRO"))


def test_codec_bytes_are_confluent_avro_serializer_bytes(registry: SchemaRegistryClient) -> None:
    """The fastavro codec and confluent-kafka's AvroSerializer/AvroDeserializer interoperate."""
    subject_topic = f"wire-{uuid.uuid4().hex[:8]}"
    text = load_schema_text("usage_event.avsc")
    codec = Codec(registry, f"{subject_topic}-value", text)
    record = {
        "request_id": "r1",
        "org_id": "o1",
        "endpoint": "chat",
        "model": "m",
        "deployment": "SAAS",
        "created_at_ms": 1,
        "input_tokens": 2,
        "output_tokens": 3,
        "policy_version": "p",
    }
    ctx = SerializationContext(subject_topic, MessageField.VALUE)
    theirs = AvroSerializer(registry, text)(record, ctx)
    assert theirs == codec.encode(record)
    assert codec.decode(theirs) == record
    assert AvroDeserializer(registry)(codec.encode(record), ctx) == record
