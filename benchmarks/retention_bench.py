"""Retention job at a provider's scale: state on disk, expiries per second, restarts.

Two parts, one run:

1. The job's state (``BookStore`` on ``DiskStores``, RocksDB) with ``--tracked`` records
   (default 10,000,000) over 6 partitions, fed through the policy's ``RetentionBook`` the
   way the job feeds it (writes committed in batches): tracking rate, process RSS, disk per
   tracked record (indexes included), the time an org-wide flag and an account deletion
   take to find the org's records, and deletions/s when a tenth falls due at once.
   Baseline in the same run: the same code on the in-memory store (``MemoryStore``, what
   the job kept in RAM before), for ``--baseline`` records (default 1,000,000).

2. The real job (a worker process, the real broker) with ``--records`` retained records
   (default 200,000): tracking rate end to end (log store in, audit out), worker RSS,
   restart after SIGKILL with its disk (time to its first expiry), restart with its disk
   lost (restore from the changelog), and expiries/s when every record falls due at once.
   Baselines in the same run: a plain confluent-kafka produce of the same output records
   (tombstone + deletion event + audit record per expiry), and for tracking a plain
   consumer that decodes the same log-store records and writes an audit record and a
   changelog row for each.

    .venv/bin/python benchmarks/retention_bench.py [--tracked 10000000] [--records 200000]
        [--tick-limit 20000] [--skip-state] [--skip-real]

Uses ``KAFKA_BOOTSTRAP_SERVERS`` / ``SCHEMA_REGISTRY_URL`` when set, otherwise starts the
project's local broker and gives the worker and this script twin in-memory registries.
Not a test: the machine is noisy, so read the ratios.
"""

from __future__ import annotations

import argparse
import gc
import marshal
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from contextlib import ExitStack
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from confluent_kafka import Consumer, Producer, TopicPartition  # noqa: E402
from confluent_kafka.admin import AdminClient, NewTopic  # noqa: E402

from streams.jobs.retention import TRACKED_FIELDS, BookStore, write_clock  # noqa: E402
from streams.kafka.faust_app import partition_for  # noqa: E402
from streams.kafka.serde import Contracts, registry_client  # noqa: E402
from streams.kafka.state import DiskStores, KeyValueStore, MemoryStore  # noqa: E402
from streams.kafka.topics import Topology, ensure_topics  # noqa: E402
from streams.policy.audit import Source, audit_record  # noqa: E402
from streams.policy.config import PolicyConfig  # noqa: E402
from streams.policy.models import DAY_MS, AccountDeletionRequest  # noqa: E402
from streams.policy.retention import RetentionBook, Tracked  # noqa: E402

T0 = 1_800_000_000_000
PARTITIONS = 6
ORGS = 5000  # org-7 holds 1 in 5,000 records


def rss_bytes(pid: int | str = "self") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def disk_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def tracked(i: int, spread_ms: int, n: int) -> Tracked:
    return Tracked(
        request_id=f"req-{uuid.UUID(int=i).hex}",  # 36-char ids like real request ids
        org_id=f"org-{i % ORGS}",
        api_key_id=f"key-{i % 50_000}",
        created_at_ms=T0 + (i * spread_ms) // n,
        retention_days=30,
        partition=i % PARTITIONS,
        offset=i // PARTITIONS,
        consent_version="consent-2026-01",
    )


