"""R3 usage metrics: the pure counting core, the state changelog round trip, the usage
processor on in-process fake messages, and the operational metrics module.

Every test names the rule it checks (R3, R16, R17 of ../shared/POLICY.md).
"""

from __future__ import annotations

import random
import urllib.request
import uuid
from dataclasses import asdict
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.jobs.usage import (
    EXPIRE_EVERY_MS,
    UsageJob,
    aggregator_from_state,
    parse_seen_key,
    seen_key,
    seen_value,
)
from streams.jobs.wiring import PolicyAuditTrail
from streams.kafka.metrics import DISABLED, JobMetrics, port_from_env, safe_label
from streams.kafka.runtime import JobDriver
from streams.kafka.serde import Contracts, registry_client
from streams.kafka.topics import Topology, key_for
from streams.kafka.transactional import Output
from streams.policy.config import PolicyConfig
from streams.policy.models import DAY_MS, HOUR_MS, InvalidRecord
from streams.policy.usage import (
    METRIC_FIELDS,
    MetricKey,
    Outcome,
    Totals,
    UsageAggregator,
    UsageEvent,
    UsageSettings,
    is_closed,
    metric_key,
    metric_record,
    reference_totals,
    request_digest,
    series_key,
    validate_usage_event,
    window_start,
)

T0 = 1_790_000_000_000 - 1_790_000_000_000 % HOUR_MS  # an hour boundary
CONFIG = PolicyConfig()


def record(**overrides: Any) -> dict[str, Any]:
    base = {
        "request_id": "req-1",
        "org_id": "org-a",
        "endpoint": "chat",
        "model": "command-r",
        "deployment": "SAAS",
        "created_at_ms": T0 + 1000,
        "input_tokens": 10,
        "output_tokens": 5,
        "policy_version": "p",
    }
    base.update(overrides)
    return base


def event(**overrides: Any) -> UsageEvent:
    return UsageEvent(**record(**overrides))


# --- validation (R17) ----------------------------------------------------------------------
def test_R3_valid_usage_event_of_any_deployment_is_accepted() -> None:
    for deployment in ("SAAS", "PRIVATE", "THIRD_PARTY_CLOUD"):
        assert validate_usage_event(record(deployment=deployment)).deployment == deployment


@pytest.mark.parametrize(
    ("overrides", "reason", "org"),
    [
        ({"request_id": ""}, "empty request_id", "org-a"),
        ({"org_id": ""}, "empty org_id", None),
        ({"endpoint": ""}, "empty endpoint", "org-a"),
        ({"model": ""}, "empty model", "org-a"),
        ({"created_at_ms": 0}, "created_at_ms not positive", "org-a"),
        ({"input_tokens": -1}, "negative token count", "org-a"),
        ({"output_tokens": -1}, "negative token count", "org-a"),
        # found by fuzzing: hourly totals of such counts overflowed the metric's Avro long
        ({"input_tokens": 2**62}, "token count out of range", "org-a"),
        ({"output_tokens": 2**31}, "token count out of range", "org-a"),
        ({"created_at_ms": 2**63 - 1}, "created_at_ms out of range", "org-a"),
    ],
)
def test_R17_invalid_usage_event_is_rejected_with_a_reason_and_no_content(
    overrides: dict[str, Any], reason: str, org: str | None
) -> None:
    with pytest.raises(InvalidRecord) as err:
        validate_usage_event(record(**overrides))
    assert err.value.reason == reason
    assert err.value.org_id == org


def test_R17_usage_event_with_wrong_fields_is_rejected() -> None:
    with pytest.raises(InvalidRecord, match="fields do not match contract"):
        validate_usage_event({**record(), "prompt": "hello"})
    broken = record()
    del broken["model"]
    with pytest.raises(InvalidRecord, match="fields do not match contract"):
        validate_usage_event(broken)


# --- windows and keys ----------------------------------------------------------------------
def test_R3_hourly_tumbling_window_boundaries() -> None:
    assert window_start(T0) == T0
    assert window_start(T0 + HOUR_MS - 1) == T0
    assert window_start(T0 + HOUR_MS) == T0 + HOUR_MS
    assert window_start(T0 - 1) == T0 - HOUR_MS


