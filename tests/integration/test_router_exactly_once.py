"""Router workers as separate processes: SIGKILL mid-stream, restart, and scale-out."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from confluent_kafka import Consumer, TopicPartition

from streams.traffic import TrafficGenerator, TrafficMix
from tests.integration.conftest import Stack, make_stack
from tests.integration.test_router import NOW, watermark

pytestmark = pytest.mark.integration

RECORDS = 20_000


def start_worker(stack: Stack, worker_id: str) -> subprocess.Popen[bytes]:
    prefix = stack.config.topics.request_logs.removesuffix("request-logs")
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": stack.bootstrap,
        "SCHEMA_REGISTRY_URL": stack.registry_url,
        "STREAMS_TOPIC_PREFIX": prefix,
        "STREAMS_WORKER_ID": worker_id,
    }
    return subprocess.Popen(
        [sys.executable, "-m", "streams.jobs.router"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


@contextmanager
def workers(stack: Stack, *ids: str) -> Iterator[list[subprocess.Popen[bytes]]]:
    procs = [start_worker(stack, i) for i in ids]
    try:
        yield procs
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()


def high_watermark(stack: Stack, field: str) -> int:
    topic = getattr(stack.config.topics, field)
    consumer = Consumer({"bootstrap.servers": stack.bootstrap, "group.id": "hw-probe"})
    try:
        parts = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        return sum(
            consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in parts
        )
    finally:
        consumer.close()


def wait_for_audits(stack: Stack, count: int, timeout_s: float = 180.0) -> list[tuple[Any, Any]]:
    deadline = time.monotonic() + timeout_s
    while True:
        audits = stack.read("audit", idle_timeout_s=1.0)
        if len({k for k, _ in audits}) >= count or time.monotonic() > deadline:
            return audits
        time.sleep(2)


def feed(stack: Stack, records: int, seed: int = 3) -> list[str]:
    traffic = TrafficGenerator(TrafficMix(orgs=50), seed=seed, start_ms=NOW - 3_600_000)
    stack.produce("data_controls", [(None, c) for c in traffic.control_changes()])
    watermark(stack, NOW)
    requests = [traffic.request(NOW - 3_600_000 + i) for i in range(records)]
    stack.produce("request_logs", [(r["request_id"], r) for r in requests])
    return [r["request_id"] for r in requests]


def outputs(stack: Stack) -> dict[str, list[tuple[Any, Any]]]:
    return {
        field: stack.read(field)
        for field in ("audit", "log_store", "training_candidates", "usage_events", "dead_letters")
    }


def test_sigkill_mid_stream_routes_every_record_exactly_once_R16_R9_R4(stack: Stack) -> None:
    """Exactly once: a worker SIGKILLed mid-stream and restarted loses nothing, doubles nothing
    (no duplicate audit R16, training candidate R9 or log-store R4 record)."""
    ids = feed(stack, RECORDS)
    with workers(stack, "0") as (first,):
        deadline = time.monotonic() + 120
        while high_watermark(stack, "audit") < RECORDS // 5 and time.monotonic() < deadline:
            time.sleep(0.05)
        first.send_signal(signal.SIGKILL)
        first.wait(10)
    killed_at = high_watermark(stack, "audit")
    assert killed_at > 0, "the worker produced nothing before the kill"
    with workers(stack, "0"):
        audits = wait_for_audits(stack, RECORDS)
    out = outputs(stack)
    audit_keys = Counter(k for k, _ in out["audit"])
    assert set(audit_keys) == set(ids)
    assert max(audit_keys.values()) == 1, "duplicate audit records"
    for field in ("log_store", "training_candidates", "usage_events"):
        keys = Counter(v["request_id"] if field == "usage_events" else k for k, v in out[field])
        assert max(keys.values(), default=1) == 1, f"duplicates in {field}"
    assert len(out["usage_events"]) == RECORDS  # R3: every request counted once
    assert not out["dead_letters"]
    assert len(audits) == RECORDS


def _comparable(stack: Stack, out: dict[str, list[tuple[Any, Any]]]) -> dict[str, set[Any]]:
    """Outputs without what legitimately differs between runs (times, offsets, topic prefix)."""
    volatile = {"decided_at_ms", "decision_id", "source_partition", "source_offset", "source_topic"}
    prefix = stack.config.topics.request_logs.removesuffix("request-logs")
    result = {}
    for field, records in out.items():
        result[field] = {
            (
                (k or "").removeprefix(prefix),
                tuple(sorted((n, repr(x)) for n, x in v.items() if n not in volatile)),
            )
            for k, v in records
        }
    return result


def test_two_workers_share_partitions_and_match_one_worker_R9_R16(
    kafka_bootstrap: str, schema_registry_url: str
) -> None:
    """Scale-out: two workers in one group produce exactly what one worker produces."""
    stack = make_stack(kafka_bootstrap, schema_registry_url)
    single = make_stack(kafka_bootstrap, schema_registry_url)
    ids = feed(stack, RECORDS // 4, seed=11)
    feed(single, RECORDS // 4, seed=11)
    with workers(stack, "0", "1"):
        wait_for_audits(stack, len(ids))
    with workers(single, "0"):
        wait_for_audits(single, len(ids))
    assert _comparable(stack, outputs(stack)) == _comparable(single, outputs(single))