# --- 1. the job's state ---------------------------------------------------------------------
def state(n: int, disk: bool, tmp: Path) -> dict[str, float]:
    spread = 30 * DAY_MS  # creation times over 30 days, as in steady state
    gc.collect()
    base = rss_bytes()
    backend = DiskStores(tmp / "state") if disk else None
    stores: list[KeyValueStore] = [
        backend.open("books", p, lambda _p, start, _apply: start, T0)
        if backend is not None
        else MemoryStore()
        for p in range(PARTITIONS)
    ]
    books = [
        RetentionBook(PolicyConfig(), BookStore(kv, p), p, PARTITIONS)
        for p, kv in enumerate(stores)
    ]

    def commit() -> None:
        for kv in stores:
            kv.take_changes()  # what the runtime writes to the changelog
            kv.committed()

    started = window = time.perf_counter()
    for i in range(n):
        record = tracked(i, spread, n)
        books[record.partition].record(record, T0)
        if i % 5000 == 4999:
            commit()
        if i % 1_000_000 == 999_999 and disk:
            now = time.perf_counter()
            print(
                f"  ... {i + 1:,} tracked: {1_000_000 / (now - window):,.0f} records/s,"
                f" RSS {rss_bytes() / 2**20:.0f} MB",
                flush=True,
            )
            window = now
    commit()
    track_s = time.perf_counter() - started
    gc.collect()
    result: dict[str, float] = {
        "records": n,
        "track_per_s": n / track_s,
        "rss_mb": rss_bytes() / 2**20,
        "rss_growth_per_record": (rss_bytes() - base) / n,
    }
    if backend is not None:
        for db in backend._dbs.values():
            db.flush()
        result["disk_per_record"] = disk_bytes(tmp / "state") / n
    # An org-wide flag: every partition's book finds the org's records (index scan).
    started = time.perf_counter()
    found = sum(1 for b in books for _ in b.store.scan("org-7"))
    result["org_scan_s"] = time.perf_counter() - started
    assert found == n // ORGS, found
    # An account deletion: the org's records found and made due at once.
    started = time.perf_counter()
    request = AccountDeletionRequest("d-1", "org-11", T0 + DAY_MS)
    for b in books:
        b.delete_account(request, T0, limit=0)
    commit()
    result["account_deletion_s"] = time.perf_counter() - started
    # A tenth falls due at once: deleted in ticks of 10,000, committed per tick.
    now = T0 + 30 * DAY_MS + spread // 10
    started = time.perf_counter()
    deleted = 0
    for b in books:
        while True:
            tick = b.tick(now, limit=10_000)
            deleted += len(tick.effects)
            commit()
            if not tick.more:
                break
    result["expiries"] = deleted
    result["expiries_per_s"] = deleted / (time.perf_counter() - started)
    result["rss_end_mb"] = rss_bytes() / 2**20
    if backend is not None:
        backend.destroy()
    return result


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


def count_records(bootstrap: str, topic: str) -> int:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"bench-{uuid.uuid4()}"})
    try:
        total = 0
        for p in range(PARTITIONS):
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            total += high - low
        return total
    finally:
        consumer.close()