@given(st.integers(min_value=1, max_value=4_000_000_000_000), st.integers(1, 10 * DAY_MS))
def test_R3_window_contains_its_instant_property(created: int, size: int) -> None:
    start = window_start(created, size)
    assert start % size == 0 and start <= created < start + size


def test_R3_metric_key_is_the_catalogue_key_for_plain_names() -> None:
    key = metric_key(event())
    rec = metric_record(key, Totals(1, 10, 5), CONFIG)
    assert key.kafka_key == key_for("usage_metrics", rec) == f"org-a/chat/command-r/{T0}"
    assert series_key(key) == "org-a/chat/command-r"


names = st.text(alphabet="ab/%-_ .", min_size=1, max_size=6)


@given(names, names, names, names, names, names)
def test_R3_metric_keys_never_collide_property(
    o1: str, e1: str, m1: str, o2: str, e2: str, m2: str
) -> None:
    """A "/" inside a name cannot make two different series share a compacted key."""
    a, b = MetricKey(o1, e1, m1, T0), MetricKey(o2, e2, m2, T0)
    assert (a.kafka_key == b.kafka_key) == (a == b)


def test_R3_metric_record_carries_counts_only() -> None:
    """R3: no content, API key, user, IP or request id in a metric."""
    rec = metric_record(metric_key(event()), Totals(3, 30, 15), CONFIG)
    assert tuple(rec) == METRIC_FIELDS
    assert rec["window_end_ms"] - rec["window_start_ms"] == HOUR_MS
    assert (rec["requests"], rec["input_tokens"], rec["output_tokens"]) == (3, 30, 15)
    assert "req-1" not in repr(rec)


def test_R3_request_digest_is_not_the_request_id() -> None:
    digest = request_digest("req-1")
    assert "req-1" not in digest and len(digest) == 32
    assert digest == request_digest("req-1") != request_digest("req-2")


# --- aggregation -----------------------------------------------------------------------------
def test_R3_every_request_counted_once_per_window() -> None:
    agg = UsageAggregator()
    now = T0 + HOUR_MS
    first = agg.apply(event(), now)
    assert first.outcome is Outcome.COUNTED and first.totals == Totals(1, 10, 5)
    retry = agg.apply(event(), now)
    assert retry.outcome is Outcome.DUPLICATE and retry.totals == Totals(1, 10, 5)
    other = agg.apply(event(request_id="req-2", input_tokens=1, output_tokens=2), now)
    assert other.totals == Totals(2, 11, 7)
    next_hour = agg.apply(event(request_id="req-3", created_at_ms=T0 + HOUR_MS), now)
    assert next_hour.totals == Totals(1, 10, 5) and next_hour.key.window_start_ms == T0 + HOUR_MS


def test_R3_zdr_private_and_every_deployment_counted_alike() -> None:
    agg = UsageAggregator()
    for i, deployment in enumerate(("SAAS", "PRIVATE", "THIRD_PARTY_CLOUD")):
        agg.apply(event(request_id=f"r{i}", deployment=deployment), T0)
    assert agg.totals == {metric_key(event()): Totals(3, 30, 15)}


def test_R3_window_closes_exactly_after_the_allowed_lateness() -> None:
    settings_ = UsageSettings(window_ms=HOUR_MS, allowed_lateness_ms=2 * HOUR_MS)
    closes_at = T0 + 3 * HOUR_MS
    assert not is_closed(T0, closes_at - 1, settings_)
    assert is_closed(T0, closes_at, settings_)
    agg = UsageAggregator(settings_)
    assert agg.apply(event(), closes_at - 1).outcome is Outcome.COUNTED
    assert agg.apply(event(request_id="late"), closes_at).outcome is Outcome.LATE
    assert agg.totals[metric_key(event())] == Totals(1, 10, 5)  # a late event changes nothing


