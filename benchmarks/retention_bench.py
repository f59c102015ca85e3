"""Retention job: memory per tracked record and expiries per second when everything falls due.

Two parts, one run:

1. Pure logic (``streams.policy.retention``) with 1,000,000 tracked records, stored the
   way the job's faust table holds them (request id -> encoded row) plus the expiry
   schedule: memory per tracked record (RSS delta and tracemalloc on a sample), tracking
   rate, and deletions per second when all of them fall due at once. Baseline in the same
   run: a dict of the same rows filled and emptied without any policy.

2. The real job (a worker process, faust, the real broker) with ``--records`` retained
   records (default 50,000): the worker's RSS growth per tracked record, then the clock is
   moved past every expiry and the time until every deletion event is written gives
   expiries/s. Baseline in the same run: a plain confluent-kafka produce of the same output
   volume (tombstone + deletion event + audit record per expiry).

    .venv/bin/python benchmarks/retention_bench.py [--pure 1000000] [--records 50000]

Uses ``KAFKA_BOOTSTRAP_SERVERS`` / ``SCHEMA_REGISTRY_URL`` when set, otherwise starts the
project's local broker and gives the worker and this script twin in-memory registries.
Not a test: the machine is noisy, so read the ratios.
"""

from __future__ import annotations

import argparse
import gc
import os
import subprocess
import sys
import tempfile
import time
import tracemalloc
import uuid
from contextlib import ExitStack
from pathlib import Path
from types import SimpleNamespace
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from confluent_kafka import Consumer, Producer, TopicPartition  # noqa: E402
from confluent_kafka.admin import AdminClient  # noqa: E402

from streams.jobs.retention import StagedStore, write_clock  # noqa: E402
from streams.kafka.faust_app import partition_for  # noqa: E402
from streams.kafka.serde import Contracts, registry_client  # noqa: E402
from streams.kafka.topics import Topology, ensure_topics  # noqa: E402
from streams.policy.audit import Source, audit_record  # noqa: E402
from streams.policy.config import PolicyConfig  # noqa: E402
from streams.policy.models import DAY_MS  # noqa: E402
from streams.policy.retention import DictStore, RetentionBook, Tracked  # noqa: E402

T0 = 1_800_000_000_000


def rss_bytes(pid: int | str = "self") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def tracked(i: int, spread_ms: int) -> Tracked:
    return Tracked(
        request_id=f"req-{uuid.UUID(int=i).hex}",  # 36-char ids like real request ids
        org_id=f"org-{i % 500}",
        api_key_id=f"key-{i % 5000}",
        created_at_ms=T0 + (i * spread_ms) // 1_000_000,
        retention_days=30,
        partition=i % 6,
        offset=i // 6,
        consent_version="consent-2026-01",
    )


# --- 1. pure logic ------------------------------------------------------------------------
def pure(n: int) -> dict[str, float]:
    spread = 30 * DAY_MS  # creation times over 30 days, as in steady state
    gc.collect()
    base = rss_bytes()
    store = DictStore()
    book = RetentionBook(PolicyConfig(), store)
    started = time.perf_counter()
    for i in range(n):
        record = tracked(i, spread)  # ids created here, owned by the store as in the job
        store.put(record)  # what the job's table holds
        book._schedule(record.request_id, record.expires_at_ms)  # what the book adds
    track_s = time.perf_counter() - started
    del record
    gc.collect()
    per_record = (rss_bytes() - base) / n
    # tracemalloc on a sample: the same structures, 100k records.
    sample = min(n, 100_000)
    tracemalloc.start()
    s_store = DictStore()
    s_book = RetentionBook(PolicyConfig(), s_store)
    for i in range(sample):
        record = tracked(i, spread)
        s_store.put(record)
        s_book._schedule(record.request_id, record.expires_at_ms)
    del record
    traced = tracemalloc.get_traced_memory()[0] / sample
    tracemalloc.stop()
    del s_store, s_book
    records = [tracked(i, spread) for i in range(sample)]
    # Tracking through the full decision path (audit note, review checks) on a sample.
    decide_store = DictStore()
    decide_book = RetentionBook(PolicyConfig(), decide_store)
    started = time.perf_counter()
    for record in records[:sample]:
        decide_book.record(record, T0)
    decide_rate = sample / (time.perf_counter() - started)
    del decide_store, decide_book
    # After a restart: the book rebuilt from the stored rows (faust's recovery comes first).
    started = time.perf_counter()
    RetentionBook(PolicyConfig(), store)
    rebuild_s = time.perf_counter() - started
    # An org-wide flag: every partition's book finds the rows of one org (of 500) in the
    # worker's table, as the job's StagedStore does it (byte filter, then decode).
    table = SimpleNamespace(data=store.rows)
    started = time.perf_counter()
    flagged = sum(1 for p in range(6) for _ in StagedStore(table, table, p).scan(org_id="org-7"))
    scan_s = time.perf_counter() - started
    assert flagged == n // 500, flagged
    # Everything falls due at once.
    started = time.perf_counter()
    deleted = 0
    while True:
        result = book.tick(T0 + 60 * DAY_MS, limit=100_000)
        deleted += len(result.effects)
        if not result.more:
            break
    expire_s = time.perf_counter() - started
    assert deleted == n and len(store) == 0, (deleted, len(store))
    # Baseline: the same rows into a dict and out again, no policy.
    rows = {r.request_id: r.encode() for r in records[:sample]}
    started = time.perf_counter()
    for key in list(rows):
        Tracked.decode(key, rows.pop(key))
    baseline_rate = sample / (time.perf_counter() - started)
    return {
        "records": n,
        "bytes_per_record_rss": per_record,
        "bytes_per_record_tracemalloc": traced,
        "schedule_rate": n / track_s,
        "decide_rate": decide_rate,
        "expiries_per_s": n / expire_s,
        "rebuild_s": rebuild_s,
        "org_scan_s": scan_s,
        "baseline_decode_per_s": baseline_rate,
    }


