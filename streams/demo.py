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
import textwrap
import time
import uuid
from collections import Counter
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient

from streams.jobs.audit_index import rule_titles
from streams.jobs.processes import Cluster, running
from streams.kafka.clients import client_config, producer_config
from streams.kafka.compacted import read_topic
from streams.kafka.serde import Contracts, DecodeError, registry_client
from streams.kafka.topics import ROLL_KEY, Topology, ensure_topics, key_for
from streams.policy.config import PolicyConfig
from streams.policy.models import DAY_MS
from streams.traffic import TrafficGenerator, TrafficMix
from streams.verify import verify

REQUESTS = 5_000
FLAGGED, HELD, DELETED, CONTRACT, LATE = "org-0097", "org-0096", "org-0098", "org-0095", "org-0099"


def _step(message: str) -> Callable[..., None]:
    started = time.monotonic()
    print(f"  {message} ...", end="", flush=True)

    def done(detail: str = "", outcome: str = "done") -> None:
        took = time.monotonic() - started
        print(f" {outcome} in {took:.1f}s{' ' + detail if detail else ''}", flush=True)

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


def demo_prefix() -> str:
    """A topic prefix of its own per run: runs on one broker never mix."""
    return f"demo{uuid.uuid4().hex[:6]}."


class Demo:
    def __init__(
        self, bootstrap: str, registry_url: str, work_dir: Path, prefix: str | None = None
    ) -> None:
        self.config = PolicyConfig()
        self.topology = Topology(prefix or demo_prefix())
        self.cluster = Cluster(bootstrap, registry_url, self.topology, work_dir / "logs")
        self.work_dir = work_dir
        self.contracts = Contracts(registry_client(registry_url), self.topology)
        self.producer = Producer(producer_config(bootstrap, {"linger.ms": 10}))
        self.now = int(time.time() * 1000)
        self.start = self.now - 2 * 3_600_000
        self.clock_file = work_dir / "retention-clock"
        self.clock_file.write_text(str(self.now))
        self.request_ids: list[str] = []

    def close(self) -> None:
        """Flush and drop the demo's producer: no client may outlive the broker it talks to
        (librdkafka would log every refused reconnect after the broker stops)."""
        self.producer.flush(30)
        del self.producer

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
            request = traffic.request(start + i * 1_000)
            self.request_ids.append(str(request["request_id"]))
            self.produce("request_logs", request)
            if i % 1000 == 0:
                self.producer.poll(0)
        self.produce("controls_watermark", {"watermark_ms": self.now, "published_at_ms": self.now})
        self.producer.flush(60)
        done()

    def wait_for(
        self, what: str, field: str, target: Callable[[], int], limit_s: float, counted: str
    ) -> int:
        """Wait until ``field`` holds ``target()`` records, showing the count as it grows;
        says "done" only when the target is reached, "timed out" otherwise."""
        done = _step(what)
        deadline = time.monotonic() + limit_s
        wanted, count, shown = target(), 0, -1
        print(f" {counted}:", end="", flush=True)
        while True:
            count = self.count(field)
            if count != shown:
                print(f" {count:,}", end="", flush=True)
                shown = count
            if count >= wanted:
                done(f"({count:,} of {wanted:,})" if wanted > 1 else "")
                return count
            if time.monotonic() > deadline:
                done(f"({count:,} of {wanted:,} {counted})", outcome="TIMED OUT after")
                return count
            time.sleep(2)

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
                "router: routing every request exactly once",
                "usage_events",
                lambda: REQUESTS,
                90,
                "usage events (one per request, R3)",
            )
            logged = self.census("log_store")[0]  # values: tombstones are not records
            self.wait_for(
                "retention: safety review of the flagged org's logs (R5)",
                "safety_review",
                lambda: 1,
                30,
                "safety-review copies",
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
                "deletion events",
            )
            self.wait_for(
                "usage: hourly metrics (R3)", "usage_metrics", lambda: 1, 30, "hourly aggregates"
            )
            self.wait_for(
                "safety evaluation: de-identified records (R8)",
                "safety_evaluation",
                lambda: 1,
                30,
                "evaluation records",
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
        """What went in, where it went and why, for a person: every table adds up on its own
        total line, every rule id is named, nothing needs arithmetic."""
        audit = self.decoded("audit")
        traffic = set(self.request_ids)
        titles = rule_titles()
        inputs = [
            ("request logs", "request_logs"),
            ("data-control changes", "data_controls"),
            ("controls watermarks", "controls_watermark"),
            ("misuse flags", "misuse_flags"),
            ("legal holds", "legal_holds"),
            ("account deletions", "account_deletions"),
        ]
        counts = {field: self.count(field) for _, field in inputs}
        lines = ["", "What went in:", ""]
        lines += _table([(label, counts[f], "") for label, f in inputs], "records", total=False)
        seen_rules: set[str] = set()
        tables = (
            ("router", f"{counts['request_logs']:,} request logs in, one decision each", _ROUTER),
            ("retention", "each log-store record", _RETENTION),
        )
        for job, what, note in tables:
            routes: Counter[tuple[str, str]] = Counter()
            for record in audit:
                if record["job"] == job and record["subject_id"] in traffic:
                    rules = sorted(record["rule_ids"], key=_rule_order)
                    seen_rules.update(rules)
                    routes[(" + ".join(record["routes"]) or "-", " ".join(rules))] += 1
            lines += ["", f"Where the {job} sent them ({what}; from the audit topic, R16):", ""]
            rows = [
                (route, n, rules)
                for (route, rules), n in sorted(routes.items(), key=lambda kv: (kv[0][0], -kv[1]))
            ]
            lines += _table(rows, "decisions", notes_header="rules")
            lines += [f"  {line}" for line in textwrap.wrap(note, WIDTH - 2)]
        lines += ["", "The rules (full text: docs/policy.md, or /policy on the explain service):"]
        for rule in sorted(seen_rules, key=_rule_order):
            lines.append(f"  {rule:<4} {titles.get(rule, '')}")
        lines += ["", "What the topics hold now:", ""]
        rows = []
        for field, meaning in _TOPIC_MEANINGS:
            records, tombstones, rolls = self.census(field)
            note = meaning
            if tombstones or rolls:
                note += f"; besides them {tombstones:,} deletion tombstones"
                note += f" and {rolls:,} segment-roll markers" if rolls else ""
                note += " (keys only, no content)"
            rows.append((getattr(self.topology, field), records, note))
        newest: dict[tuple[Any, ...], int] = {}
        metrics = self.decoded("usage_metrics")
        for m in metrics:  # each hour's aggregate is published again as requests arrive
            newest[(m["org_id"], m["endpoint"], m["model"], m["window_start_ms"])] = m["requests"]
        rows.append(
            (
                self.topology.usage_metrics,
                len(metrics),
                f"updates of {len(newest):,} hourly aggregates (per org, endpoint, model and"
                f" hour, R3), each published again as its hour's requests arrive; the newest of"
                f" each count {sum(newest.values()):,} requests",
            )
        )
        lines += _table(rows, "records", notes_header="what they are", total=False)
        return "\n".join(lines)

    def census(self, field: str) -> tuple[int, int, int]:
        """(records with a value, deletion tombstones, segment-roll markers) of a topic."""
        records = tombstones = rolls = 0
        for key, value, _, _ in read_topic(self.bootstrap, getattr(self.topology, field), 0.5):
            if value is not None:
                records += 1
            elif key == ROLL_KEY:
                rolls += 1
            else:
                tombstones += 1
        return records, tombstones, rolls

    def examples(self) -> dict[str, str]:
        """One request id per kind of route a person may want explained."""
        found: dict[str, str] = {}
        wanted = set(self.request_ids)
        for record in self.decoded("audit"):
            subject = str(record["subject_id"])
            if subject not in wanted:
                continue
            routes, rules = record["routes"], record["rule_ids"]
            if record["job"] == "router" and "training_candidate" in routes:
                found.setdefault("a training candidate (R9)", subject)
            elif record["job"] == "router" and "R2" in rules:
                found.setdefault("a zero-data-retention request (R2)", subject)
            elif record["job"] == "retention" and "held" in routes:
                found.setdefault("a record kept under a hold (R5/R6)", subject)
        return found


WIDTH = 100  # columns of the summary; longer notes wrap under their column
_ROUTER = (
    "Every request is counted (usage, R3); what else happens to it depends on the rules"
    " listed with it. Rows with the same routes differ in the rules that sent them there."
)
_RETENTION = (
    "Retention decides a log-store record when it arrives (retained, with its expiry) and"
    " again when it falls due 31 days later in this demo's clock (deleted, or held while a"
    " hold covers it); a record under a longer contract (R7) is not due yet. Flagged"
    " records also get a safety-review copy (R5)."
)
_TOPIC_MEANINGS = (
    ("log_store", "request logs kept for the 30 days (R4) or longer under a hold or contract"),
    ("training_candidates", "redacted prompt/generation pairs training may use (R9, R11)"),
    ("usage_events", "one per request: counts, no content (R3)"),
    ("safety_review", "copies of flagged requests for the safety team (R5)"),
    ("safety_evaluation", "de-identified records for safety evaluation (R8)"),
    ("deletion_events", "one per deleted log-store record (R4, R15)"),
    ("audit", "one per decision of every job, never content (R16)"),
    ("dead_letters", "inputs that did not decode or validate (R17)"),
)


def _rule_order(rule: str) -> tuple[int, str]:
    digits = rule.lstrip("R")
    return (int(digits), rule) if digits.isdigit() else (10_000, rule)


def _table(
    rows: list[tuple[str, int, str]],
    count_header: str,
    notes_header: str = "",
    total: bool = True,
) -> list[str]:
    """Rows of (label, count, notes): columns as wide as their longest cell, notes wrapped
    within ``WIDTH``, and a total line."""
    if total:
        rows = [*rows, ("total", sum(n for _, n, _ in rows), "")]
    width = max([len(label) for label, _, _ in rows] + [5])
    digits = max([len(f"{n:,}") for _, n, _ in rows] + [len(count_header)])
    indent = 2 + width + 2 + digits + 2
    out = [f"  {'':<{width}}  {count_header:>{digits}}  {notes_header}".rstrip()]
    for i, (label, n, notes) in enumerate(rows):
        if total and i == len(rows) - 1:
            out.append(f"  {'':<{width}}  {'-' * digits}")
        wrapped = textwrap.wrap(notes, max(WIDTH - indent, 30)) or [""]
        out.append(f"  {label:<{width}}  {n:>{digits},}  {wrapped[0]}".rstrip())
        out += [" " * indent + more for more in wrapped[1:]]
    return out


def run_demo(keep: bool = False) -> int:
    """The demo; with ``keep`` the broker, registry, explain service and the results stay up
    (``streams stack down`` stops them) and request ids to explain are printed."""
    started = time.monotonic()
    print("privacy-streams demo: every job end to end on a local broker")
    prefix = demo_prefix()
    explain_url = os.environ.get("STREAMS_EXPLAIN_URL")
    with ExitStack() as stack:
        bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
        registry_url = os.environ.get("SCHEMA_REGISTRY_URL")
        exports = ""
        if keep and not (bootstrap and registry_url):
            from streams.infra import stack as local_stack

            done = _step("starting the local stack: Kafka, schema registry, explain service")
            state = local_stack.up(prefix)
            bootstrap, registry_url, explain_url = (
                state.bootstrap,
                state.registry_url,
                state.explain_url,
            )
            exports = state.exports()
            done(f"(Kafka at {bootstrap})")
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
        if keep:
            work_dir = Path(tempfile.mkdtemp(prefix="demo-kept-"))
        else:
            work_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="demo-")))
        demo = Demo(bootstrap, registry_url, work_dir, prefix)
        try:
            status = demo.run()
            examples = demo.examples() if keep else {}
        finally:
            demo.close()  # before the ExitStack stops the broker
    if keep:
        print(_kept(prefix, exports, explain_url, examples, work_dir))
    print(f"\ndemo finished in {time.monotonic() - started:.0f}s")
    return status


def _kept(
    prefix: str, exports: str, explain_url: str | None, examples: dict[str, str], logs: Path
) -> str:
    lines = ["", f"Kept up: the demo's topics (prefix {prefix}) and job logs in {logs}/logs."]
    if exports:
        lines += [
            "The stack stays up until `.venv/bin/streams stack down`. Point a shell at it:",
            "",
            '  eval "$(.venv/bin/streams stack env)"   # prints these lines:',
            *(f"  {line}" for line in exports.splitlines()),
        ]
    else:
        lines += [f"  export STREAMS_TOPIC_PREFIX={prefix}"]
    lines += ["", "Ask why a request went where it went (R16):", ""]
    width = max([len(kind) for kind in examples] + [1])
    for kind, request_id in examples.items():
        lines.append(f"  {kind:<{width}}  .venv/bin/streams explain {request_id}")
    if explain_url:
        first = next(iter(examples.values()), "")
        lines += ["", f"  or open {explain_url}/?id={first} in a browser"]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(run_demo())
