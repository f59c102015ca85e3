"""R3 usage job on the real broker: exact hourly totals, also after a SIGKILL mid-stream.

Workers run as separate processes (``streams run usage``), are SIGKILLed in the middle of
the stream and restarted; the final upsert of every key of the compacted usage-metrics
topic must equal the totals computed from the input.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from streams.jobs.usage import STATE, UsageJob, aggregator_from_state, seen_key, seen_value
from streams.jobs.wiring import runtime_of
from streams.kafka.metrics import JobMetrics
from streams.kafka.serde import Contracts, registry_client
from streams.kafka.state import StateReader, ensure_copartitioned_topic
from streams.kafka.topics import USAGE, Topology, ensure_topics, internal_topic
from streams.policy.config import PolicyConfig
from streams.policy.models import DAY_MS, HOUR_MS
from streams.policy.usage import (
    METRIC_FIELDS,
    Totals,
    UsageEvent,
    UsageSettings,
    metric_key,
    reference_totals,
)
from tests.integration.conftest import Stack

pytestmark = pytest.mark.integration

NOW = int(time.time() * 1000)
SECRET_MARKERS = ("key-", "user-", "10.1.", "req-")  # API key, user, IP, request id prefixes


# --- fixtures ----------------------------------------------------------------------------
@dataclass
class Registries:
    test_url: str
    worker_url: str


@pytest.fixture()
def registries(request: pytest.FixtureRequest) -> Registries:
    """The project's schema registry when there is one; otherwise confluent-kafka's
    in-memory registry, one for the test and one for the worker processes (a separate
    process cannot share a mock): both register the whole catalogue in catalogue order,
    so they assign the same schema ids."""
    try:
        url = request.getfixturevalue("schema_registry_url")
        return Registries(url, url)
    except Exception:
        tag = uuid.uuid4().hex
        return Registries(f"mock://usage-test-{tag}", f"mock://usage-worker-{tag}")


@pytest.fixture()
def ustack(kafka_bootstrap: str, registries: Registries) -> Stack:
    topology = Topology(f"use{uuid.uuid4().hex[:8]}.")
    ensure_topics(AdminClient({"bootstrap.servers": kafka_bootstrap}), topology)
    contracts = Contracts(registry_client(registries.test_url), topology)
    contracts.register_all()
    return Stack(kafka_bootstrap, registries.test_url, PolicyConfig(), contracts)


def group_id(stack: Stack) -> str:
    return stack.topology.group(USAGE)


# --- input -------------------------------------------------------------------------------
def usage_events(n: int, seed: int = 7, hours: int = 5) -> list[dict[str, Any]]:
    """Usage events as the router writes them: every deployment, ZDR or not (the router
    writes one per request whatever the settings), over several hourly windows, with
    gateway retries (the same request id twice)."""
    rng = random.Random(seed)
    orgs = [f"org-{i:03d}" for i in range(40)]
    events: list[dict[str, Any]] = []
    for i in range(n):
        if events and rng.random() < 0.02:
            events.append(dict(rng.choice(events)))  # a retried request: same request id
            continue
        events.append(
            {
                "request_id": f"req-{seed}-{i}",
                "org_id": rng.choice(orgs),
                "endpoint": rng.choice(("chat", "generate", "embed", "v1/chat")),
                "model": rng.choice(("command-r", "command-r-plus", "embed-v3")),
                "deployment": rng.choice(("SAAS", "SAAS", "PRIVATE", "THIRD_PARTY_CLOUD")),
                "created_at_ms": NOW - rng.randrange(hours * HOUR_MS),
                "input_tokens": rng.randrange(0, 4000),
                "output_tokens": rng.randrange(0, 2000),
                "policy_version": "test",
            }
        )
    return events


def expected(events: list[dict[str, Any]]) -> dict[str, tuple[int, int, int]]:
    totals = reference_totals(UsageEvent(**e) for e in events)
    return {k.kafka_key: _t(v) for k, v in totals.items()}


def _t(totals: Totals) -> tuple[int, int, int]:
    return (totals.requests, totals.input_tokens, totals.output_tokens)


def produce_events(stack: Stack, events: list[dict[str, Any]]) -> None:
    stack.produce("usage_events", [(e["org_id"], e) for e in events])


# --- output ------------------------------------------------------------------------------
def final_metrics(stack: Stack) -> dict[str, dict[str, Any]]:
    """The compacted view: the last upsert of every key, every partition read to its end
    (``StateReader`` waits out transactions still open, e.g. a killed worker's)."""
    topic = stack.topology.usage_metrics
    codec = stack.contracts.codec("usage_metrics")
    reader = StateReader(stack.bootstrap, topic, timeout_s=90)
    latest: dict[str, dict[str, Any]] = {}
    try:
        for partition in end_offsets(stack.bootstrap, topic):
            for key, value in reader.read(partition).items():
                latest[key.decode()] = codec.decode(value)
    finally:
        reader.close()
    return latest


def as_totals(metrics: dict[str, dict[str, Any]]) -> dict[str, tuple[int, int, int]]:
    return {k: (v["requests"], v["input_tokens"], v["output_tokens"]) for k, v in metrics.items()}


def end_offsets(bootstrap: str, topic: str) -> dict[int, int]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "usage-probe"})
    try:
        parts = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        return {
            p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
            for p in parts
        }
    finally:
        consumer.close()


