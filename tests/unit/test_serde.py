"""The Avro codec: Confluent framing, evolution on read, clear decode errors (R17)."""

from __future__ import annotations

import io
import struct
import uuid
from typing import Any

import avro.io
import avro.schema
import pytest

from streams.kafka.serde import Contracts, DecodeError, registry_client
from streams.kafka.topics import CATALOGUE, Topology
from streams.policy.audit import Source, audit_record, dead_letter_decision
from streams.policy.config import PolicyConfig
from streams.policy.models import Decision
from streams.policy.routing import log_store_record, log_store_stamp, usage_event, validate_request
from streams.policy.usage import MetricKey, Totals, metric_record
from streams.traffic import TrafficGenerator


@pytest.fixture()
def contracts() -> Contracts:
    return Contracts(registry_client(f"mock://unit-{uuid.uuid4().hex}"), Topology())


def test_log_store_fast_path_is_byte_identical_to_a_full_encode_R4(contracts: Contracts) -> None:
    """R4: the log-store record built by appending the stamp to the request's own bytes is
    exactly the record a full encode of the same fields gives."""
    config = PolicyConfig()
    fast = contracts.extending("request_logs", "log_store")
    for i in range(50):
        record = TrafficGenerator(seed=i).request(1_700_000_000_000 + i)
        raw = contracts.codec("request_logs").encode(record)
        decision = Decision(frozenset(), (), consent_version=f"c{i}", retention_days=30 + i)
        full = log_store_record(validate_request(record), decision, config)
        assert fast.encode(raw, log_store_stamp(decision, config)) == (
            contracts.codec("log_store").encode(full)
        )
        assert (
            contracts.codec("log_store").decode(
                fast.encode(raw, log_store_stamp(decision, config)) or b""
            )
            == full
        )


def test_projection_reads_only_its_fields_R4_R2(contracts: Contracts) -> None:
    """R4/R2: the retention job's view of a log record has its ids and times and nothing
    of its content; the same bytes decode in full for a safety review."""
    from streams.jobs.retention import TRACKED_FIELDS

    config = PolicyConfig()
    record = TrafficGenerator(seed=3).request(1_700_000_000_000)
    decision = Decision(frozenset(), (), consent_version="c", retention_days=30)
    full = log_store_record(validate_request(record), decision, config)
    data = contracts.codec("log_store").encode(full)
    tracked = contracts.codec("log_store").projection(TRACKED_FIELDS).decode(data)
    assert tracked == {name: full[name] for name in TRACKED_FIELDS}
    assert contracts.codec("log_store").decode(data) == full
    with pytest.raises(ValueError):
        contracts.codec("log_store").projection(("no_such_field",))


def test_fast_path_declines_bytes_written_with_another_schema(contracts: Contracts) -> None:
    """Bytes framed with an unknown writer id are never spliced (the full path is used)."""
    fast = contracts.extending("request_logs", "log_store")
    assert fast.encode(struct.pack(">bI", 0, 999) + b"xx", {}) is None


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "too short"),
        (b"\x01\x00\x00\x00\x01abc", "magic byte"),
        (struct.pack(">bI", 0, 424242) + b"abc", "unknown schema id"),
    ],
)
def test_decode_errors_name_the_failure_not_the_content_R17(
    contracts: Contracts, data: bytes, reason: str
) -> None:
    """R17: decode failures carry a reason without any record content."""
    with pytest.raises(DecodeError) as caught:
        contracts.codec("request_logs").decode(data)
    assert reason in caught.value.reason
    assert "abc" not in caught.value.reason


# --- the Apache reference implementation (the ``avro`` package) checks contracts and bytes ---
def _reference_schema(contracts: Contracts, field: str) -> Any:
    return avro.schema.parse(contracts.codec(field).schema_text)


def _samples(contracts: Contracts) -> dict[str, list[dict[str, Any]]]:
    """Records of the jobs' own making, one kind per contract they write."""
    config = PolicyConfig()
    requests = [TrafficGenerator(seed=i).request(1_700_000_000_000 + i) for i in range(20)]
    decision = Decision(frozenset({"log_store"}), ("R4",), consent_version="c1")
    source = Source("request-logs", 3, 42)
    letter, audit = dead_letter_decision(
        job="router",
        source=source,
        reason="unknown deployment",
        error_class="InvalidRecord",
        org_id="org-1",
        original_key=b"k",
        original_value=b"\x00\x01",
        keep_content=True,
        decided_at_ms=1_700_000_000_000,
        policy_version=config.policy_version,
    )
    return {
        "request_logs": requests,
        "log_store": [log_store_record(validate_request(r), decision, config) for r in requests],
        "usage_events": [usage_event(validate_request(r), config) for r in requests],
        "usage_metrics": [
            metric_record(MetricKey("org-1", "chat", "command-r", 0), Totals(2, 30, 40), config)
        ],
        "audit": [
            audit,
            audit_record(
                job="usage",
                source=source,
                subject_id="req-1",
                subject_kind="usage_event",
                org_id=None,
                routes=["dropped"],
                rule_ids=["R3"],
                reasons=["R3: duplicate"],
                consent_version="",
                policy_version=config.policy_version,
                decided_at_ms=1,
            ),
        ],
        "dead_letters": [letter],
    }


def test_every_contract_is_valid_for_the_apache_reference_implementation(
    contracts: Contracts,
) -> None:
    """Each contract of the catalogue parses with the ``avro`` reference implementation,
    so the contracts are portable Avro, not only what fastavro accepts."""
    for spec in CATALOGUE:
        assert _reference_schema(contracts, spec.field).fullname


def test_codec_bytes_are_the_reference_implementations_bytes_R16_R17(contracts: Contracts) -> None:
    """R16/R17 readers use any Avro library: the codec's body bytes equal what the Apache
    reference implementation writes for the same record, and read back equal with it."""
    for field, records in _samples(contracts).items():
        codec = contracts.codec(field)
        schema = _reference_schema(contracts, field)
        for record in records:
            framed = codec.encode(record)
            body = framed[5:]
            out = io.BytesIO()
            avro.io.DatumWriter(schema).write(record, avro.io.BinaryEncoder(out))
            assert out.getvalue() == body, field
            read = avro.io.DatumReader(schema).read(avro.io.BinaryDecoder(io.BytesIO(body)))
            assert read == codec.decode(framed), field
