"""Router throughput on the real local broker, against a passthrough baseline from the same run.

Generated traffic (prompts ~500 chars, generations ~800, 10% ZDR orgs, 20%
opted out, 5% Drive connector) is written once; then, alternately, a plain
consume -> decode -> encode -> produce passthrough (same client, same
transactional loop, same Avro codec) and one router worker read all of it.
The router worker is one consumer-group member; its training candidates are
redacted and encoded in its offload processes (STREAMS_REDACTION_PROCESSES,
default one per core but one). Prints records/second per run, medians, the
router/passthrough ratio, and CPU per record of the worker process, its offload
processes and the broker (on a 2-core machine they all share the same cores).

    .venv/bin/python benchmarks/router_bench.py [--records 200000] [--rounds 3]
        [--redaction-processes 1,2]   # compare offload process counts in the same run
        [--unseen-text]               # every prompt and generation new to the redactor

Not a test: the machine is noisy, so read the medians and the ratio.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import time
import uuid
from contextlib import ExitStack
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from confluent_kafka import Message, Producer  # noqa: E402
from confluent_kafka.admin import AdminClient, NewTopic  # noqa: E402

from streams.infra.stack import broker_and_registry  # noqa: E402
from streams.jobs.router import build_router_loop, default_redaction_processes  # noqa: E402
from streams.kafka.serde import Contracts, registry_client  # noqa: E402
from streams.kafka.topics import Topology, ensure_topics, key_for  # noqa: E402
from streams.kafka.transactional import LoopConfig, Output, TransactionalLoop  # noqa: E402
from streams.settings import Settings  # noqa: E402
from streams.traffic import TrafficGenerator, unseen_text_corpus  # noqa: E402


class Timed:
    """Wraps a processor; records when the first and last record were handled."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.count = 0
        self.first = 0.0
        self.last = 0.0

    def refresh(self) -> list[Output]:
        return list(self.inner.refresh())

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)  # the rest of the runtime's processor

    def process(self, message: Message) -> list[Output] | None:
        if not self.count:
            self.first = time.perf_counter()
        result = self.inner.process(message)
        if result is not None:
            self.count += 1
            self.last = time.perf_counter()
        return result

    def rate(self) -> float:
        return self.count / (self.last - self.first) if self.last > self.first else 0.0


class Passthrough:
    def __init__(self, contracts: Contracts, out_topic: str) -> None:
        self.codec = contracts.codec("request_logs")
        self.out_topic = out_topic

    def refresh(self) -> list[Output]:
        return []

    def process(self, message: Message) -> list[Output]:
        record = self.codec.decode(message.value())
        return [Output(self.out_topic, message.key(), self.codec.encode(record))]


def broker_cpu_s() -> float:
    """CPU seconds used so far by a local Kafka broker process, 0 if none is visible."""
    total = 0.0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if b"kafka.Kafka" not in Path(f"/proc/{pid}/cmdline").read_bytes():
                continue
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def run(
    loop: TransactionalLoop, timed: Timed, records: int, timeout_s: float
) -> tuple[float, dict[str, float]]:
    """Records/second, and CPU µs per record of this process (the worker, with its client
    threads), of its offload processes and of the broker, over the whole run."""
    deadline = time.monotonic() + timeout_s
    own, children = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    broker = broker_cpu_s()
    main_thread = time.thread_time()
    loop.run(until=lambda: timed.count >= records or time.monotonic() > deadline)
    if timed.count < records:
        print(f"  warning: only {timed.count}/{records} records in {timeout_s}s")
    main_thread = time.thread_time() - main_thread
    own_after = resource.getrusage(resource.RUSAGE_SELF)
    children_after = resource.getrusage(resource.RUSAGE_CHILDREN)  # offload workers, closed
    per_record = 1e6 / max(timed.count, 1)
    cpu = {
        # the worker's Python thread, then its client threads (librdkafka): the first is
        # bound to one core, so it caps the rate whatever the other cores do
        "worker main thread": main_thread,
        "worker client threads": (
            own_after.ru_utime + own_after.ru_stime - own.ru_utime - own.ru_stime - main_thread
        ),
        "offload": (
            children_after.ru_utime
            + children_after.ru_stime
            - children.ru_utime
            - children.ru_stime
        ),
        "broker": broker_cpu_s() - broker,
    }
    return timed.rate(), {k: v * per_record for k, v in cpu.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--redaction-processes",
        type=lambda text: [int(n) for n in text.split(",")],
        help="offload process counts to compare in each round, e.g. 1,2 "
        "(default: the router's default)",
    )
    parser.add_argument(
        "--unseen-text",
        action="store_true",
        help="prompts and generations from the standard library's sources, every one new, "
        "instead of 64 generated texts (the redactor then pays for text it has not seen)",
    )
    args = parser.parse_args()

    with ExitStack() as stack:
        # Every client lives in measure(): gone before the broker stops, so none of them
        # reports a refused connection at the end.
        measure(*broker_and_registry(stack), args)