# --- 2. the real job ----------------------------------------------------------------------
def log_record(rid: str, created: int) -> dict[str, Any]:
    return {
        "request_id": rid,
        "org_id": f"org-{hash(rid) % 200}",
        "api_key_id": "key-1",
        "key_type": "PRODUCTION",
        "created_at_ms": created,
        "endpoint": "chat",
        "model": "command-r",
        "source": "API",
        "connectors": [],
        "prompt": "p" * 500,
        "documents": [],
        "generation": "g" * 800,
        "input_tokens": 100,
        "output_tokens": 200,
        "client_ip": None,
        "user_id": None,
        "metadata": {},
        "retention_days": 30,
        "consent_version": "consent-1",
        "policy_version": "bench",
    }


def count_records(bootstrap: str, topic: str, partitions: int) -> int:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"bench-{uuid.uuid4()}"})
    try:
        total = 0
        for p in range(partitions):
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            total += high - low
        return total
    finally:
        consumer.close()


def wait_count(bootstrap: str, topic: str, at_least: int, timeout_s: float) -> float:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if count_records(bootstrap, topic, 6) >= at_least:
            return time.perf_counter()
        time.sleep(0.1)
    raise TimeoutError(f"{topic}: fewer than {at_least} records after {timeout_s}s")


def real(bootstrap: str, registry: str | None, n: int, tmp: Path) -> dict[str, float]:
    topics = Topology(f"bench{uuid.uuid4().hex[:6]}.")
    ensure_topics(AdminClient({"bootstrap.servers": bootstrap}), topics)
    tag = uuid.uuid4().hex
    test_url = registry or f"mock://bench-{tag}"
    worker_url = registry or f"mock://bench-worker-{tag}"
    contracts = Contracts(registry_client(test_url), topics)
    contracts.register_all()
    codec = contracts.codec("log_store")
    clock = tmp / "clock"
    write_clock(clock, T0)
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "SCHEMA_REGISTRY_URL": worker_url,
        "STREAMS_TOPIC_PREFIX": topics.prefix,
        "STREAMS_CLOCK_FILE": str(clock),
        "STREAMS_STATE_DIR": str(tmp / "state"),
        "STREAMS_TICK_S": "0.5",
    }
    worker = start_worker(env, tmp)
    try:
        # An idle worker first (joined, books built), then its RSS as the base.
        wait_for_log(tmp / "worker.log", "books rebuilt", 120)
        time.sleep(2)
        base_rss = rss_bytes(worker.pid)
        producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20})
        started = time.perf_counter()
        for i in range(n):
            rid = f"req-{uuid.UUID(int=i).hex}"
            record = log_record(rid, T0 + (i % 1000))
            producer.produce(topics.log_store, key=rid, value=codec.encode(record))
            if i % 10_000 == 0:
                producer.poll(0)
        producer.flush(60)
        tracked_at = wait_count(bootstrap, topics.audit, n, 600)
        track_rate = n / (tracked_at - started)
        time.sleep(2)
        tracked_rss = rss_bytes(worker.pid)
        # A crash and restart: time until the tables are recovered from their changelogs
        # and every book is rebuilt.
        worker.kill()
        worker.wait(30)
        started = time.perf_counter()
        worker = start_worker(env, tmp)
        wait_for_log(tmp / "worker.log", f"{n} tracked records", 600)
        recovery_s = time.perf_counter() - started
        # Everything falls due: from the clock's move to the last deletion event.
        started = time.perf_counter()
        write_clock(clock, T0 + 30 * DAY_MS + 1000)
        done = wait_count(bootstrap, topics.deletion_events, n, 600)
        expiry_rate = n / (done - started)
    finally:
        worker.terminate()
        try:
            worker.wait(60)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait(10)
            print(f"worker did not stop on SIGTERM; see {tmp / 'worker.log'}", file=sys.stderr)
    # Baseline: the same output volume written by a plain producer, same run.
    prefix = f"bench-base{uuid.uuid4().hex[:6]}."
    base_topics = Topology(prefix)
    ensure_topics(AdminClient({"bootstrap.servers": bootstrap}), base_topics)
    base_contracts = Contracts(registry_client(test_url), base_topics)
    deletion_codec = base_contracts.codec("deletion_events")
    audit_codec = base_contracts.codec("audit")
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5, "acks": "all"})
    started = time.perf_counter()
    for i in range(n):
        rid = f"req-{uuid.UUID(int=i).hex}"
        producer.produce(
            base_topics.log_store, key=rid, value=None, partition=partition_for(rid, 6)
        )
        event = {
            "request_id": rid,
            "org_id": "org-1",
            "reason": "EXPIRED",
            "rule_ids": ["R4"],
            "deleted_at_ms": T0,
            "policy_version": "bench",
        }
        producer.produce(base_topics.deletion_events, key=rid, value=deletion_codec.encode(event))
        audit = audit_record(
            job="bench",
            source=Source(base_topics.log_store, i % 6, i),
            subject_id=rid,
            subject_kind="log_record",
            org_id="org-1",
            routes=["deleted"],
            rule_ids=["R4"],
            reasons=["R4: 30 days after creation"],
            consent_version="",
            policy_version="bench",
            decided_at_ms=T0,
        )
        producer.produce(base_topics.audit, key=rid, value=audit_codec.encode(audit))
        if i % 10_000 == 0:
            producer.poll(0)
    producer.flush(120)
    baseline_rate = n / (time.perf_counter() - started)
    return {
        "records": n,
        "job_track_per_s": track_rate,
        "job_rss_bytes_per_record": (tracked_rss - base_rss) / n,
        "job_expiries_per_s": expiry_rate,
        "job_restart_recovery_s": recovery_s,
        "baseline_plain_produce_expiries_per_s": baseline_rate,
    }


