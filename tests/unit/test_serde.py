"""The Avro codec: Confluent framing, evolution on read, clear decode errors (R17)."""

from __future__ import annotations

import struct
import uuid

import pytest

from streams.kafka.serde import Contracts, DecodeError, registry_client
from streams.policy.config import PolicyConfig
from streams.policy.models import Decision
from streams.policy.routing import log_store_record, log_store_stamp, validate_request
from streams.traffic import TrafficGenerator


@pytest.fixture()
def contracts() -> Contracts:
    return Contracts(registry_client(f"mock://unit-{uuid.uuid4().hex}"), PolicyConfig().topics)


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