def measure(bootstrap: str, registry_url: str, args: argparse.Namespace) -> None:
    topology = Topology(f"bench{uuid.uuid4().hex[:6]}.")
    admin = AdminClient({"bootstrap.servers": bootstrap})
    ensure_topics(admin, topology)
    passthrough_topic = topology.request_logs + ".passthrough"
    admin.create_topics([NewTopic(passthrough_topic, 6, 1)])["" + passthrough_topic].result()
    contracts = Contracts(registry_client(registry_url), topology)
    contracts.register_all()

    now = int(time.time() * 1000)
    corpus = unseen_text_corpus() if args.unseen_text else None
    traffic = TrafficGenerator(start_ms=now - 3_600_000, corpus=corpus)
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "linger.ms": 20,
            "compression.type": "lz4",
            "batch.num.messages": 10_000,
        }
    )
    controls = contracts.codec("data_controls")
    for change in traffic.control_changes():
        producer.produce(
            topology.data_controls,
            key=key_for("data_controls", change),
            value=controls.encode(change),
        )
    wm = contracts.codec("controls_watermark").encode({"watermark_ms": now, "published_at_ms": now})
    producer.produce(topology.controls_watermark, key="watermark", value=wm)
    codec = contracts.codec("request_logs")
    t0 = time.perf_counter()
    for i in range(args.records):
        r = traffic.request(now - 3_600_000 + i)
        while True:
            try:
                producer.produce(topology.request_logs, key=r["request_id"], value=codec.encode(r))
                break
            except BufferError:
                producer.poll(0.1)
    producer.flush(120)
    print(
        f"wrote {args.records} request logs in {time.perf_counter() - t0:.1f}s "
        f"({sys.getsizeof(codec.encode(r))} bytes each, approx.)"
    )

    settings = args.redaction_processes or [default_redaction_processes()]
    base_rates: list[float] = []
    router_rates: dict[int, list[float]] = {n: [] for n in settings}
    cpu_rows: list[str] = []
    timeout = max(120.0, args.records / 2000)
    for round_ in range(args.rounds):
        group = f"{topology.request_logs}.pass{round_}"
        timed = Timed(Passthrough(contracts, passthrough_topic))
        loop = TransactionalLoop(
            LoopConfig(bootstrap, group, f"{group}-0", [topology.request_logs]), timed
        )
        rate, cpu = run(loop, timed, args.records, timeout)
        base_rates.append(rate)
        cpu_rows.append(_cpu_row("passthrough", cpu))
        line = f"round {round_ + 1}: passthrough {rate:,.0f} rec/s"
        for processes in settings:
            loop, router = build_router_loop(
                Settings(bootstrap, registry_url, topology=topology),
                group_id=f"{topology.request_logs}.router{round_}.{processes}",
                redaction_processes=processes,
            )
            timed = Timed(loop.processor)
            loop.processor = timed
            rate, cpu = run(loop, timed, args.records, timeout)
            router_rates[processes].append(rate)
            cpu_rows.append(_cpu_row(f"router/{processes}", cpu))
            line += f", router/{processes} {rate:,.0f} rec/s (ratio {rate / base_rates[-1]:.2f})"
            if round_ == 0 and processes == settings[0]:
                print(f"  router routes: {dict(router.stats)}")
        print(line)

    base = statistics.median(base_rates)
    print()
    print(f"records per run            {args.records:,}")
    print(f"passthrough median         {base:,.0f} records/s (one worker)")
    for processes, rates in router_rates.items():
        routed = statistics.median(rates)
        print(
            f"router median              {routed:,.0f} records/s (one worker, "
            f"{processes} offload processes)"
        )
        print(f"ratio router/passthrough   {routed / base:.2f}")
    print(f"batch {LoopConfig('', '', '', []).batch_size} records per transaction")
    print("CPU µs per record over each run (whole run, incl. start-up and group join):")
    for row in cpu_rows:
        print("  " + row)


def _cpu_row(name: str, cpu: dict[str, float]) -> str:
    parts = ", ".join(f"{k} {v:.0f}" for k, v in cpu.items())
    return f"{name:12} {parts}, total {sum(cpu.values()):.0f}"


if __name__ == "__main__":
    main()
