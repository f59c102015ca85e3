"""How long "why did this request go there?" takes, at N audited requests (R16).

Writes N audit records (one per request, keyed by request id, as the router writes them)
to a fresh audit topic on the local broker, starts the audit index (faust, on-disk store,
web views) and waits until it has indexed them all. It then asks about random request ids
three ways, in the same run:

* the explain service, ``GET /explain/<id>``;
* without the service, reading only the audit partition the key hashes to;
* the way ``streams explain`` used to do it: reading the whole audit topic (baseline).

It prints p50/p99 per way, and the indexing rate and the index's disk use.

    .venv/bin/python benchmarks/explain_bench.py [--records 1000000] [--asks 200]
        [--scans 5]

Not a test: the machine is noisy, so read the medians and the ratios.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import ExitStack
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from confluent_kafka import Producer  # noqa: E402
from confluent_kafka.admin import AdminClient  # noqa: E402

from streams.infra.broker import free_port  # noqa: E402
from streams.infra.stack import broker_and_registry  # noqa: E402
from streams.jobs.audit_index import ask_service, explanation, merge, scan_for  # noqa: E402
from streams.kafka.compacted import read_topic  # noqa: E402
from streams.kafka.serde import Contracts, registry_client  # noqa: E402
from streams.kafka.topics import Topology, ensure_topics  # noqa: E402
from streams.policy.audit import Source, audit_record  # noqa: E402


def percentiles(samples: list[float]) -> str:
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return f"p50 {statistics.median(ordered) * 1000:9.1f} ms   p99 {p99 * 1000:9.1f} ms"


def write_audit(bootstrap: str, contracts: Contracts, topic: str, n: int) -> None:
    codec = contracts.codec("audit")
    producer = Producer(
        {"bootstrap.servers": bootstrap, "linger.ms": 20, "compression.type": "lz4"}
    )
    now = int(time.time() * 1000)
    for i in range(n):
        rid = f"req-{i:09d}"
        record = audit_record(
            job="router",
            source=Source("request-logs", i % 6, i),
            subject_id=rid,
            subject_kind="request",
            org_id=f"org-{i % 500:04d}",
            routes=("usage", "log_store", "training_candidate"),
            rule_ids=("R3", "R4", "R9", "R11", "R12"),
            reasons=("R9: training candidate under consent default",),
            consent_version="default",
            policy_version="bench",
            decided_at_ms=now + i,
        )
        while True:
            try:
                producer.produce(topic, key=rid, value=codec.encode(record))
                break
            except BufferError:
                producer.poll(0.05)
    assert producer.flush(120) == 0


def full_scan(bootstrap: str, contracts: Contracts, topic: str, rid: str) -> dict[str, object]:
    """The old ``streams explain``: every record of the audit topic from offset 0."""
    codec = contracts.codec("audit")
    stored = None
    for key, value, _, _ in read_topic(bootstrap, topic, idle_timeout_s=1.0):
        if key == rid.encode() and value is not None:
            stored = merge(stored, codec.decode(value))
    return explanation(rid, stored)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=1_000_000, help="audited requests")
    parser.add_argument("--asks", type=int, default=200, help="questions to the service")
    parser.add_argument("--scans", type=int, default=5, help="questions answered by scans")
    args = parser.parse_args()
    with ExitStack() as stack, tempfile.TemporaryDirectory() as tmp:
        bootstrap, registry_url = broker_and_registry(stack)
        config = Topology(f"x{uuid.uuid4().hex[:6]}.")
        ensure_topics(AdminClient({"bootstrap.servers": bootstrap}), config)
        contracts = Contracts(registry_client(registry_url), config)
        contracts.register_all()
        topic = config.audit
        started = time.monotonic()
        write_audit(bootstrap, contracts, topic, args.records)
        print(f"wrote {args.records:,} audit records in {time.monotonic() - started:.1f}s")
        port = free_port()
        env = {
            **os.environ,
            "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            "SCHEMA_REGISTRY_URL": registry_url,
            "STREAMS_TOPIC_PREFIX": config.prefix,
            "STREAMS_STATE_DIR": str(Path(tmp) / "index"),
        }
        with open(Path(tmp) / "index.log", "wb") as log:
            index = subprocess.Popen(
                [sys.executable, "-m", "streams.jobs.audit_index", "--port", str(port)],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        base = f"http://127.0.0.1:{port}"
        last = f"req-{args.records - 1:09d}"
        try:
            started = time.monotonic()
            while True:
                try:
                    if all(
                        ask_service(base, f"req-{i:09d}")["found"]
                        for i in (0, args.records // 2, args.records - 1)
                    ):
                        break
                except OSError:
                    pass
                time.sleep(1.0)
            took = time.monotonic() - started
            print(f"indexed {args.records:,} in {took:.0f}s ({args.records / took:,.0f}/s)")
            ids = [f"req-{random.randrange(args.records):09d}" for _ in range(args.asks)]
            service = []
            for rid in ids:
                t = time.perf_counter()
                assert ask_service(base, rid)["found"]
                service.append(time.perf_counter() - t)
            partition = []
            for rid in ids[: args.scans * 4]:
                t = time.perf_counter()
                assert scan_for(rid, bootstrap, registry_url, config)["found"]
                partition.append(time.perf_counter() - t)
            full = []
            for rid in ids[: args.scans]:
                t = time.perf_counter()
                assert full_scan(bootstrap, contracts, topic, rid)["found"]
                full.append(time.perf_counter() - t)
            disk = sum(f.stat().st_size for f in (Path(tmp) / "index").rglob("*") if f.is_file())
            print(f"at {args.records:,} audited requests ({last} the newest):")
            print(f"  explain service     {percentiles(service)}   ({len(service)} asks)")
            print(f"  key's partition     {percentiles(partition)}   ({len(partition)} asks)")
            print(f"  whole topic (old)   {percentiles(full)}   ({len(full)} asks)")
            ratio = statistics.median(full) / statistics.median(service)
            print(
                f"  median ratio old/service {ratio:,.0f}x;"
                f" index on disk {disk / args.records:.0f} B per request"
            )
        finally:
            index.terminate()
            index.wait(60)


if __name__ == "__main__":
    main()