def test_R3_expire_drops_closed_windows_and_keeps_them_closed() -> None:
    settings_ = UsageSettings(window_ms=HOUR_MS, allowed_lateness_ms=HOUR_MS)
    agg = UsageAggregator(settings_)
    agg.apply(event(request_id="a"), T0)
    agg.apply(event(request_id="b", created_at_ms=T0 + HOUR_MS), T0 + HOUR_MS)
    assert not agg.expire(T0 + 2 * HOUR_MS - 1)
    expired = agg.expire(T0 + 2 * HOUR_MS)
    assert expired.keys == (metric_key(event()),)
    assert expired.seen == ((T0, request_digest("a")),)
    assert set(agg.seen) == {T0 + HOUR_MS}
    # even with a clock that went backwards, the closed window stays closed
    assert agg.apply(event(request_id="c"), T0).outcome is Outcome.LATE


def test_R3_settings_are_validated() -> None:
    with pytest.raises(ValueError):
        UsageSettings(window_ms=0)
    with pytest.raises(ValueError):
        UsageSettings(allowed_lateness_ms=-1)


def _retries(events: list[UsageEvent]) -> list[UsageEvent]:
    """A request id is one request: a repeat carries the first occurrence's fields."""
    first: dict[str, UsageEvent] = {}
    return [first.setdefault(e.request_id, e) for e in events]


usage_events = st.lists(
    st.builds(
        lambda rid, org, ep, model, offset, i, o: event(
            request_id=f"r{rid}",
            org_id=org,
            endpoint=ep,
            model=model,
            created_at_ms=T0 + offset,
            input_tokens=i,
            output_tokens=o,
        ),
        st.integers(0, 30),
        st.sampled_from(["o1", "o2", "o/3"]),
        st.sampled_from(["chat", "v1/embed"]),
        st.sampled_from(["m1", "m2"]),
        st.integers(0, 3 * HOUR_MS),
        st.integers(0, 1000),
        st.integers(0, 1000),
    ),
    max_size=60,
).map(_retries)


@given(usage_events, st.randoms(use_true_random=False))
def test_R3_totals_equal_the_reference_in_any_order_property(
    events: list[UsageEvent], rng: random.Random
) -> None:
    """Counts do not depend on arrival order; a request id is counted once per window."""
    shuffled = list(events)
    rng.shuffle(shuffled)
    agg = UsageAggregator()
    for e in shuffled:
        agg.apply(e, T0)
    want = reference_totals(events)
    assert agg.totals == want
    in_order = UsageAggregator()
    for e in events:
        in_order.apply(e, T0)
    assert in_order.totals == want


@settings(max_examples=200)
@given(usage_events, st.integers(0, 60), st.integers(0, 60))
def test_R3_state_changelog_restores_exactly_after_a_crash_property(
    events: list[UsageEvent], committed: int, processed: int
) -> None:
    """Model of the transactional engine: state records of the committed prefix survive a
    crash, the uncommitted ones are aborted; the restored aggregator re-reading from the
    committed offset ends with exactly the reference totals."""
    committed = min(committed, len(events))
    processed = max(committed, min(processed, len(events)))
    worker = UsageAggregator()
    changelog: dict[bytes, bytes] = {}
    for i, e in enumerate(events[:processed]):
        applied = worker.apply(e, T0)
        if applied.outcome is Outcome.COUNTED and i < committed:
            changelog[seen_key(applied.key.window_start_ms, applied.digest).encode()] = seen_value(
                e
            )
    restored = aggregator_from_state(changelog, UsageSettings())
    for e in events[committed:]:
        restored.apply(e, T0)
    assert restored.totals == reference_totals(events)


def test_R3_seen_key_round_trip() -> None:
    assert parse_seen_key(seen_key(T0, "abc")) == (T0, "abc")
    with pytest.raises(ValueError):
        parse_seen_key(f"t/{T0}/abc")


