"""The retention job driven without a broker: its audit records of deletions, which it
splices (the outcome fields of every deletion of a kind encoded once), against
``audit_record`` applied directly (R16); its tracking audits and deletion events against
the contract; the facts it keeps; and the facts barrier's gauge."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

from streams.jobs.retention import RetentionJob, RetentionSettings
from streams.jobs.wiring import PolicyAuditTrail
from streams.kafka.metrics import JobMetrics
from streams.kafka.runtime import ConsumedRecord, JobDriver
from streams.kafka.serde import Contracts, registry_client
from streams.kafka.topics import Topology
from streams.policy.audit import Source, audit_record
from streams.policy.config import PolicyConfig
from streams.policy.models import DAY_MS

NOW = 1_800_000_000_000


def log_record(rid: str, days: int) -> dict[str, Any]:
    return {
        "request_id": rid,
        "org_id": "org-1",
        "api_key_id": "key-1",
        "key_type": "PRODUCTION",
        "created_at_ms": NOW,
        "endpoint": "chat",
        "model": "command-r",
        "source": "API",
        "connectors": [],
        "prompt": "a prompt",
        "documents": [],
        "generation": "a generation",
        "input_tokens": 1,
        "output_tokens": 2,
        "client_ip": None,
        "user_id": None,
        "metadata": {},
        "retention_days": days,
        "consent_version": "consent-1",
        "policy_version": "test",
    }


def _driven(now: list[int]) -> tuple[RetentionJob, JobDriver, Contracts]:
    """The retention job of one partition, driven on the clock ``now[0]``."""
    config = PolicyConfig()
    topics = Topology()
    contracts = Contracts(registry_client(f"mock://retention-{uuid.uuid4().hex}"), topics)
    contracts.register_all()
    job = RetentionJob(RetentionSettings(config, topics, Path("unused")), contracts, 1)
    driver = JobDriver(job, contracts, PolicyAuditTrail(config), clock=lambda: now[0])
    return job, driver, contracts


def test_R4_R7_R16_deletion_audits_are_the_audit_records_of_the_policy() -> None:
    """R16: each deletion's audit record (expiry and contractual retention, R4/R7) decodes
    to exactly what ``audit_record`` gives for it, byte for byte."""
    now = [NOW]
    job, driver, contracts = _driven(now)
    config, topics = job.config, contracts.topics
    codec = contracts.codec("log_store")
    ids = [f"req-{i}" for i in range(6)]
    for i, rid in enumerate(ids):
        driver.process("log_store", rid.encode(), codec.encode(log_record(rid, 30 + i % 2)))
    driver.commit()
    now[0] = NOW + 40 * DAY_MS
    job.facts_complete_ms = now[0]  # every fact applied (no fact reader here)
    audit = contracts.codec("audit")
    written = {
        out.key: out.value
        for out in driver.punctuate()
        if out.topic == topics.audit and isinstance(out.value, bytes)
    }
    for offset, rid in enumerate(ids):
        contract = offset % 2 == 1
        decoded = audit.decode(written[rid])
        assert decoded["routes"] == ["deleted"]
        reason = "CONTRACT_RETENTION_EXPIRED" if contract else "EXPIRED"
        text = (
            "R7: contractual retention of 31 days ended"
            if contract
            else "R4: 30 days after creation"
        )
        expected = audit_record(
            job="retention",
            source=Source(topics.log_store, 0, offset),
            subject_id=rid,
            subject_kind="log_record",
            org_id="org-1",
            routes=("deleted",),
            rule_ids=("R4", "R7") if contract else ("R4",),
            reasons=(text, f"deletion reason {reason}"),
            consent_version="",
            policy_version=config.policy_version,
            decided_at_ms=now[0],
            decision_suffix=f"/delete/{rid}",
        )
        assert written[rid] == audit.encode(expected)


def test_R4_R7_R16_tracking_audits_and_deletion_events_are_the_contract_s_records() -> None:
    """R4/R7/R16: each tracked record's audit record and each deletion event are byte for
    byte the contract's encodings, the event with the reason and rules of its kind."""
    now = [NOW]
    job, driver, contracts = _driven(now)
    codec = contracts.codec("log_store")
    ids = [f"req-{i}" for i in range(6)]
    audit = contracts.codec("audit")
    for rid in ids:
        days = 30 + int(rid[-1]) % 2
        outputs = driver.process("log_store", rid.encode(), codec.encode(log_record(rid, days)))
        assert outputs is not None
        (tracked,) = [o.value for o in outputs if o.topic == contracts.topics.audit]
        assert isinstance(tracked, bytes)  # R16: the "retained until" record, as a whole encode
        assert audit.decode(tracked)["routes"] == ["retained"]
        assert audit.encode(audit.decode(tracked)) == tracked
    driver.commit()
    now[0] = NOW + 40 * DAY_MS
    job.facts_complete_ms = now[0]
    events = contracts.codec("deletion_events")
    written = {
        out.key: out.value
        for out in driver.punctuate()
        if out.topic == contracts.topics.deletion_events and isinstance(out.value, bytes)
    }
    assert sorted(written) == sorted(ids)
    for rid in ids:
        contract = int(rid[-1]) % 2 == 1
        expected = {
            "request_id": rid,
            "org_id": "org-1",
            "reason": "CONTRACT_RETENTION_EXPIRED" if contract else "EXPIRED",
            "rule_ids": ["R4", "R7"] if contract else ["R4"],
            "deleted_at_ms": now[0],
            "policy_version": job.config.policy_version,
        }
        assert written[rid] == events.encode(expected)
        assert events.decode(written[rid]) == expected


