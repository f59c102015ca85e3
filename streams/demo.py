"""``make demo``: the whole pipeline end to end on an embedded broker and registry.

Starts the project's own Kafka (KRaft) and schema registry (or uses
``KAFKA_BOOTSTRAP_SERVERS``/``SCHEMA_REGISTRY_URL``), creates the topics,
generates a realistic mix of traffic with control changes, runs the jobs and
prints where every record went and which rules sent it there.
"""

from __future__ import annotations

import os
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from contextlib import ExitStack
from typing import Any

from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient

from streams.jobs.router import build_router_loop
from streams.kafka.compacted import read_topic
from streams.kafka.serde import Contracts, DecodeError, registry_client
from streams.kafka.topics import ensure_topics, key_for
from streams.policy.config import PolicyConfig
from streams.policy.models import DAY_MS
from streams.traffic import TrafficGenerator, TrafficMix
from streams.verify import verify

REQUESTS = 5_000


def _step(message: str) -> Callable[..., None]:
    started = time.monotonic()
    print(f"  {message} ...", end="", flush=True)

    def done(detail: str = "") -> None:
        print(f" done in {time.monotonic() - started:.1f}s{' ' + detail if detail else ''}")

    return done


class Demo:
    def __init__(self, bootstrap: str, registry_url: str) -> None:
        self.bootstrap = bootstrap
        self.registry_url = registry_url
        self.config = PolicyConfig().with_topics_prefix(f"demo{uuid.uuid4().hex[:6]}.")
        self.contracts = Contracts(registry_client(registry_url), self.config.topics)
        self.producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 10})
        self.now = int(time.time() * 1000)

    def produce(self, field: str, record: dict[str, Any]) -> None:
        topic = getattr(self.config.topics, field)
        value = self.contracts.codec(field).encode(record)
        self.producer.produce(topic, key=key_for(field, record), value=value)

    def setup(self) -> None:
        done = _step("creating topics and registering contracts")
        ensure_topics(AdminClient({"bootstrap.servers": self.bootstrap}), self.config.topics)
        ids = self.contracts.register_all()
        done(f"({len(ids)} subjects)")

    def traffic(self) -> None:
        done = _step(f"generating {REQUESTS:,} requests, control changes, flags and a deletion")
        start = self.now - 2 * 3_600_000
        traffic = TrafficGenerator(TrafficMix(orgs=100), seed=42, start_ms=start)
        for change in traffic.control_changes():
            self.produce("data_controls", change)
        # An org that opts in half-way: requests before the opt-in never become candidates (R12).
        self.produce(
            "data_controls",
            {
                "change_id": "late-opt-in",
                "org_id": "org-0099",
                "effective_at_ms": start + 3_600_000,
                "consent_version": "opt-in-2",
                "prompts_generations_training": True,
                "finetune_training": True,
                "zero_data_retention": None,
                "retention_days": None,
                "training_exclusion": None,
                "paying_customer": None,
            },
        )
        self.produce(
            "data_controls",
            {
                "change_id": "opt-out-first",
                "org_id": "org-0099",
                "effective_at_ms": start - DAY_MS,
                "consent_version": "opt-out-1",
                "prompts_generations_training": False,
                "finetune_training": False,
                "zero_data_retention": None,
                "retention_days": None,
                "training_exclusion": None,
                "paying_customer": None,
            },
        )
        self.produce(
            "account_deletions",
            {"deletion_id": "del-1", "org_id": "org-0098", "requested_at_ms": start},
        )
        self.produce(
            "misuse_flags",
            {
                "flag_id": "flag-1",
                "action": "RAISE",
                "scope": "ORG",
                "org_id": "org-0097",
                "request_id": None,
                "api_key_id": None,
                "window_start_ms": start,
                "window_end_ms": self.now,
                "reason": "suspected abuse",
                "at_ms": self.now,
            },
        )
        self.producer.flush(30)
        for i in range(REQUESTS):
            self.produce("request_logs", traffic.request(start + i * 1_000))
            if i % 5000 == 0:
                self.producer.poll(0)
        self.produce("controls_watermark", {"watermark_ms": self.now, "published_at_ms": self.now})
        self.producer.flush(60)
        done()

    def run_router(self, expected: int = REQUESTS) -> dict[str, int]:
        done = _step("routing (router job, exactly-once transactions)")
        loop, router = build_router_loop(self.bootstrap, self.registry_url, self.config)
        deadline = time.monotonic() + 90
        thread = threading.Thread(
            target=loop.run,
            kwargs={
                "until": lambda: (
                    router.stats["decisions"] >= expected or time.monotonic() > deadline
                )
            },
        )
        thread.start()
        while thread.is_alive():
            thread.join(2)
            print(f" {router.stats['decisions']:,}", end="", flush=True)
        done()
        return dict(router.stats)

    def summary(self) -> str:
        audit = self.contracts.codec("audit")
        routes: Counter[tuple[str, str]] = Counter()
        for _, value, _, _ in read_topic(self.bootstrap, self.config.topics.audit):
            if value is None:
                continue
            try:
                record = audit.decode(value)
            except DecodeError:
                continue
            routes[(" + ".join(record["routes"]), ", ".join(record["rule_ids"]))] += 1
        lines = ["", "Where every request went (from the audit topic, R16):", ""]
        lines.append(f"  {'records':>8}  {'routes':<40}  rules")
        for (route, rules), count in routes.most_common():
            lines.append(f"  {count:>8,}  {route:<40}  {rules}")
        lines.append("")
        lines.append("Records per output topic:")
        for field in ("log_store", "training_candidates", "usage_events", "audit", "dead_letters"):
            topic = getattr(self.config.topics, field)
            count = sum(1 for _ in read_topic(self.bootstrap, topic, 1.0))
            lines.append(f"  {topic:<40} {count:>8,}")
        return "\n".join(lines)


def run_demo() -> int:
    print("privacy-streams demo: every job end to end on a local broker")
    with ExitStack() as stack:
        bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
        registry_url = os.environ.get("SCHEMA_REGISTRY_URL")
        if not bootstrap:
            from streams.infra.broker import LocalKafka

            done = _step("starting Apache Kafka (KRaft) on loopback")
            kafka = stack.enter_context(LocalKafka())
            bootstrap = kafka.bootstrap_servers
            done(f"at {bootstrap}")
        if not registry_url:
            from streams.infra.registry import LocalSchemaRegistry

            done = _step("starting the schema registry")
            registry_url = stack.enter_context(LocalSchemaRegistry()).url
            done(f"at {registry_url}")
        demo = Demo(bootstrap, registry_url)
        demo.setup()
        demo.traffic()
        demo.run_router()
        print(demo.summary())
        print()
        report = verify(
            bootstrap, demo.config, demo.contracts, demo.run_router, int(time.time() * 1000)
        )
        print(report.render())
        if not report.ok:
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(run_demo())