# --- the usage job on the runtime's driver (no broker) ---------------------------------------
class Driven:
    """The usage job driven as the runtime drives it, on a clock the test moves."""

    def __init__(self) -> None:
        topology = Topology("unit.")
        self.contracts = Contracts(
            registry_client(f"mock://usage-unit-{uuid.uuid4().hex}"), topology
        )
        self.contracts.register_all()
        self.topics = topology
        self.now = T0
        self.job = UsageJob(PolicyConfig())
        self.driver = JobDriver(
            self.job, self.contracts, PolicyAuditTrail(PolicyConfig()), clock=lambda: self.now
        )
        self._offset = 0

    def feed(self, value: bytes | None, partition: int = 3) -> list[Output]:
        out = self.driver.process("usage_events", b"org-a", value, partition)
        assert out is not None
        return out

    def decode(self, field: str, value: Any) -> dict[str, Any]:
        return self.contracts.codec(field).decode(value)

    def encode(self, event: dict[str, Any]) -> bytes:
        return self.contracts.codec("usage_events").encode(event)


@pytest.fixture()
def usage() -> Driven:
    return Driven()


def test_R3_job_writes_an_upsert_and_a_co_partitioned_state_record(usage: Driven) -> None:
    (upsert,) = usage.feed(usage.encode(record()), partition=3)
    topics = usage.topics
    assert upsert.topic == topics.usage_metrics and upsert.key == f"org-a/chat/command-r/{T0}"
    metric = usage.decode("usage_metrics", upsert.value)
    assert (metric["requests"], metric["input_tokens"], metric["output_tokens"]) == (1, 10, 5)
    (state,) = usage.driver.commit()  # what the runtime adds to the batch's transaction
    assert state.topic == "unit.usage.state" and state.partition == 3
    assert state.value is not None and upsert.value is not None
    assert b"req-1" not in state.value and b"req-1" not in upsert.value
    assert usage.feed(usage.encode(record()))[0].topic == topics.audit  # R16 dup


def test_R3_job_state_is_restored_from_its_changelog_after_a_reset(usage: Driven) -> None:
    """R3 exactness: after an abort or a revocation the runtime drops the state and restores
    it from the committed changelog; a retry of a committed request stays a duplicate, and
    an uncommitted one is counted again (its offset was not committed either)."""
    usage.feed(usage.encode(record()))
    usage.driver.commit()
    usage.feed(usage.encode(record(request_id="req-2")))  # never committed
    usage.driver.forget()
    assert usage.feed(usage.encode(record()))[0].topic == usage.topics.audit
    (upsert,) = usage.feed(usage.encode(record(request_id="req-2")))
    assert usage.decode("usage_metrics", upsert.value)["requests"] == 2


def test_R17_job_dead_letters_bad_input_and_keeps_going(usage: Driven) -> None:
    topics = usage.topics
    undecodable = usage.feed(b"PROMPT: secret text")
    assert [o.topic for o in undecodable] == [topics.dead_letters, topics.audit]
    letter = usage.decode("dead_letters", undecodable[0].value)
    assert letter["content_withheld"] and letter["original_value"] is None
    invalid = usage.feed(usage.encode(record(input_tokens=-3)))
    letter = usage.decode("dead_letters", invalid[0].value)
    assert letter["error_class"] == "InvalidRecord" and letter["original_value"] is not None
    audit = usage.decode("audit", invalid[1].value)
    assert audit["subject_id"] == "req-1" and audit["rule_ids"] == ["R17"]
    late = usage.feed(usage.encode(record(created_at_ms=T0 - 9 * DAY_MS)))
    audit = usage.decode("audit", late[1].value)
    assert audit["rule_ids"] == ["R3", "R17"]
    assert usage.feed(usage.encode(record(request_id="ok")))[0].topic == topics.usage_metrics
    assert usage.job.stats == {"late": 1, "counted": 1}
    assert usage.driver.processing.dead_letters == {
        "DecodeError": 1,
        "InvalidRecord": 1,
        "LateEvent": 1,
    }


def test_R17_oversize_record_is_dead_lettered_without_its_bytes(usage: Driven) -> None:
    """R17/R2: a record over the size bound is set aside before it is even decoded."""
    big = usage.encode(record()) + b"x" * 1_000_001
    letter, audit = usage.feed(big)
    decoded = usage.decode("dead_letters", letter.value)
    assert decoded["error_class"] == "Oversize" and decoded["original_value"] is None
    assert usage.decode("audit", audit.value)["routes"] == ["dead_letter"]