def wait_count(bootstrap: str, topic: str, at_least: int, timeout_s: float) -> float:
    """When ``topic`` held at least ``at_least`` records (transaction markers count too:
    a bound that is reached a little early, never late)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if count_records(bootstrap, topic) >= at_least:
            return time.perf_counter()
        time.sleep(0.05)
    raise TimeoutError(f"{topic}: fewer than {at_least} records after {timeout_s}s")


def real(
    bootstrap: str, registry: str | None, n: int, tmp: Path, tick_limit: int
) -> dict[str, float]:
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
    state_dir = tmp / "state"
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "SCHEMA_REGISTRY_URL": worker_url,
        "STREAMS_TOPIC_PREFIX": topics.prefix,
        "STREAMS_CLOCK_FILE": str(clock),
        "STREAMS_STATE_DIR": str(state_dir),
        "STREAMS_TICK_S": "0.25",
        "STREAMS_TICK_LIMIT": str(tick_limit),
    }
    log_path = tmp / "worker.log"
    worker = start_worker(env, log_path)
    result: dict[str, float] = {"records": n}
    try:
        wait_for_log(log_path, "restored: store books", PARTITIONS, 120)
        time.sleep(2)
        base_rss = rss_bytes(worker.pid)
        # Creation times: the first tenth a day older, so it falls due first (restarts).
        values = [
            (rid, codec.encode(log_record(rid, T0 - (DAY_MS if i < n // 10 else 0) + i % 1000)))
            for i in range(n)
            for rid in (f"req-{uuid.UUID(int=i).hex}",)
        ]
        producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20})
        started = time.perf_counter()
        for rid, value in values:
            _produce(producer, topics.log_store, rid, value)
        producer.flush(120)
        del values
        tracked_at = wait_count(bootstrap, topics.audit, n, 900)
        result["track_per_s"] = n / (tracked_at - started)
        time.sleep(3)
        result["worker_rss_mb"] = rss_bytes(worker.pid) / 2**20
        result["worker_rss_growth_per_record"] = (rss_bytes(worker.pid) - base_rss) / n
        result["disk_per_record"] = disk_bytes(state_dir) / n

        # SIGKILL, then a restart with the disk: the first tenth falls due meanwhile.
        worker.kill()
        worker.wait(30)
        write_clock(clock, T0 + 29 * DAY_MS + 1000)
        started = time.perf_counter()
        worker = start_worker(env, log_path)
        wait_count(bootstrap, topics.deletion_events, 1, 120)
        result["warm_first_expiry_s"] = time.perf_counter() - started
        wait_count(bootstrap, topics.deletion_events, n // 10, 300)

        # SIGKILL, disk lost: the partitions are rebuilt from the changelog.
        worker.kill()
        worker.wait(30)
        shutil.rmtree(state_dir)
        started = time.perf_counter()
        restored = log_path.read_text(errors="replace").count("restored: store books")
        worker = start_worker(env, log_path)
        wait_for_log(log_path, "restored: store books", restored + PARTITIONS, 900)
        result["cold_restore_s"] = time.perf_counter() - started
        pattern = r"restored: store books, (\d+) replayed"
        replayed = re.findall(pattern, _tail(log_path))
        result["cold_replayed"] = sum(int(r) for r in replayed[-PARTITIONS:])

        # Everything else falls due at once: from the clock's move to the last deletion.
        before = count_records(bootstrap, topics.deletion_events)
        started = time.perf_counter()
        write_clock(clock, T0 + 30 * DAY_MS + 1000)
        done = wait_count(bootstrap, topics.deletion_events, before + n - n // 10, 900)
        result["burst"] = n - n // 10
        result["burst_s"] = done - started
        result["expiries_per_s"] = (n - n // 10) / (done - started)
    finally:
        worker.terminate()
        try:
            worker.wait(60)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait(10)
            print(f"worker did not stop on SIGTERM; see {log_path}", file=sys.stderr)
    result["baseline_per_s"] = baseline(bootstrap, test_url, n - n // 10)
    result["track_baseline_per_s"] = tracking_baseline(bootstrap, test_url, n)
    return result


def tracking_baseline(bootstrap: str, registry_url: str, n: int) -> float:
    """Tracking's ceiling here: a plain consumer reads the same log-store records (written
    meanwhile, as in the job's run), decodes each with the same projection and writes what
    the job writes per tracked record, an audit record and a state changelog row (acks=all,
    no transaction, no state). Same run, same broker."""
    base_topics = Topology(f"bench-track{uuid.uuid4().hex[:6]}.")
    admin = AdminClient({"bootstrap.servers": bootstrap})
    ensure_topics(admin, base_topics)
    contracts = Contracts(registry_client(registry_url), base_topics)
    codec = contracts.codec("log_store")
    projection = codec.projection(TRACKED_FIELDS)
    audit_codec = contracts.codec("audit")
    values = [
        (rid, codec.encode(log_record(rid, T0 + i % 1000)))
        for i in range(n)
        for rid in (f"req-{uuid.UUID(int=i).hex}",)
    ]
    changelog = base_topics.prefix + "changelog"
    admin.create_topics([NewTopic(changelog, PARTITIONS, 1)])[changelog].result(30)

    def feed() -> None:
        feeder = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20})
        for rid, value in values:
            _produce(feeder, base_topics.log_store, rid, value)
        feeder.flush(120)

    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"bench-{uuid.uuid4()}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([base_topics.log_store])
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5, "acks": "all"})
    feeding = threading.Thread(target=feed)
    started = time.perf_counter()
    feeding.start()
    seen = 0
    while seen < n:
        for message in consumer.consume(5000, 0.5):
            if message.error() is not None or message.value() is None:
                continue
            record = projection.decode(message.value())
            rid = record["request_id"]
            row = (
                record["org_id"],
                record["api_key_id"],
                record["created_at_ms"],
                record["retention_days"],
                message.offset(),
                (),
                record["consent_version"],
                0,
            )
            _produce(
                producer, changelog, b"r" + rid.encode(), marshal.dumps(row), message.partition()
            )
            audit = audit_record(
                job="bench",
                source=Source(base_topics.log_store, message.partition(), message.offset()),
                subject_id=rid,
                subject_kind="log_record",
                org_id=record["org_id"],
                routes=["retained"],
                rule_ids=["R4"],
                reasons=[f"R4: retained until {record['created_at_ms'] + 30 * DAY_MS}"],
                consent_version=record["consent_version"],
                policy_version="bench",
                decided_at_ms=T0,
            )
            _produce(producer, base_topics.audit, rid, audit_codec.encode(audit))
            seen += 1
    producer.flush(120)
    elapsed = time.perf_counter() - started
    feeding.join()
    consumer.close()
    return n / elapsed


def _produce(
    producer: Producer, topic: str, key: str | bytes, value: bytes | None, partition: int = -1
) -> None:
    while True:
        try:
            producer.produce(topic, key=key, value=value, partition=partition)
            return
        except BufferError:
            producer.poll(0.05)


def baseline(bootstrap: str, registry_url: str, n: int) -> float:
    """The same output records written by a plain producer (acks=all), same run."""
    base_topics = Topology(f"bench-base{uuid.uuid4().hex[:6]}.")
    ensure_topics(AdminClient({"bootstrap.servers": bootstrap}), base_topics)
    base_contracts = Contracts(registry_client(registry_url), base_topics)
    deletion_codec = base_contracts.codec("deletion_events")
    audit_codec = base_contracts.codec("audit")
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5, "acks": "all"})

    def produce(topic: str, key: str, value: bytes | None, partition: int = -1) -> None:
        _produce(producer, topic, key, value, partition)

    started = time.perf_counter()
    for i in range(n):
        rid = f"req-{uuid.UUID(int=i).hex}"
        produce(base_topics.log_store, rid, None, partition_for(rid, PARTITIONS))
        event = {
            "request_id": rid,
            "org_id": "org-1",
            "reason": "EXPIRED",
            "rule_ids": ["R4"],
            "deleted_at_ms": T0,
            "policy_version": "bench",
        }
        produce(base_topics.deletion_events, rid, deletion_codec.encode(event))
        audit = audit_record(
            job="bench",
            source=Source(base_topics.log_store, i % PARTITIONS, i),
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
        produce(base_topics.audit, rid, audit_codec.encode(audit))
    producer.flush(120)
    return n / (time.perf_counter() - started)


def start_worker(env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "streams.cli", "run", "retention"],
        env=env,
        stdout=open(log_path, "ab"),  # noqa: SIM115
        stderr=subprocess.STDOUT,
    )


def _tail(path: Path) -> str:
    return path.read_text(errors="replace")


def wait_for_log(path: Path, text: str, times: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if path.exists() and path.read_text(errors="replace").count(text) >= times:
            return
        time.sleep(0.1)
    raise TimeoutError(f"worker did not log {text!r} {times} times; see {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tracked", type=int, default=10_000_000)
    parser.add_argument("--baseline", type=int, default=1_000_000)
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument(
        "--tick-limit",
        type=int,
        default=20_000,
        help="the worker's deletions per partition and turn",
    )
    parser.add_argument("--skip-state", action="store_true")
    parser.add_argument("--skip-real", action="store_true")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="retention-bench-"))
    if not args.skip_state:
        # The disk first: the baseline's memory is not all given back to the system.
        disk = state(args.tracked, disk=True, tmp=tmp)
        gc.collect()
        mem = state(args.baseline, disk=False, tmp=tmp)
        print(f"job state, {disk['records']:,.0f} tracked records on disk (RocksDB)")
        print(f"  tracking               {disk['track_per_s']:10,.0f} records/s")
        print(f"  process RSS            {disk['rss_mb']:10,.0f} MB (end {disk['rss_end_mb']:.0f})")
        print(f"  disk, indexes included {disk['disk_per_record']:10.0f} B per tracked record")
        print(f"  org-wide flag finds    {disk['org_scan_s']:10.3f} s (1 in {ORGS:,} records)")
        print(f"  account deletion       {disk['account_deletion_s']:10.3f} s (found + made due)")
        print(
            f"  a tenth due at once    {disk['expiries_per_s']:10,.0f} deletions/s"
            f" ({disk['expiries']:,.0f})"
        )
        print(f"baseline: the same code in memory, {mem['records']:,.0f} records")
        print(f"  tracking               {mem['track_per_s']:10,.0f} records/s")
        print(f"  RSS growth             {mem['rss_growth_per_record']:10.0f} B per record")
        print(f"  a tenth due at once    {mem['expiries_per_s']:10,.0f} deletions/s")
        print(
            f"  ratios disk/memory: tracking {disk['track_per_s'] / mem['track_per_s']:.2f},"
            f" expiry {disk['expiries_per_s'] / mem['expiries_per_s']:.2f}"
        )
    if args.skip_real:
        return
    with ExitStack() as stack:
        bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
        if not bootstrap:
            from streams.infra.broker import LocalKafka

            bootstrap = stack.enter_context(LocalKafka()).bootstrap_servers
        r = real(
            bootstrap, os.environ.get("SCHEMA_REGISTRY_URL"), args.records, tmp, args.tick_limit
        )
    print(f"real job (worker process, local broker), {r['records']:,.0f} records")
    print(f"  tracking (log store -> audit) {r['track_per_s']:10,.0f} records/s")
    print(
        f"  baseline plain consume+produce {r['track_baseline_per_s']:9,.0f} records/s"
        f" (decode, audit + changelog row each): ratio"
        f" {r['track_per_s'] / r['track_baseline_per_s']:.2f}"
    )
    print(
        f"  worker RSS                    {r['worker_rss_mb']:10,.0f} MB"
        f" ({r['worker_rss_growth_per_record']:.0f} B per tracked record)"
    )
    print(f"  disk                          {r['disk_per_record']:10.0f} B per tracked record")
    print(f"  restart after SIGKILL, disk   {r['warm_first_expiry_s']:10.1f} s to the first expiry")
    print(
        f"  restart, disk lost            {r['cold_restore_s']:10.1f} s to restore"
        f" ({r['cold_replayed']:,.0f} changelog records)"
    )
    print(
        f"  {r['burst']:,.0f} due at once          {r['burst_s']:10.1f} s:"
        f" {r['expiries_per_s']:,.0f} expiries/s"
    )
    print(
        f"  baseline plain produce        {r['baseline_per_s']:10,.0f} expiries/s"
        " (tombstone + deletion event + audit each)"
    )
    print(f"  ratio job / baseline          {r['expiries_per_s'] / r['baseline_per_s']:.2f}")
    shutil.rmtree(tmp / "state", ignore_errors=True)
    print(f"  the worker's log: {tmp / 'worker.log'}")


if __name__ == "__main__":
    main()
