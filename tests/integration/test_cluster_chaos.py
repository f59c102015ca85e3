"""Durability on three brokers (issue 15): every topic with 3 copies and min ISR 2, all four
jobs running as worker processes, and the broker leading the most partitions SIGKILLed
mid-stream, then brought back with its data.

Checked on the real output topics, read from offset 0 by fresh consumers:
- R16/R3/R9/R4: every request routed exactly once: one router audit each, one usage event
  each, no duplicate log-store record or training candidate;
- R3: the usage job's hourly totals count every request exactly once;
- R5/R8: every safety-review copy evaluated exactly once;
- R4/R5/R6: after the retention clock moves 31 days, what is due is deleted and no held
  record is (misuse flag, legal hold);
- R1/R2/R9/R11/R12/R15/R17: the leak-canary check (``streams verify``) passes after the
  node is back.
The longest pause in progress (committed audit records) is printed.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import ConsumerGroupTopicPartitions, IsolationLevel, TopicPartition
from confluent_kafka.admin import AdminClient, ConfigResource, OffsetSpec, ResourceType

from streams.infra.broker import LocalCluster
from streams.jobs.processes import JOBS, Cluster, running
from streams.kafka.topics import CATALOGUE, MIN_ISR
from streams.policy.models import DAY_MS
from streams.traffic import TrafficGenerator, TrafficMix
from streams.verify import verify
from tests.integration.conftest import Stack, make_stack

pytestmark = pytest.mark.integration

FLAGGED, HELD = "org-0097", "org-0096"
BEFORE_KILL, WHILE_DOWN = 6_000, 3_000
DOWN_S = 10.0
_QUIET = logging.getLogger(f"{__name__}.librdkafka")
_QUIET.setLevel(logging.CRITICAL)  # refused connections to the killed node


class Progress(threading.Thread):
    """Observes the committed end offsets (read_committed) of a topic every 0.2 s; the
    pauses are the gaps between observations that saw it grow."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        super().__init__(daemon=True)
        self._config = {"bootstrap.servers": bootstrap, "logger": _QUIET}
        self._admin = AdminClient(self._config)
        count = len(self._admin.list_topics(topic, timeout=10).topics[topic].partitions)
        self._partitions = [TopicPartition(topic, p) for p in range(count)]
        self._done = threading.Event()
        self.grew: list[tuple[float, int]] = []

    def run(self) -> None:
        last = -1
        while not self._done.wait(0.2):
            try:
                futures = self._admin.list_offsets(
                    {tp: OffsetSpec.latest() for tp in self._partitions},
                    isolation_level=IsolationLevel.READ_COMMITTED,
                    request_timeout=2,
                )
                total = sum(f.result().offset for f in futures.values())
            except Exception:  # a partition without a leader yet: no observation
                # A new client: a stale leader epoch fails every later ask (compacted.py).
                self._admin = AdminClient(self._config)
                continue
            if total > last:
                self.grew.append((time.monotonic(), total))
                last = total

    def stop(self) -> None:
        self._done.set()
        self.join(10)

    def longest_pause(self, since: float, until: float) -> tuple[float, float]:
        """(seconds, start) of the longest gap between growths within [since, until]."""
        times = [t for t, _ in self.grew if since <= t <= until]
        gaps = [(b - a, a) for a, b in zip(times, times[1:], strict=False)]
        return max(gaps, default=(0.0, since))


def busiest_node(bootstrap: str) -> int:
    """The node id leading the most partitions (internal topics included)."""
    metadata = AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=10)
    leaders = Counter(p.leader for t in metadata.topics.values() for p in t.partitions.values())
    return leaders.most_common(1)[0][0]


def wait_until(
    what: str, done: Any, timeout_s: float, every_s: float = 2.0, diagnose: Any = None
) -> None:
    deadline = time.monotonic() + timeout_s
    while not done():
        if time.monotonic() >= deadline:
            detail = f": {diagnose()}" if diagnose is not None else ""
            raise AssertionError(f"timed out waiting for {what}{detail}")
        time.sleep(every_s)


def router_audits(stack: Stack) -> Counter[str]:
    return Counter(
        key for key, value in stack.read("audit") if key and value and value["job"] == "router"
    )