def start_worker(env: dict[str, str], tmp: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "streams.cli", "run", "retention"],
        env=env,
        stdout=open(tmp / "worker.log", "ab"),  # noqa: SIM115
        stderr=subprocess.STDOUT,
    )


def wait_for_log(path: Path, text: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if path.exists() and text in path.read_text(errors="replace"):
            return
        time.sleep(0.2)
    raise TimeoutError(f"worker did not log {text!r}; see {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pure", type=int, default=1_000_000)
    parser.add_argument("--records", type=int, default=50_000)
    parser.add_argument("--skip-real", action="store_true")
    args = parser.parse_args()
    p = pure(args.pure)
    print(f"pure logic, {p['records']:,} tracked records")
    print(f"  memory per tracked record   {p['bytes_per_record_rss']:8.0f} B (RSS delta)")
    print(f"                              {p['bytes_per_record_tracemalloc']:8.0f} B (tracemalloc)")
    print(f"  scheduling                  {p['schedule_rate']:12,.0f} records/s")
    print(f"  full decision on arrival    {p['decide_rate']:12,.0f} records/s")
    print(f"  book rebuilt after restart  {p['rebuild_s']:12.1f} s")
    print(f"  org-wide flag, 6 partitions {p['org_scan_s']:12.1f} s to find the org's records")
    print(f"  expiry, all due at once     {p['expiries_per_s']:12,.0f} deletions/s")
    print(f"  baseline: row decode only   {p['baseline_decode_per_s']:12,.0f} rows/s")
    print(f"  ratio expiry / baseline     {p['expiries_per_s'] / p['baseline_decode_per_s']:.2f}")
    if args.skip_real:
        return
    with ExitStack() as stack:
        bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
        if not bootstrap:
            from streams.infra.broker import LocalKafka

            bootstrap = stack.enter_context(LocalKafka()).bootstrap_servers
        tmp = Path(tempfile.mkdtemp(prefix="retention-bench-"))
        r = real(bootstrap, os.environ.get("SCHEMA_REGISTRY_URL"), args.records, tmp)
    print(f"real job (faust worker, local broker), {r['records']:,} records")
    print(f"  tracking (log store -> audit) {r['job_track_per_s']:10,.0f} records/s")
    print(f"  worker RSS per tracked record {r['job_rss_bytes_per_record']:10.0f} B")
    print(f"  restart after SIGKILL         {r['job_restart_recovery_s']:10.1f} s to recover all")
    print(f"  expiries written              {r['job_expiries_per_s']:10,.0f} records/s")
    print(
        f"  baseline plain produce        {r['baseline_plain_produce_expiries_per_s']:10,.0f}"
        " records/s (tombstone + deletion event + audit each)"
    )
    ratio = r["job_expiries_per_s"] / r["baseline_plain_produce_expiries_per_s"]
    print(f"  ratio job / baseline          {ratio:.2f}")


if __name__ == "__main__":
    main()
