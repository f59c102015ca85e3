"""``make demo``: every job end to end on an embedded broker and registry.

Starts the project's own Kafka (KRaft) and schema registry (or uses
``KAFKA_BOOTSTRAP_SERVERS``/``SCHEMA_REGISTRY_URL``), creates the topics, runs
the router, retention, usage and safety-evaluation jobs as worker processes,
generates a realistic mix of traffic with control changes, a misuse flag, a
legal hold and an account deletion, moves the retention clock 31 days forward,
and prints where every record went, with the rules that sent it there, and the
verdict of the leak-canary check.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient

from streams.jobs.processes import Cluster, running
from streams.kafka.clients import client_config, producer_config
from streams.kafka.compacted import read_topic
from streams.kafka.serde import Contracts, DecodeError, registry_client
from streams.kafka.topics import Topology, ensure_topics, key_for
from streams.policy.config import PolicyConfig
from streams.policy.models import DAY_MS
from streams.traffic import TrafficGenerator, TrafficMix
from streams.verify import verify

REQUESTS = 5_000
FLAGGED, HELD, DELETED, CONTRACT, LATE = "org-0097", "org-0096", "org-0098", "org-0095", "org-0099"


def _step(message: str) -> Callable[..., None]:
    started = time.monotonic()
    print(f"  {message} ...", end="", flush=True)

    def done(detail: str = "") -> None:
        print(f" done in {time.monotonic() - started:.1f}s{' ' + detail if detail else ''}")

    return done


def _change(org: str, cid: str, effective: int, **fields: Any) -> dict[str, Any]:
    record: dict[str, Any] = {
        "change_id": cid,
        "org_id": org,
        "effective_at_ms": effective,
        "consent_version": cid,
        "prompts_generations_training": None,
        "finetune_training": None,
        "zero_data_retention": None,
        "retention_days": None,
        "training_exclusion": None,
        "paying_customer": None,
    }
    record.update(fields)
    return record


class Demo:
    def __init__(self, bootstrap: str, registry_url: str, work_dir: Path) -> None:
        self.config = PolicyConfig()
        self.topology = Topology(f"demo{uuid.uuid4().hex[:6]}.")
        self.cluster = Cluster(bootstrap, registry_url, self.topology, work_dir / "logs")
        self.work_dir = work_dir
        self.contracts = Contracts(registry_client(registry_url), self.topology)
        self.producer = Producer(producer_config(bootstrap, {"linger.ms": 10}))
        self.now = int(time.time() * 1000)
        self.start = self.now - 2 * 3_600_000
        self.clock_file = work_dir / "retention-clock"
        self.clock_file.write_text(str(self.now))

    @property
    def bootstrap(self) -> str:
        return self.cluster.bootstrap

    def produce(self, field: str, record: dict[str, Any]) -> None:
        value = self.contracts.codec(field).encode(record)
        self.producer.produce(
            getattr(self.topology, field), key=key_for(field, record), value=value
        )

    def count(self, field: str) -> int:
        return sum(1 for _ in read_topic(self.bootstrap, getattr(self.topology, field), 0.5))

    def decoded(self, field: str) -> list[dict[str, Any]]:
        codec = self.contracts.codec(field)
        out = []
        for _, value, _, _ in read_topic(self.bootstrap, getattr(self.topology, field), 0.5):
            if value is not None:
                try:
                    out.append(codec.decode(value))
                except DecodeError:
                    continue
        return out

    def setup(self) -> None:
        done = _step("creating topics and registering contracts")
        ensure_topics(AdminClient(client_config(self.bootstrap)), self.topology)
        done(f"({len(self.contracts.register_all())} subjects)")

    def traffic(self) -> None:
        done = _step(f"generating {REQUESTS:,} requests with control changes, flag, hold, deletion")
        start = self.start
        traffic = TrafficGenerator(TrafficMix(orgs=100), seed=42, start_ms=start)
        for change in traffic.control_changes():
            self.produce("data_controls", change)
        # R12: opted out, then opted in half-way; only later requests may be candidates.
        self.produce(
            "data_controls",
            _change(LATE, "opt-out-1", start - DAY_MS, prompts_generations_training=False),
        )
        self.produce(
            "data_controls",
            _change(LATE, "opt-in-2", start + 3_600_000, prompts_generations_training=True),
        )
        # R7: a contract keeps this org's logs 90 days.
        self.produce(
            "data_controls", _change(CONTRACT, "contract-90", start - DAY_MS, retention_days=90)
        )
        self.produce(
            "account_deletions",
            {"deletion_id": "del-1", "org_id": DELETED, "requested_at_ms": start},
        )
        self.produce(
            "misuse_flags",
            {
                "flag_id": "flag-1",
                "action": "RAISE",
                "scope": "ORG",
                "org_id": FLAGGED,
                "request_id": None,
                "api_key_id": None,
                "window_start_ms": start,
                "window_end_ms": self.now,
                "reason": "suspected abuse",
                "at_ms": self.now,
            },
        )
        self.produce(
            "legal_holds",
            {
                "hold_id": "hold-1",
                "action": "PLACE",
                "org_id": HELD,
                "window_start_ms": start,
                "window_end_ms": self.now,
                "matter": "litigation-42",
                "at_ms": self.now,
            },
        )
        self.producer.flush(30)
        for i in range(REQUESTS):
            self.produce("request_logs", traffic.request(start + i * 1_000))
            if i % 1000 == 0:
                self.producer.poll(0)
        self.produce("controls_watermark", {"watermark_ms": self.now, "published_at_ms": self.now})
        self.producer.flush(60)
        done()

    def wait_for(self, what: str, field: str, target: Callable[[], int], limit_s: float) -> int:
        done = _step(what)
        deadline = time.monotonic() + limit_s
        count = 0
        while time.monotonic() < deadline:
            count = self.count(field)
            print(f" {count:,}", end="", flush=True)
            if count >= target():
                break
            time.sleep(2)
        done()
        return count

    def run(self) -> int:
        self.setup()
        self.traffic()
        env = {
            "STREAMS_CLOCK_FILE": str(self.clock_file),
            "STREAMS_STATE_DIR": str(self.work_dir / "state"),
        }
        with running(
            self.cluster, "router", "retention", "usage", "safety-evaluation", extra_env=env
        ):
            self.wait_for(
                "router: routing every request exactly once", "audit", lambda: REQUESTS, 90
            )
            logged = self.count("log_store")
            self.wait_for(
                "retention: safety review of the flagged org's logs (R5)",
                "safety_review",
                lambda: 1,
                30,
            )
            done = _step("advancing the retention clock by 31 days")
            self.clock_file.write_text(str(self.now + 31 * DAY_MS))
            done()
            held = sum(1 for r in self.decoded("log_store") if r["org_id"] in (FLAGGED, HELD))
            contract = sum(1 for r in self.decoded("log_store") if r["org_id"] == CONTRACT)
            self.wait_for(
                "retention: expiring what is due (R4), keeping what is held (R5/R6/R7)",
                "deletion_events",
                lambda: logged - held - contract,
                60,
            )
            self.wait_for("usage: hourly metrics (R3)", "usage_metrics", lambda: 1, 30)
            self.wait_for(
                "safety evaluation: de-identified records (R8)", "safety_evaluation", lambda: 1, 30
            )
            print(self.summary())
            done = _step("leak-canary check through the running jobs")
            report = verify(
                self.bootstrap,
                self.config,
                self.contracts,
                int(time.time() * 1000),
                scan_paths=[self.cluster.log_dir, self.work_dir / "state"],
            )
            done()
        print()
        print(report.render())
        return 0 if report.ok else 1

    def summary(self) -> str:
        routes: Counter[tuple[str, str, str]] = Counter()
        for record in self.decoded("audit"):
            routes[
                (record["job"], " + ".join(record["routes"]), ", ".join(record["rule_ids"]))
            ] += 1
        lines = ["", "Decisions, from the audit topic (R16):", ""]
        lines.append(f"  {'records':>8}  {'job':<10} {'routes':<40}  rules")
        for (job, route, rules), count in sorted(routes.items(), key=lambda kv: (kv[0][0], -kv[1])):
            lines.append(f"  {count:>8,}  {job:<10} {route:<40}  {rules}")
        reasons = Counter(e["reason"] for e in self.decoded("deletion_events"))
        lines += [
            "",
            "Deletion events (R4/R15): "
            + (", ".join(f"{n:,} {reason}" for reason, n in reasons.most_common()) or "none"),
        ]
        lines += ["", "Records per topic:"]
        for field in (
            "log_store",
            "training_candidates",
            "usage_events",
            "usage_metrics",
            "safety_review",
            "safety_evaluation",
            "deletion_events",
            "audit",
            "dead_letters",
        ):
            topic = getattr(self.topology, field)
            lines.append(f"  {topic:<44} {self.count(field):>8,}")
        return "\n".join(lines)


def run_demo() -> int:
    started = time.monotonic()
    print("privacy-streams demo: every job end to end on a local broker")
    with ExitStack() as stack:
        bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
        registry_url = os.environ.get("SCHEMA_REGISTRY_URL")
        if not bootstrap:
            from streams.infra.broker import LocalKafka

            done = _step("starting Apache Kafka (KRaft) on loopback")
            bootstrap = stack.enter_context(LocalKafka()).bootstrap_servers
            done(f"at {bootstrap}")
        if not registry_url:
            from streams.infra.registry import LocalSchemaRegistry

            done = _step("starting the schema registry")
            registry_url = stack.enter_context(LocalSchemaRegistry()).url
            done(f"at {registry_url}")
        work_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="demo-")))
        status = Demo(bootstrap, registry_url, work_dir).run()
    print(f"\ndemo finished in {time.monotonic() - started:.0f}s")
    return status


if __name__ == "__main__":
    sys.exit(run_demo())