def lag(stack: Stack, job: str, field: str) -> dict[int, int]:
    """Records of a topic not yet committed by a job's group, per partition."""
    topic = getattr(stack.topology, field)
    admin = AdminClient({"bootstrap.servers": stack.bootstrap})
    count = len(admin.list_topics(topic, timeout=10).topics[topic].partitions)
    tps = [TopicPartition(topic, p) for p in range(count)]
    group = stack.topology.group(job)
    committed = admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions(group, tps)])
    done = {tp.partition: tp.offset for tp in committed[group].result().topic_partitions}
    ends = admin.list_offsets(
        {tp: OffsetSpec.latest() for tp in tps}, isolation_level=IsolationLevel.READ_COMMITTED
    )
    return {tp.partition: f.result().offset - max(done[tp.partition], 0) for tp, f in ends.items()}


def live(stack: Stack, field: str) -> dict[str, Any]:
    """The compacted view: each key's latest value, tombstoned keys left out."""
    latest: dict[str, Any] = {}
    for key, value in stack.read(field):
        if key is not None:
            latest[key] = value
    return {k: v for k, v in latest.items() if v is not None}


def assert_durable(stack: Stack) -> None:
    admin = AdminClient({"bootstrap.servers": stack.bootstrap})
    metadata = admin.list_topics(timeout=10).topics
    names = [spec.name(stack.topology) for spec in CATALOGUE]
    for name in names:
        assert {len(p.replicas) for p in metadata[name].partitions.values()} == {3}, name
    resources = [ConfigResource(ResourceType.TOPIC, name) for name in names]
    for resource, future in admin.describe_configs(resources).items():
        assert future.result()[MIN_ISR].value == "2", resource.name


def feed_facts(stack: Stack, traffic: TrafficGenerator, start: int, now: int) -> None:
    stack.produce("data_controls", [(None, c) for c in traffic.control_changes()])
    flag = {
        "flag_id": "flag-1",
        "action": "RAISE",
        "scope": "ORG",
        "org_id": FLAGGED,
        "request_id": None,
        "api_key_id": None,
        "window_start_ms": start,
        "window_end_ms": now,
        "reason": "suspected abuse",
        "at_ms": now,
    }
    hold = {
        "hold_id": "hold-1",
        "action": "PLACE",
        "org_id": HELD,
        "window_start_ms": start,
        "window_end_ms": now,
        "matter": "litigation-42",
        "at_ms": now,
    }
    stack.produce("misuse_flags", [(None, flag)])
    stack.produce("legal_holds", [(None, hold)])
    stack.produce("controls_watermark", [(None, {"watermark_ms": now, "published_at_ms": now})])