def test_R3_job_expiry_tombstones_closed_windows(usage: Driven) -> None:
    usage.feed(usage.encode(record()), partition=2)
    usage.driver.commit()
    assert usage.driver.punctuate() == [] and usage.driver.commit() == []
    usage.now = T0 + HOUR_MS + usage.job.settings.allowed_lateness_ms + EXPIRE_EVERY_MS
    (tombstone,) = usage.driver.punctuate()  # what the punctuator wrote to its store
    assert tombstone.value is None and tombstone.partition == 2
    assert tombstone.key == seen_key(T0, request_digest("req-1")).encode()


# --- operational metrics (R3: no identifiers in labels) ----------------------------------------
def test_R3_metric_labels_are_operational_names_only() -> None:
    assert safe_label("t1.usage-events") == "t1.usage-events"
    assert safe_label("R17") == "R17"
    for text in ("hello world", "jane@example.com", "a/b", "x" * 200, ""):
        assert safe_label(text) == "other"


def test_R3_metrics_exposition_and_endpoint() -> None:
    metrics = JobMetrics("usage")
    metrics.record_in("t.usage-events", 3)
    metrics.record_out("usage_metrics")
    metrics.decision("R3")
    metrics.dead_letter("DecodeError")
    metrics.lag(4, 17, "t.usage-events")
    metrics.lag(5, -3, "t.usage-events")
    metrics.record_in("prompt with text")
    text = metrics.exposition().decode()
    assert 'streams_records_in_total{job="usage",topic="t.usage-events"} 3.0' in text
    assert 'streams_records_in_total{job="usage",topic="other"} 1.0' in text
    assert 'streams_consumer_lag{job="usage",partition="4",topic="t.usage-events"} 17.0' in text
    assert 'streams_consumer_lag{job="usage",partition="5",topic="t.usage-events"} 0.0' in text
    assert 'streams_dead_letters_total{job="usage",reason="DecodeError"} 1.0' in text
    port = metrics.serve(0)
    assert port
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            assert b"streams_up" in resp.read()
    finally:
        metrics.stop()
    assert 'streams_up{job="usage"} 0.0' in metrics.exposition().decode()
    assert JobMetrics("usage").serve(DISABLED) is None


def test_R3_metrics_label_cardinality_is_bounded() -> None:
    metrics = JobMetrics("x")
    for i in range(1100):
        metrics.decision(f"R{i}")
    assert metrics.exposition().decode().count("streams_decisions_total{") == 1001


def test_R3_consumer_lag_from_a_consumer() -> None:
    class TP:
        def __init__(self, topic: str, partition: int, offset: int) -> None:
            self.topic, self.partition, self.offset = topic, partition, offset

    class FakeConsumer:
        def assignment(self) -> list[TP]:
            return [TP("t", 0, -1), TP("t", 1, -1)]

        def position(self, tps: list[TP]) -> list[TP]:
            return [TP("t", 0, 5), TP("t", 1, -1001)]

        def get_watermark_offsets(self, tp: TP, timeout: float, cached: bool) -> tuple[int, int]:
            return (0, 12)

    metrics = JobMetrics("usage")
    metrics.observe_consumer_lag(FakeConsumer(), every_s=0)
    text = metrics.exposition().decode()
    assert 'partition="0",topic="t"} 7.0' in text and 'partition="1",topic="t"} 12.0' in text
    metrics.observe_consumer_lag(object(), every_s=0)  # errors never escape


def test_R3_metrics_port_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("STREAMS_METRICS_PORT", raising=False)
    assert port_from_env() == 0
    monkeypatch.setenv("STREAMS_METRICS_PORT", "9108")
    assert port_from_env() == 9108
    monkeypatch.setenv("STREAMS_METRICS_PORT", "off")
    assert port_from_env() == DISABLED


def test_R3_usage_event_dataclass_matches_the_contract() -> None:
    import json

    from streams.kafka.serde import load_schema_text

    fields = [f["name"] for f in json.loads(load_schema_text("usage_event.avsc"))["fields"]]
    assert list(asdict(event())) == fields
    metric = [f["name"] for f in json.loads(load_schema_text("usage_metric.avsc"))["fields"]]
    assert tuple(metric) == METRIC_FIELDS
