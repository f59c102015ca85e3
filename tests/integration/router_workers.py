"""Router worker processes for the exactly-once, scale-out and chaos tests."""

from __future__ import annotations

import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, TopicPartition

from streams.jobs.processes import Cluster, Supervised
from streams.traffic import TrafficGenerator, TrafficMix
from tests.integration.conftest import Stack
from tests.integration.test_router import NOW, watermark

RECORDS = 20_000


LOG_DIR = Path(tempfile.gettempdir()) / "streams-test-workers"


def cluster_of(stack: Stack) -> Cluster:
    return Cluster(stack.bootstrap, stack.registry_url, stack.topology, LOG_DIR)


def start_worker(stack: Stack, worker_id: str) -> Supervised:
    """A router worker restarted if it exits on its own, as its deployment would."""
    return Supervised(cluster_of(stack), "router", worker_id)


@contextmanager
def workers(stack: Stack, *ids: str) -> Iterator[list[Supervised]]:
    procs = [start_worker(stack, i) for i in ids]
    try:
        yield procs
    finally:
        for proc in procs:
            proc.stop()


def high_watermark(stack: Stack, field: str) -> int:
    topic = getattr(stack.topology, field)
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


def assert_routed_exactly_once(stack: Stack, ids: list[str]) -> None:
    """Every input audited once (R16); no duplicate log-store (R4), candidate (R9) or usage (R3)."""
    out = outputs(stack)
    audit_keys = Counter(k for k, _ in out["audit"])
    assert set(audit_keys) == set(ids)
    assert max(audit_keys.values()) == 1, "duplicate audit records"
    for field in ("log_store", "training_candidates", "usage_events"):
        keys = Counter(v["request_id"] if field == "usage_events" else k for k, v in out[field])
        assert max(keys.values(), default=1) == 1, f"duplicates in {field}"
    assert len(out["usage_events"]) == len(ids)
    assert not out["dead_letters"]