def test_a_broker_killed_mid_stream_on_three_replicas_loses_and_doubles_nothing_R3_R4_R5_R6_R8_R16(
    kafka_cluster: LocalCluster, schema_registry_url: str, tmp_path: Path
) -> None:
    stack = make_stack(kafka_cluster.bootstrap_servers, schema_registry_url)
    assert_durable(stack)
    now = int(time.time() * 1000)
    start = now - 2 * 3_600_000
    clock = tmp_path / "clock"
    clock.write_text(str(now))
    traffic = TrafficGenerator(TrafficMix(orgs=100), seed=15, start_ms=start)
    feed_facts(stack, traffic, start, now)
    requests = [traffic.request(start + i * 500) for i in range(BEFORE_KILL + WHILE_DOWN)]
    ids = {r["request_id"] for r in requests}
    stack.produce("request_logs", [(r["request_id"], r) for r in requests[:BEFORE_KILL]])
    cluster = Cluster(stack.bootstrap, stack.registry_url, stack.topology, tmp_path / "logs")
    env = {"STREAMS_CLOCK_FILE": str(clock), "STREAMS_STATE_DIR": str(tmp_path / "state")}
    progress = Progress(stack.bootstrap, stack.topology.audit)
    progress.start()
    started = time.monotonic()
    with running(cluster, *JOBS, extra_env=env) as workers:
        wait_until(
            "a quarter routed", lambda: len(router_audits(stack)) >= BEFORE_KILL // 4, 120, 0.5
        )
        victim = kafka_cluster.node_by_id(busiest_node(stack.bootstrap))
        victim.kill()
        killed_at = time.monotonic()
        # acks=all with 2 of 3 copies in sync: writes go on while the node is down.
        stack.produce("request_logs", [(r["request_id"], r) for r in requests[BEFORE_KILL:]])
        time.sleep(max(0.0, DOWN_S - (time.monotonic() - killed_at)))
        victim.start()
        back_at = time.monotonic()
        wait_until("every request routed", lambda: len(router_audits(stack)) >= len(ids), 180)
        routed_at = time.monotonic()

        # R16/R3/R9/R4: exactly once, from offset 0.
        audits = router_audits(stack)
        assert set(audits) == ids and max(audits.values()) == 1, "router audits not once each"
        usage = Counter(v["request_id"] for _, v in stack.read("usage_events") if v)
        assert set(usage) == ids and max(usage.values()) == 1, "usage events not once each"
        for field in ("log_store", "training_candidates"):
            keys = Counter(k for k, v in stack.read(field) if v is not None)
            assert max(keys.values(), default=1) == 1, f"duplicates in {field}"

        # R3: the usage job's totals count every request once.
        def counted() -> int:
            return sum(v["requests"] for v in live(stack, "usage_metrics").values())

        wait_until("usage totals", lambda: counted() >= len(ids), 60)
        assert counted() == len(ids)

        # R5/R8: every safety-review copy evaluated once. The retention job writes copies
        # too (a flagged org's logged records): all are written once it has read the whole
        # log store (at most a transaction's commit marker left: no record to commit past).
        def reviewed() -> int:
            return len(live(stack, "safety_review"))

        def evaluated() -> int:
            return len(stack.read("safety_evaluation"))

        wait_until(
            "retention caught up",
            lambda: max(lag(stack, "retention", "log_store").values()) <= 1,
            120,
            diagnose=lambda: lag(stack, "retention", "log_store"),
        )
        seen: list[tuple[int, int]] = []

        def settled() -> bool:
            seen.append((reviewed(), evaluated()))
            return len(seen) >= 3 and len(set(seen[-3:])) == 1 and seen[-1][0] > 0

        wait_until("safety evaluation settled", settled, 90, diagnose=lambda: seen[-3:])
        assert seen[-1][0] == seen[-1][1], f"reviews, evaluations: {seen[-1]}"

        # The canaries, through the jobs that lived through the kill (before the retention
        # clock moves on, which would expire the canaries' log-store records at once).
        report = verify(
            stack.bootstrap,
            stack.config,
            stack.contracts,
            int(time.time() * 1000),
            scan_paths=[cluster.log_dir, tmp_path / "state"],
        )
        assert report.ok, f"{report.render()}\nrouter lag: {lag(stack, 'router', 'request_logs')}"

        # R4/R5/R6: 31 days later what is due is deleted, no held record is.
        logged = live(stack, "log_store")
        held = {k for k, v in logged.items() if v["org_id"] in (FLAGGED, HELD)}
        assert held
        clock.write_text(str(now + 31 * DAY_MS))

        def deleted() -> set[str]:
            return {v["request_id"] for _, v in stack.read("deletion_events") if v}

        due = {k for k in logged if k in ids} - held  # the canaries' records have their own
        wait_until("expiry", lambda: due <= deleted(), 120)
        assert not deleted() & held, "a held record was deleted"
        remaining = live(stack, "log_store")
        assert held <= set(remaining)

        restarts = {w.process.args[-1]: w.restarts for w in workers}  # type: ignore[index]
    progress.stop()
    # The pause that spans the kill starts at the last progress before it.
    pause, at = progress.longest_pause(killed_at - 5, routed_at)
    before, _ = progress.longest_pause(started, killed_at)
    line = (
        f"three brokers, node {victim.node_id} (most leaders) SIGKILLed {killed_at - started:.1f}s"
        f" in, back {back_at - killed_at:.1f}s later (restart {victim.startup_seconds:.1f}s);"
        f" {len(ids):,} requests routed {routed_at - started:.1f}s after the jobs started;"
        f" longest pause in progress from the kill on {pause:.1f}s (starting"
        f" {at - killed_at:+.1f}s from the kill), before it {before:.1f}s (start-up);"
        f" worker restarts {restarts}"
    )
    print(f"\n{line}")
    logging.getLogger(__name__).warning("%s", line)