def test_R5_a_fact_published_again_is_kept_once() -> None:
    """R5: a flag published again (same flag, same action) is read but not kept twice:
    every book applies the first fact of a key only, so the job's list of facts stays as
    long as the distinct facts; an invalid control record is kept each time (R17)."""
    job, _, contracts = _driven([NOW])
    topic = contracts.topics.misuse_flags
    codec = contracts.codec("misuse_flags")

    def flag(action: str, at: int) -> dict[str, Any]:
        return {
            "flag_id": "flag-1",
            "action": action,
            "scope": "ORG",
            "org_id": "org-1",
            "request_id": None,
            "api_key_id": None,
            "window_start_ms": None,
            "window_end_ms": None,
            "reason": "abuse",
            "at_ms": at,
        }

    values = [
        codec.encode(flag("RAISE", NOW)),
        codec.encode(flag("RAISE", NOW)),  # published again
        codec.encode(flag("RELEASE", NOW + 1)),
        codec.encode(flag("RAISE", NOW + 2)),  # after its release: ignored by every book
        b"not avro",
        b"not avro",
    ]
    for offset, value in enumerate(values):
        job._on_fact(ConsumedRecord(topic, 0, offset, b"flag-1", value))  # type: ignore[arg-type]
    kept = [(f.source.offset, f.fact is not None) for f in job.facts]
    assert kept == [(0, True), (2, True), (4, False), (5, False)]


class _Ends:
    def ends(self) -> dict[tuple[str, int], int]:
        return {("flags", 0): 3}


class _Facts:
    """The facts reader: read to the published ends only while ``caught_up``."""

    caught_up = True

    def poll(self) -> None:
        pass

    def ask_published_ends(self) -> _Ends:
        return _Ends()

    def reached(self, _ends: dict[tuple[str, int], int]) -> bool:
        return self.caught_up


def test_R4_R5_R6_a_stalled_facts_barrier_shows_in_the_facts_behind_gauge() -> None:
    """R4/R5/R6: deletions wait for the facts to be read to their published end (fail
    closed); how far that instant lags the clock is exported, to alert before the bound."""
    now = [NOW]
    job, driver, _ = _driven(now)
    facts = _Facts()
    metrics = JobMetrics("retention")
    job._reader, job._metrics = facts, metrics  # type: ignore[assignment]

    def behind() -> float:
        text = metrics.exposition().decode()
        line = next(x for x in text.splitlines() if x.startswith("streams_facts_behind_seconds{"))
        return float(line.rsplit(" ", 1)[1])

    driver.punctuate()  # asks the facts' ends: nothing applied up to any instant yet
    assert behind() == 0  # counted from the job's first turn
    driver.punctuate()  # read to them: complete up to when they were asked
    assert behind() == 0
    facts.caught_up = False
    now[0] += 7_000
    driver.punctuate()  # the facts are not read to their ends: the instant stays
    assert behind() == 7
