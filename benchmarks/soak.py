"""A bounded soak of the router at a fixed rate, on loopback.

Produces request logs at ``--rate`` per second for ``--seconds`` while a
control-plane stand-in publishes the controls watermark every
``--watermark-interval`` seconds and one router worker runs. Reports, every
five seconds, the router group's consumer lag, and at the end the latency
percentiles from request creation to training-candidate visibility
(read_committed), split into the deliberate R12 watermark wait and the rest.

    .venv/bin/python benchmarks/soak.py [--rate 2000] [--seconds 120]

Not a test: bounded in time and count, loopback only.
"""

from __future__ import annotations

import argparse
import bisect
import statistics
import sys
import threading
import time
import uuid
from contextlib import ExitStack
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from confluent_kafka import Consumer, Producer, TopicPartition  # noqa: E402
from confluent_kafka.admin import AdminClient  # noqa: E402

from streams.infra.stack import broker_and_registry  # noqa: E402
from streams.jobs.router import build_router_loop  # noqa: E402
from streams.kafka.serde import Contracts, registry_client  # noqa: E402
from streams.kafka.topics import Topology, ensure_topics, key_for  # noqa: E402
from streams.settings import Settings  # noqa: E402
from streams.traffic import TrafficGenerator, TrafficMix  # noqa: E402


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=int, default=2000, help="requests per second")
    parser.add_argument("--seconds", type=int, default=120)
    parser.add_argument("--watermark-interval", type=float, default=1.0)
    args = parser.parse_args()

    with ExitStack() as stack:
        bootstrap, registry_url = broker_and_registry(stack)

        topology = Topology(f"soak{uuid.uuid4().hex[:6]}.")
        ensure_topics(AdminClient({"bootstrap.servers": bootstrap}), topology)
        contracts = Contracts(registry_client(registry_url), topology)
        contracts.register_all()
        traffic = TrafficGenerator(TrafficMix(orgs=200), seed=5, start_ms=now_ms())
        producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
        for change in traffic.control_changes():
            producer.produce(
                topology.data_controls,
                key=key_for("data_controls", change),
                value=contracts.codec("data_controls").encode(change),
            )
        producer.flush(30)

        stop = threading.Event()
        watermarks: list[tuple[int, float]] = []  # (watermark_ms, published wall time)

        def control_plane() -> None:
            codec = contracts.codec("controls_watermark")
            wm_producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 0})
            while not stop.is_set():
                mark = now_ms()
                wm_producer.produce(
                    topology.controls_watermark,
                    key="controls_watermark",
                    value=codec.encode({"watermark_ms": mark, "published_at_ms": mark}),
                )
                wm_producer.flush(5)
                watermarks.append((mark, time.time()))
                stop.wait(args.watermark_interval)

        def gateway() -> None:
            codec = contracts.codec("request_logs")
            interval = 1.0 / args.rate
            started = time.monotonic()
            for i in range(args.rate * args.seconds):
                target = started + i * interval
                delay = target - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                record = traffic.request(now_ms())
                producer.produce(
                    topology.request_logs, key=record["request_id"], value=codec.encode(record)
                )
                producer.poll(0)
            producer.flush(30)

        loop, router = build_router_loop(Settings(bootstrap, registry_url, topology=topology))
        total = args.rate * args.seconds
        threads = [
            threading.Thread(target=control_plane, daemon=True),
            threading.Thread(target=gateway, daemon=True),
            threading.Thread(
                target=loop.run,
                kwargs={"until": lambda: stop.is_set() or router.stats["decisions"] >= total},
                daemon=True,
            ),
        ]
        latencies: list[tuple[int, float]] = []  # (created_at_ms, visible wall time)

        def training() -> None:
            codec = contracts.codec("training_candidates")
            consumer = Consumer(
                {
                    "bootstrap.servers": bootstrap,
                    "group.id": f"soak-reader-{uuid.uuid4().hex[:6]}",
                    "isolation.level": "read_committed",
                    "auto.offset.reset": "earliest",
                }
            )
            consumer.subscribe([topology.training_candidates])
            while not stop.is_set():
                for message in consumer.consume(500, 0.2):
                    if message.error() is None and message.value() is not None:
                        created = codec.decode(message.value())["created_at_ms"]
                        latencies.append((created, time.time()))
            consumer.close()

        threads.append(threading.Thread(target=training, daemon=True))
        for thread in threads:
            thread.start()

        lag_admin = Consumer({"bootstrap.servers": bootstrap, "group.id": loop.config.group_id})
        parts = [TopicPartition(topology.request_logs, p) for p in range(6)]
        print(
            f"soak: {args.rate}/s for {args.seconds}s, watermark every {args.watermark_interval}s"
        )
        print(f"{'t (s)':>6} {'produced':>9} {'decided':>9} {'lag':>7}")
        started = time.monotonic()
        lags: list[int] = []
        while router.stats["decisions"] < total and time.monotonic() - started < args.seconds + 120:
            time.sleep(5)
            ends = sum(lag_admin.get_watermark_offsets(tp, timeout=5)[1] for tp in parts)
            committed = sum(max(tp.offset, 0) for tp in lag_admin.committed(parts, timeout=5))
            lags.append(ends - committed)
            print(
                f"{time.monotonic() - started:6.0f} {ends:9,} "
                f"{router.stats['decisions']:9,} {ends - committed:7,}",
                flush=True,
            )
        time.sleep(2)
        stop.set()
        for thread in threads:
            thread.join(10)
        lag_admin.close()

        marks = [m for m, _ in watermarks]
        waits, rest, total_latency = [], [], []
        for created, visible in latencies:
            index = bisect.bisect_left(marks, created)
            if index >= len(marks):
                continue
            covered_at = watermarks[index][1]
            waits.append(max(0.0, covered_at * 1000 - created))
            rest.append(max(0.0, (visible - covered_at) * 1000))
            total_latency.append(visible * 1000 - created)
        print()
        print(f"requests produced       {total:,}; decided {router.stats['decisions']:,}")
        print(f"training candidates     {len(latencies):,}")
        print(f"consumer lag            median {statistics.median(lags):,.0f}, max {max(lags):,}")
        print(
            f"latency excl. R12 wait  p50 {percentile(rest, 0.5):.0f} ms, "
            f"p99 {percentile(rest, 0.99):.0f} ms"
        )
        print(
            f"R12 watermark wait      p50 {percentile(waits, 0.5):.0f} ms, "
            f"p99 {percentile(waits, 0.99):.0f} ms"
        )
        print(
            f"end to end (both)       p50 {percentile(total_latency, 0.5):.0f} ms, "
            f"p99 {percentile(total_latency, 0.99):.0f} ms"
        )


if __name__ == "__main__":
    main()