def committed(bootstrap: str, group: str, topic: str) -> dict[int, int]:
    # read_uncommitted: do not wait for the offsets of a killed worker's open transaction
    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": group, "isolation.level": "read_uncommitted"}
    )
    try:
        parts = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        tps = consumer.committed([TopicPartition(topic, p) for p in parts], timeout=10)
        return {tp.partition: max(tp.offset, 0) for tp in tps}
    finally:
        consumer.close()


def wait_consumed(stack: Stack, group: str, timeout_s: float = 120.0) -> dict[int, int]:
    """Until the group has committed every input record; returns what is left per partition."""
    topic = stack.topology.usage_events
    ends = end_offsets(stack.bootstrap, topic)
    deadline = time.monotonic() + timeout_s
    while True:
        done = committed(stack.bootstrap, group, topic)
        if done == ends or time.monotonic() > deadline:
            return {p: ends[p] - done.get(p, 0) for p in ends if ends[p] != done.get(p, 0)}
        time.sleep(0.5)


# --- worker processes ----------------------------------------------------------------------
class Worker:
    def __init__(
        self, stack: Stack, registries: Registries, tmp: Path, worker_id: str = "0", **env: str
    ) -> None:
        prefix = stack.topology.prefix
        self.log_path = tmp / f"usage-{worker_id}.log"
        self.port_file = tmp / f"usage-{worker_id}.port"
        self.env = {
            **os.environ,
            "KAFKA_BOOTSTRAP_SERVERS": stack.bootstrap,
            "SCHEMA_REGISTRY_URL": registries.worker_url,
            "STREAMS_TOPIC_PREFIX": prefix,
            "STREAMS_WORKER_ID": worker_id,
            "STREAMS_STATE_DIR": str(tmp / f"state-{worker_id}"),
            "STREAMS_METRICS_PORT": "0",
            "STREAMS_METRICS_PORT_FILE": str(self.port_file),
            **env,
        }
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log_path, "ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "streams.cli", "run", "usage"],
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def kill(self) -> None:
        """SIGKILL: no shutdown, no commit, no flush."""
        if self.process is not None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(30)
            self.process = None

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self.process = None

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def scrape(self, timeout_s: float = 30.0) -> str:
        deadline = time.monotonic() + timeout_s
        while not self.port_file.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        port = int(self.port_file.read_text())
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            return str(resp.read().decode())


