"""The project's own schema registry (streams/infra/registry.py) behaves as the Confluent
Schema Registry does for what the project uses: Avro registration, Confluent wire format
through confluent-kafka's serializers, per-subject and global BACKWARD compatibility.

No broker is needed: the registry keeps its schemas in memory.
"""

from __future__ import annotations

import json
import socket
import struct
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.schema_registry.error import SchemaRegistryError
from confluent_kafka.serialization import MessageField, SerializationContext

from streams.infra.registry import CCOMPAT_PATH, LocalSchemaRegistry

pytestmark = pytest.mark.integration

V1: dict[str, Any] = {
    "type": "record",
    "name": "Probe",
    "namespace": "privacy.streams.test",
    "fields": [
        {"name": "request_id", "type": "string"},
        {"name": "tokens", "type": "int"},
    ],
}


def _with_field(schema: dict[str, Any], field: dict[str, Any]) -> str:
    return json.dumps({**schema, "fields": [*schema["fields"], field]})


def _avro(text: str) -> Schema:
    return Schema(text, "AVRO")


@pytest.fixture(scope="module")
def local_registry() -> Iterator[LocalSchemaRegistry]:
    with LocalSchemaRegistry() as registry:
        yield registry


@pytest.fixture()
def client(local_registry: LocalSchemaRegistry) -> SchemaRegistryClient:
    # A fresh client per test: no id/schema caching across tests.
    return SchemaRegistryClient({"url": local_registry.url})


@pytest.fixture()
def subject() -> str:
    return f"probe-{uuid.uuid4().hex[:8]}-value"


def test_started_on_loopback_and_timed(local_registry: LocalSchemaRegistry) -> None:
    assert local_registry.url == f"http://127.0.0.1:{local_registry.port}{CCOMPAT_PATH}"
    assert local_registry.startup_seconds is not None and local_registry.startup_seconds > 0
    assert local_registry.process is not None and local_registry.process.poll() is None
    with socket.create_connection(("127.0.0.1", local_registry.port), timeout=2):
        pass


def test_avro_serializer_round_trip_in_confluent_wire_format(
    local_registry: LocalSchemaRegistry, client: SchemaRegistryClient, subject: str
) -> None:
    text = json.dumps(V1)
    schema_id = client.register_schema(subject, _avro(text))
    topic = subject.removesuffix("-value")
    ctx = SerializationContext(topic, MessageField.VALUE)
    record = {"request_id": "r-1", "tokens": 42}

    data = AvroSerializer(client, text)(record, ctx)
    assert data is not None
    magic, wire_id = struct.unpack(">bI", data[:5])
    assert (magic, wire_id) == (0, schema_id)

    # A reader with no local schema resolves the writer's schema by id from the registry.
    reader = SchemaRegistryClient({"url": local_registry.url})
    assert AvroDeserializer(reader)(data, ctx) == record
    assert json.loads(reader.get_schema(schema_id).schema_str) == V1


def test_registration_is_idempotent_and_ids_are_per_schema(
    client: SchemaRegistryClient, subject: str
) -> None:
    """As in Confluent: the same schema gets the same id again, in any subject, in any layout."""
    text = json.dumps(V1)
    first = client.register_schema(subject, _avro(text))
    assert client.register_schema(subject, _avro(json.dumps(V1, indent=2))) == first
    assert client.register_schema(f"other-{subject}", _avro(text)) == first
    assert client.get_versions(subject) == [1]
    registered = client.lookup_schema(subject, _avro(text))
    assert (registered.schema_id, registered.version) == (first, 1)


def test_subject_backward_compatibility(client: SchemaRegistryClient, subject: str) -> None:
    client.register_schema(subject, _avro(json.dumps(V1)))
    client.set_compatibility(subject, "BACKWARD")
    assert client.get_compatibility(subject) == "BACKWARD"

    added_with_default = _with_field(
        V1, {"name": "model", "type": ["null", "string"], "default": None}
    )
    added_without_default = _with_field(V1, {"name": "org_id", "type": "string"})
    changed_type = json.dumps(
        {**V1, "fields": [V1["fields"][0], {"name": "tokens", "type": "string"}]}
    )
    assert client.test_compatibility(subject, _avro(added_with_default)) is True
    assert client.test_compatibility(subject, _avro(added_without_default)) is False
    assert client.test_compatibility(subject, _avro(changed_type)) is False

    for breaking in (added_without_default, changed_type):
        with pytest.raises(SchemaRegistryError) as raised:
            client.register_schema(subject, _avro(breaking))
        assert raised.value.http_status_code == 409
    assert client.get_versions(subject) == [1]

    evolved_id = client.register_schema(subject, _avro(added_with_default))
    latest = client.get_latest_version(subject)
    assert (latest.version, latest.schema_id) == (2, evolved_id)


def test_global_compatibility_is_backward_by_default(
    client: SchemaRegistryClient, subject: str
) -> None:
    """Confluent's default, reported and enforced, for a subject with no level of its own."""
    assert client.get_compatibility() == "BACKWARD"
    client.register_schema(subject, _avro(json.dumps(V1)))
    breaking = _with_field(V1, {"name": "org_id", "type": "string"})
    assert client.test_compatibility(subject, _avro(breaking)) is False
    with pytest.raises(SchemaRegistryError):
        client.register_schema(subject, _avro(breaking))


def test_unknown_ids_and_subjects_are_confluent_404s(
    client: SchemaRegistryClient, subject: str
) -> None:
    with pytest.raises(SchemaRegistryError) as raised:
        client.get_schema(987654)
    assert raised.value.http_status_code == 404
    with pytest.raises(SchemaRegistryError) as raised:
        client.get_latest_version(subject)
    assert raised.value.http_status_code == 404


def test_stop_ends_the_process_and_frees_the_port() -> None:
    registry = LocalSchemaRegistry()
    with registry:
        process, port = registry.process, registry.port
        assert SchemaRegistryClient({"url": registry.url}).get_subjects() == []
    assert process is not None and process.poll() is not None
    assert registry.process is None
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        pass
