"""``streams verify``: inject canaries, then prove none of them reached a place it must not.

Each case is a request (or record) carrying a unique canary string in every
content field. After the jobs have run, every output topic, every dead letter,
the jobs' state directories and their log files are searched byte for byte.
The check fails, with a precise report, if a canary is anywhere it must never
be, or if an output that must exist (the log store copy of an opted-out
request, the redacted candidate of a default org) is missing.

Point it at another cluster with ``--bootstrap``/``--registry``; by default it
runs the router itself against the embedded broker.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from confluent_kafka import Producer

from streams.kafka.clients import producer_config
from streams.kafka.compacted import read_topic
from streams.kafka.serde import Contracts
from streams.kafka.topics import CATALOGUE, key_for
from streams.policy.config import PolicyConfig

# Topics a job writes to: where canaries are searched for.
OUTPUTS = tuple(
    spec.field
    for spec in CATALOGUE
    if spec.field
    not in {
        "request_logs",
        "finetune_rows",
        "data_controls",
        "controls_watermark",
        "misuse_flags",
        "legal_holds",
        "account_deletions",
    }
)
CONTENT_FREE = ("audit", "usage_events", "usage_metrics", "deletion_events")
EVERYWHERE = OUTPUTS


@dataclass(frozen=True, slots=True)
class Case:
    name: str
    rule: str
    forbidden: tuple[str, ...]  # output fields the canary must never reach
    required: tuple[str, ...] = ()  # output fields that must hold the request
    pii: str | None = None  # a personal-information value that must never reach training


@dataclass
class Report:
    violations: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    checked: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.violations and not self.missing

    def render(self) -> str:
        lines = [f"canary check: {'PASS' if self.ok else 'FAIL'}"]
        lines += [f"  searched {where}: {n:,} records/files" for where, n in self.checked.items()]
        lines += [f"  LEAK    {v}" for v in self.violations]
        lines += [f"  MISSING {m}" for m in self.missing]
        return "\n".join(lines)


CASES = (
    Case("zdr", "R2", EVERYWHERE),
    Case("private", "R1", EVERYWHERE),
    Case("third_party", "R1", EVERYWHERE),
    Case("deleted_org", "R15", EVERYWHERE),
    Case(
        "opted_out",
        "R9",
        ("training_candidates", "safety_evaluation", *CONTENT_FREE),
        required=("log_store",),
    ),
    Case("drive_connector", "R9", ("training_candidates", *CONTENT_FREE), required=("log_store",)),
    Case("before_opt_in", "R12", ("training_candidates", *CONTENT_FREE), required=("log_store",)),
    Case("flagged", "R5", ("training_candidates", *CONTENT_FREE), required=("log_store",)),
    Case(
        "pii",
        "R11",
        CONTENT_FREE,
        required=("log_store", "training_candidates"),
        pii="canary.person.{token}@example.com",
    ),
    Case("zdr_bad_record", "R17", EVERYWHERE),
)


class CanaryRun:
    """Produces the canary traffic for one verification and checks the outputs."""

    def __init__(self, config: PolicyConfig, contracts: Contracts, now_ms: int) -> None:
        self.config = config
        self.contracts = contracts
        self.topology = contracts.topics
        self.now_ms = now_ms
        self.run_id = uuid.uuid4().hex[:10]
        self.tokens = {case.name: f"CANARY-{case.name}-{self.run_id}" for case in CASES}

    def org(self, case: str) -> str:
        return f"canary-{case}-{self.run_id}"

    def request(self, case: Case, created_at_ms: int, **overrides: Any) -> dict[str, Any]:
        token = self.tokens[case.name]
        prompt = f"please summarise {token}"
        if case.pii:
            prompt += " and write to " + case.pii.format(token=self.run_id)
        record = {
            "request_id": f"{case.name}-{self.run_id}",
            "org_id": self.org(case.name),
            "api_key_id": f"key-{case.name}-{self.run_id}",
            "key_type": "PRODUCTION",
            "created_at_ms": created_at_ms,
            "endpoint": "chat",
            "model": "command-r",
            "deployment": "SAAS",
            "source": "API",
            "connectors": [],
            "prompt": prompt,
            "documents": [f"document {token}"],
            "generation": f"generation {token}",
            "input_tokens": 5,
            "output_tokens": 7,
            "client_ip": "192.0.2.10",
            "user_id": "canary-user",
            "metadata": {"trace": token},
        }
        record.update(overrides)
        return record

    @property
    def request_ids(self) -> set[str]:
        return {f"{case.name}-{self.run_id}" for case in CASES if case.name != "zdr_bad_record"}

    def wait_until_decided(self, bootstrap: str, timeout_s: float = 120.0) -> bool:
        """Wait for the running jobs' audit records (R16) of every canary request."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            audited = {
                key.decode(errors="replace")
                for key, _, _, _ in read_topic(bootstrap, self.topology.audit, 0.5)
                if key is not None
            }
            if self.request_ids <= audited:
                return True
            time.sleep(1)
        return False

    def produce(self, bootstrap: str) -> int:
        """Write the controls, flags, deletion and canary requests; returns the request count."""
        producer = Producer(producer_config(bootstrap, {"linger.ms": 5}))

        def send(field_name: str, record: dict[str, Any] | bytes, key: str | None = None) -> None:
            topic = getattr(self.topology, field_name)
            if isinstance(record, bytes):
                producer.produce(topic, key=key, value=record)
                return
            value = self.contracts.codec(field_name).encode(record)
            producer.produce(topic, key=key or key_for(field_name, record), value=value)

        # The watermark contract (R12): a change is published before any watermark at or past
        # its effective time. Canaries may run against a cluster whose watermark already
        # stands near "now", so their settings take effect just after now and their
        # requests are created after that; the run's own watermark then covers them.
        effective = self.now_ms + 1
        created = self.now_ms + 2_000
        by_name = {case.name: case for case in CASES}

        def change(case: str, effective: int, **fields: Any) -> dict[str, Any]:
            base: dict[str, Any] = {
                "change_id": f"{case}-{effective}",
                "org_id": self.org(case),
                "effective_at_ms": effective,
                "consent_version": f"canary-{case}",
                "prompts_generations_training": None,
                "finetune_training": None,
                "zero_data_retention": None,
                "retention_days": None,
                "training_exclusion": None,
                "paying_customer": None,
            }
            base.update(fields)
            return base

        send("data_controls", change("zdr", effective, zero_data_retention=True))
        send("data_controls", change("zdr_bad_record", effective, zero_data_retention=True))
        send(
            "data_controls",
            change("opted_out", effective, prompts_generations_training=False),
        )
        send(
            "data_controls",
            change("before_opt_in", effective, prompts_generations_training=False),
        )
        send(
            "data_controls", change("before_opt_in", created + 1, prompts_generations_training=True)
        )
        send(
            "account_deletions",
            {
                "deletion_id": f"del-{self.run_id}",
                "org_id": self.org("deleted_org"),
                "requested_at_ms": effective,
            },
        )
        send(
            "misuse_flags",
            {
                "flag_id": f"flag-{self.run_id}",
                "action": "RAISE",
                "scope": "REQUEST",
                "org_id": self.org("flagged"),
                "request_id": f"flagged-{self.run_id}",
                "api_key_id": None,
                "window_start_ms": None,
                "window_end_ms": None,
                "reason": "canary",
                "at_ms": created,
            },
        )
        producer.flush(30)
        requests = [
            self.request(by_name["zdr"], created),
            self.request(by_name["private"], created, deployment="PRIVATE"),
            self.request(by_name["third_party"], created, deployment="THIRD_PARTY_CLOUD"),
            self.request(by_name["deleted_org"], created),
            self.request(by_name["opted_out"], created),
            self.request(by_name["drive_connector"], created, connectors=["google_drive"]),
            self.request(by_name["before_opt_in"], created),
            self.request(by_name["flagged"], created),
            self.request(by_name["pii"], created),
        ]
        for record in requests:
            send("request_logs", record)
        bad = self.request(by_name["zdr_bad_record"], created, deployment="NOT-A-DEPLOYMENT")
        send(
            "request_logs", self.contracts.codec("request_logs").encode(bad), key=bad["request_id"]
        )
        mark = created + 1_000
        send("controls_watermark", {"watermark_ms": mark, "published_at_ms": self.now_ms})
        producer.flush(30)
        return len(requests) + 1

    def check(
        self, bootstrap: str, scan_paths: Iterable[Path] = (), fields: Iterable[str] = OUTPUTS
    ) -> Report:
        report = Report()
        present: dict[str, set[str]] = {case.name: set() for case in CASES}
        pii_values = {c.name: c.pii.format(token=self.run_id).encode() for c in CASES if c.pii}
        for field_name in fields:
            topic = getattr(self.topology, field_name)
            count = 0
            for key, value, partition, offset in read_topic(bootstrap, topic, 1.0):
                count += 1
                blob = (key or b"") + b"\x00" + (value or b"")
                for case in CASES:
                    if self.tokens[case.name].encode() in blob:
                        present[case.name].add(field_name)
                        if field_name in case.forbidden:
                            report.violations.append(
                                f"{case.name} ({case.rule}) canary in {topic} "
                                f"partition {partition} offset {offset}"
                            )
                    if (
                        case.name in pii_values
                        and field_name == "training_candidates"
                        and (pii_values[case.name] in blob)
                    ):
                        report.violations.append(
                            f"{case.name} (R11) personal information in {topic} "
                            f"partition {partition} offset {offset}"
                        )
            report.checked[topic] = count
        files = 0
        for root in scan_paths:
            for path in (
                [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
            ):
                files += 1
                data = path.read_bytes()
                for case in CASES:
                    if case.forbidden == EVERYWHERE and self.tokens[case.name].encode() in data:
                        report.violations.append(f"{case.name} ({case.rule}) canary in file {path}")
        if scan_paths:
            report.checked["state and log files"] = files
        for case in CASES:
            for needed in case.required:
                if needed in fields and needed not in present[case.name]:
                    report.missing.append(f"{case.name}: expected in {needed}, not found")
        return report


def verify(
    bootstrap: str,
    config: PolicyConfig,
    contracts: Contracts,
    now_ms: int,
    run_jobs: Callable[[int], object] | None = None,
    scan_paths: Iterable[Path] = (),
    timeout_s: float = 120.0,
) -> Report:
    """Produce canaries, let the jobs process them, then check.

    ``run_jobs(expected_inputs)`` runs embedded jobs over the canaries; without it the jobs
    are already running (another cluster, the demo's workers) and the check waits for
    their audit records of every canary request.
    """
    run = CanaryRun(config, contracts, now_ms)
    expected = run.produce(bootstrap)
    if run_jobs is not None:
        run_jobs(expected)
    elif not run.wait_until_decided(bootstrap, timeout_s):
        report = Report()
        report.missing.append("the jobs did not decide every canary request in time")
        return report
    time.sleep(1)  # let asynchronous downstream jobs (retention, safety evaluation) catch up
    return run.check(bootstrap, scan_paths)