@pytest.fixture()
def tmp(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path


def run_kill_restart(
    stack: Stack,
    registries: Registries,
    tmp: Path,
    n: int,
    group: str,
    kills: int = 1,
    timeout_s: float = 180.0,
    **env: str,
) -> dict[str, Any]:
    """Feed ``n`` events, SIGKILL the worker mid-stream, restart it, let it finish."""
    events = usage_events(n)
    produce_events(stack, events)
    worker = Worker(stack, registries, tmp, **env)
    metrics_topic = stack.topology.usage_metrics
    try:
        topic = stack.topology.usage_events
        consumed_at_kill: list[int] = []
        for kill in range(kills):
            worker.start()
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                written = sum(end_offsets(stack.bootstrap, metrics_topic).values())
                if written >= (kill + 1) * n // (2 * kills + 2):
                    break
                assert worker.alive(), worker.log_text()[-3000:]
                time.sleep(0.02)
            worker.kill()
            consumed_at_kill.append(sum(committed(stack.bootstrap, group, topic).values()))
        worker.start()
        left = wait_consumed(stack, group, timeout_s=timeout_s)
        time.sleep(1.0)
        got = as_totals(final_metrics(stack))
        want = expected(events)
        return {
            "consumed_at_kill": consumed_at_kill,
            "left_unconsumed": left,
            "input": len(events),
            "missing_keys": sorted(set(want) - set(got)),
            "extra_keys": sorted(set(got) - set(want)),
            "wrong": {k: (got[k], want[k]) for k in want if k in got and got[k] != want[k]},
            "requests_got": sum(v[0] for v in got.values()),
            "requests_want": sum(v[0] for v in want.values()),
            "log": worker.log_text(),
        }
    finally:
        worker.stop()


# --- tests ---------------------------------------------------------------------------------
def test_R3_sigkill_mid_stream_totals_are_exact(
    ustack: Stack, registries: Registries, tmp_path: Path
) -> None:
    """R3 exactly once: a usage worker SIGKILLed mid-stream and restarted neither loses nor
    double-counts a request; every hourly total equals the input's (gateway retries of the
    same request id counted once)."""
    n = 40_000
    result = run_kill_restart(ustack, registries, tmp_path, n, group_id(ustack), kills=3)
    print({k: v for k, v in result.items() if k not in ("log", "wrong")})
    kills = result["consumed_at_kill"]
    assert kills[0] > 0 and kills[-1] < n, "the kills must land mid-stream"
    assert "restored" in result["log"]
    assert result["left_unconsumed"] == {}
    assert result["missing_keys"] == [] and result["extra_keys"] == []
    assert result["wrong"] == {}, list(result["wrong"].items())[:5]
    assert result["requests_got"] == result["requests_want"]


CANARY = "PROMPT-CANARY-usage-7f3a"


def test_R3_R16_R17_every_request_counted_bad_input_dead_lettered_metrics_clean(
    ustack: Stack,
) -> None:
    """R3: every request is counted whatever its deployment or settings (usage events of
    private/third-party-cloud deployments included), per org/endpoint/model/hour, with no
    request id, API key, user or IP in any metric; a retry of the same request id is counted
    once and audited (R16); undecodable, invalid and too-late input is dead-lettered with its
    coordinates (R17) and the job keeps running; the Prometheus endpoint has operational
    labels only."""
    stack = ustack
    events = usage_events(2000, seed=11, hours=3)
    late = dict(events[0], request_id="req-late", created_at_ms=NOW - 9 * DAY_MS)
    invalid = dict(events[1], request_id="req-invalid", input_tokens=-5)
    produce_events(stack, events[:1000])
    stack.produce("usage_events", [("org-x", f"{CANARY} not avro".encode())])
    produce_events(stack, [late, invalid])
    produce_events(stack, events[1000:])
    total = len(events) + 3

    metrics = JobMetrics("usage")
    port = metrics.serve(0)
    job = UsageJob(stack.config)
    loop = runtime_of(job, stack.settings("it"), metrics=metrics)
    stats = job.stats
    deadline = time.monotonic() + 90
    loop.run(
        until=lambda: (
            loop.consumed >= total and loop.transactions > 0 or time.monotonic() > deadline
        )
    )
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            exposition = resp.read().decode()
    finally:
        metrics.stop()

    # R3: exact totals, every deployment counted, only the contract's fields
    latest = final_metrics(stack)
    assert as_totals(latest) == expected(events)
    deployments = {e["deployment"] for e in events}
    assert {"PRIVATE", "THIRD_PARTY_CLOUD", "SAAS"} <= deployments
    assert all(tuple(v) == METRIC_FIELDS for v in latest.values())
    assert any("v1%2Fchat" in key for key in latest)  # "/" inside a name is escaped
    for key in latest:
        org, endpoint, model, start = key.split("/")
        assert int(start) % HOUR_MS == 0
    raw = b"".join(stack.raw("usage_metrics"))
    for marker in SECRET_MARKERS:
        assert marker.encode() not in raw
    assert stats["duplicate"] == len(events) - len({e["request_id"] for e in events}) > 0

    # R17: three dead letters, undecodable bytes withheld, the canary nowhere
    letters = [v for _, v in stack.read("dead_letters")]
    by_class = {v["error_class"]: v for v in letters}
    assert sorted(by_class) == ["DecodeError", "InvalidRecord", "LateEvent"]
    assert by_class["DecodeError"]["content_withheld"] is True
    assert by_class["DecodeError"]["original_value"] is None
    assert by_class["LateEvent"]["original_value"] is not None  # no content: kept to recount
    assert "window closed" in by_class["LateEvent"]["reason"]
    for letter in letters:
        assert letter["source_topic"] == stack.topology.usage_events
    for field in ("dead_letters", "audit", "usage_metrics"):
        assert all(CANARY.encode() not in v for v in stack.raw(field))

    # R16: duplicates and dead letters audited with their rule ids
    audits = [v for _, v in stack.read("audit")]
    dup = [a for a in audits if a["routes"] == ["dropped"]]
    assert len(dup) == stats["duplicate"] and all(a["rule_ids"] == ["R3"] for a in dup)
    dead = [a for a in audits if a["routes"] == ["dead_letter"]]
    assert len(dead) == 3 and all("R17" in a["rule_ids"] for a in dead)
    assert {a["subject_id"] for a in dead} >= {"req-late", "req-invalid"}

    # Metrics endpoint: operational labels only
    topic = stack.topology.usage_events
    assert f'streams_records_in_total{{job="usage",topic="{topic}"}} {total}.0' in exposition
    assert 'streams_decisions_total{job="usage",rule="R3"}' in exposition
    assert 'streams_dead_letters_total{job="usage",reason="DecodeError"} 1.0' in exposition
    assert 'streams_records_out_total{job="usage",route="usage_metrics"}' in exposition
    assert "streams_consumer_lag" in exposition
    for forbidden in ("req-", "org-", CANARY):
        assert forbidden not in exposition


def test_R3_killed_worker_partitions_move_to_a_survivor_totals_exact(
    ustack: Stack, registries: Registries, tmp_path: Path
) -> None:
    """R3 exactly once across a rebalance: of two workers, one is SIGKILLed mid-stream and
    never restarted; the survivor (another transactional id, so the dead worker's open
    transaction is aborted only by its timeout) restores the moved partitions' state only
    from resolved transactions and finishes with exact totals."""
    stack = ustack
    n = 30_000
    events = usage_events(n, seed=5)
    group = group_id(stack)
    first = Worker(stack, registries, tmp_path, "0")
    second = Worker(stack, registries, tmp_path, "1")
    try:
        first.start()
        second.start()
        deadline = time.monotonic() + 60  # both in the group before the input arrives
        while "assigned 3 partitions" not in second.log_text() + first.log_text():
            assert time.monotonic() < deadline, first.log_text()[-2000:]
            time.sleep(0.1)
        produce_events(stack, events)
        metrics_topic = stack.topology.usage_metrics
        deadline = time.monotonic() + 120
        while sum(end_offsets(stack.bootstrap, metrics_topic).values()) < n // 4:
            assert time.monotonic() < deadline and first.alive() and second.alive()
            time.sleep(0.02)
        first.kill()
        consumed_at_kill = sum(
            committed(stack.bootstrap, group, stack.topology.usage_events).values()
        )
        left = wait_consumed(stack, group, timeout_s=150)
        assert left == {}, second.log_text()[-2000:]
        got = as_totals(final_metrics(stack))
        assert 0 < consumed_at_kill < n
        assert "restored" in second.log_text()
        want = expected(events)
        assert {k: (got.get(k), v) for k, v in want.items() if got.get(k) != v} == {}
        assert set(got) == set(want)
    finally:
        first.stop()
        second.stop()


def test_R3_state_restore_waits_for_a_dead_workers_open_transaction(ustack: Stack) -> None:
    """R3 exactness of the state changelog: a restore never reads past a transaction that is
    still open (a killed worker's), and once it is aborted its records are not in the state;
    records of committed transactions are."""
    stack = ustack
    state = ensure_copartitioned_topic(
        stack.bootstrap,
        internal_topic(stack.topology, USAGE, STATE),
        stack.topology.usage_events,
    )
    event = UsageEvent(**usage_events(1)[0])
    window = metric_key(event).window_start_ms

    def producer(tid: str) -> Producer:
        p = Producer({"bootstrap.servers": stack.bootstrap, "transactional.id": tid})
        p.init_transactions(30)
        return p

    committed_p = producer(f"{state}-a")
    committed_p.begin_transaction()
    committed_p.produce(state, key=seen_key(window, "d1"), value=seen_value(event), partition=2)
    committed_p.commit_transaction(30)
    zombie = producer(f"{state}-b")
    zombie.begin_transaction()
    zombie.produce(state, key=seen_key(window, "d2"), value=seen_value(event), partition=2)
    zombie.flush(30)

    restorer = StateReader(stack.bootstrap, state, timeout_s=60)
    result: dict[str, Any] = {}

    def restore() -> None:
        started = time.monotonic()
        result["aggregator"] = aggregator_from_state(restorer.read(2), UsageSettings())
        result["seconds"] = time.monotonic() - started

    thread = threading.Thread(target=restore)
    thread.start()
    time.sleep(3.0)
    assert thread.is_alive(), "the restore must wait for the open transaction"
    zombie.abort_transaction(30)
    thread.join(30)
    restorer.close()
    aggregator = result["aggregator"]
    assert result["seconds"] >= 3.0
    assert aggregator.seen == {window: {"d1"}}
    assert aggregator.totals == {metric_key(event): Totals().add(event)}


def test_R18_job_state_topics_are_reachable_only_by_their_job() -> None:
    """R18: on a broker with authentication and the shipped ACLs, the usage job may create,
    write and read its ``usage.state`` changelog and the safety-evaluation job its own; no
    other role (analytics, safety team, the other job) may read either."""
    from streams.infra.broker import LocalKafka
    from streams.kafka.topics import ROLES, acl_bindings
    from tests.integration.test_least_privilege import can_read

    kafka = LocalKafka(authenticated=True, users={role: f"{role}-pw" for role in ROLES})
    kafka.start()

    def set_up(topics: Topology) -> None:
        """Clients live only in here, so none outlives the broker."""
        admin = AdminClient(kafka.client_config())
        for future in admin.create_acls(acl_bindings(topics)).values():
            future.result()
        for role in ("usage", "safety-evaluation"):
            name = internal_topic(topics, role, "state")
            own = AdminClient(kafka.client_config(role))
            own.create_topics([NewTopic(name, 1, 1)])[name].result(30)  # the job creates it
            producer = Producer(kafka.client_config(role))
            producer.produce(name, key=b"k", value=b"v")
            assert producer.flush(30) == 0

    try:
        set_up(Topology())
        assert can_read(kafka, "usage", "usage.state")
        assert can_read(kafka, "safety-evaluation", "safety-evaluation.state")
        for role in ("analytics", "safety-team", "safety-evaluation", "training"):
            assert not can_read(kafka, role, "usage.state"), role
        for role in ("analytics", "safety-team", "usage", "training"):
            assert not can_read(kafka, role, "safety-evaluation.state"), role
    finally:
        kafka.stop()
