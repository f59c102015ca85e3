"""Integration fixtures: a real schema registry, fresh topics per test, produce/read helpers.

The broker comes from ``kafka_bootstrap`` (tests/conftest.py): the project's
own KRaft broker, a Docker testcontainer, or ``KAFKA_BOOTSTRAP_SERVERS``.
``kafka_cluster`` is three KRaft nodes (``LocalCluster``), started only for the tests that
ask for it (issue 15: replication 3, a broker killed mid-stream).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient

from streams.infra.broker import LocalCluster, free_port
from streams.jobs.processes import stop_jobs
from streams.kafka.compacted import read_topic
from streams.kafka.serde import Contracts, DecodeError, registry_client
from streams.kafka.topics import Topology, ensure_topics, key_for
from streams.policy.audit import Source, audit_record
from streams.policy.config import PolicyConfig
from streams.settings import Settings


@pytest.fixture(scope="session")
def schema_registry_url() -> Iterator[str]:
    url = os.environ.get("SCHEMA_REGISTRY_URL")
    if url:
        yield url
        return
    from streams.infra.registry import LocalSchemaRegistry

    registry = LocalSchemaRegistry()
    registry.start()
    try:
        yield registry.url
    finally:
        registry.stop()


@pytest.fixture(scope="session")
def kafka_cluster() -> Iterator[LocalCluster]:
    """Three KRaft nodes on loopback, replication 3 and min ISR 2 for the internal topics.
    A test that kills a node must bring it back before it ends (``nodes[i].start()``)."""
    with LocalCluster(brokers=3) as cluster:
        yield cluster


@dataclass
class Stack:
    """One test's view of the stack: its own topic names on the shared broker and registry."""

    bootstrap: str
    registry_url: str
    config: PolicyConfig
    contracts: Contracts

    @property
    def topology(self) -> Topology:
        return self.contracts.topics

    def settings(self, worker_id: str = "0", **overrides: Any) -> Settings:
        """A worker's settings on this stack (the ``streams run`` view of it)."""
        return Settings(
            self.bootstrap,
            self.registry_url,
            topology=self.topology,
            policy=self.config,
            worker_id=worker_id,
            **overrides,
        )

    def produce(self, field: str, records: list[tuple[str | None, Any]]) -> None:
        """Encode each value with the topic's contract (bytes are sent as they are)."""
        topic = getattr(self.topology, field)
        codec = self.contracts.codec(field)
        producer = Producer({"bootstrap.servers": self.bootstrap, "linger.ms": 5})
        errors: list[object] = []
        for key, value in records:
            if isinstance(value, bytes) or value is None:
                payload = value
            else:
                payload = codec.encode(value)
                key = key if key is not None else key_for(field, value)
            producer.produce(
                topic, key=key, value=payload, on_delivery=lambda err, _: errors.append(err)
            )
        assert producer.flush(30) == 0
        assert not [e for e in errors if e is not None], errors

    def read(self, field: str, idle_timeout_s: float = 1.0) -> list[tuple[str | None, Any]]:
        """Every committed record of the topic, decoded; tombstones as (key, None)."""
        topic = getattr(self.topology, field)
        codec = self.contracts.codec(field)
        out: list[tuple[str | None, Any]] = []
        for key, value, _, _ in read_topic(self.bootstrap, topic, idle_timeout_s):
            try:
                decoded = None if value is None else codec.decode(value)
            except DecodeError:
                decoded = value
            out.append((key.decode() if key is not None else None, decoded))
        return out

    def raw(self, field: str) -> list[bytes]:
        topic = getattr(self.topology, field)
        return [v for _, v, _, _ in read_topic(self.bootstrap, topic, 1.0) if v is not None]


def make_stack(bootstrap: str, registry_url: str) -> Stack:
    """Fresh topics under a unique prefix, every contract registered in catalogue order.

    On confluent-kafka's in-memory registry (``mock://``, only when no real registry runs)
    each stack gets its own registry instance, so that a worker process registering the
    catalogue in the same order gets the same schema ids as the test.
    """
    name = uuid.uuid4().hex[:8]
    if registry_url.startswith("mock://"):
        registry_url = f"{registry_url}-{name}"
    topology = Topology(f"t{name}.")
    ensure_topics(AdminClient({"bootstrap.servers": bootstrap}), topology)
    contracts = Contracts(registry_client(registry_url), topology)
    contracts.register_all()
    return Stack(bootstrap, registry_url, PolicyConfig(), contracts)


@pytest.fixture()
def stack(kafka_bootstrap: str, schema_registry_url: str) -> Stack:
    return make_stack(kafka_bootstrap, schema_registry_url)


@contextmanager
def explain_service(stack: Stack, work_dir: Path) -> Iterator[str]:
    """The audit index and its web views over the stack's audit topic, as deployed
    (``streams run audit-index``); yields its base URL. Its log is ``work_dir/index.log``."""
    port = free_port()
    with (work_dir / "index.log").open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "streams.cli", "run", "audit-index"],
            env={
                **os.environ,
                "KAFKA_BOOTSTRAP_SERVERS": stack.bootstrap,
                "SCHEMA_REGISTRY_URL": stack.registry_url,
                "STREAMS_TOPIC_PREFIX": stack.topology.prefix,
                "STREAMS_STATE_DIR": str(work_dir / "state"),
                "STREAMS_EXPLAIN_PORT": str(port),
            },
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_jobs([process])


def audit_decision(
    subject_id: str,
    job: str = "router",
    routes: tuple[str, ...] = ("usage",),
    rules: tuple[str, ...] = ("R2", "R3"),
    decided_at_ms: int | None = None,
) -> dict[str, Any]:
    """An audit record (R16) as a job writes it, with a reason naming its first rule."""
    return audit_record(
        job=job,
        source=Source("request-logs", 0, 7),
        subject_id=subject_id,
        subject_kind="request",
        org_id="org-1",
        routes=routes,
        rule_ids=rules,
        reasons=(f"{rules[0]}: decided in a test",),
        consent_version="c-1",
        policy_version="test",
        decided_at_ms=int(time.time() * 1000) if decided_at_ms is None else decided_at_ms,
    )
