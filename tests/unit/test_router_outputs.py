"""The router's outputs, byte for byte, against the policy functions applied directly.

The router remembers a decision per decision key (``RequestShape``, controls, facts) and
encodes the parts shared by every request decided alike once (audit outcome, log-store
stamp). These tests route generated traffic, with misuse flags, deletions and control
changes arriving in between, and check every output equals what ``decide_request``,
``audit_record``, ``log_store_record`` and ``usage_event`` give for that request alone.
"""

from __future__ import annotations

import uuid
from typing import Any

from streams.jobs.router import Router
from streams.jobs.wiring import PolicyAuditTrail
from streams.kafka.runtime import JobDriver
from streams.kafka.serde import Contracts, SplicedCodec, registry_client
from streams.kafka.topics import Topology
from streams.policy.audit import AUDIT_OUTCOME_FIELDS, Source, audit_record
from streams.policy.config import PolicyConfig
from streams.policy.holds import validate_flag
from streams.policy.models import ControlsWatermark, DataControlChange, Decision, Route
from streams.policy.redaction import Redactor
from streams.policy.routing import (
    RoutingFacts,
    WatermarkState,
    decide_finetune_row,
    decide_request,
    log_store_record,
    training_candidate,
    usage_event,
    validate_finetune_row,
    validate_request,
    watermark_state,
)
from streams.traffic import TrafficGenerator

NOW = 1_800_000_000_000


def _contracts(config: PolicyConfig) -> Contracts:
    contracts = Contracts(registry_client(f"mock://outputs-{uuid.uuid4().hex}"), Topology())
    contracts.register_all()
    return contracts


def _full_audit(
    source: Source, subject_id: str, kind: str, org_id: str, decision: Decision
) -> dict[str, Any]:
    """The audit record of one decision, built whole by the policy function."""
    return audit_record(
        job="router",
        source=source,
        subject_id=subject_id,
        subject_kind=kind,
        org_id=org_id,
        routes=decision.routes,
        rule_ids=decision.rule_ids,
        reasons=decision.reasons,
        consent_version=decision.consent_version,
        policy_version=PolicyConfig().policy_version,
        decided_at_ms=NOW,
    )


def _expected(
    router: Router,
    contracts: Contracts,
    redactor: Redactor,
    source: Source,
    record: dict[str, Any],
) -> list[tuple[str, bytes]]:
    """The outputs of one request computed from the policy functions, nothing remembered."""
    config, t = router.config, router.topics
    request = validate_request(record)
    controls = router.ledger.controls_at(request.org_id, request.created_at_ms)
    flags = router.holds.covering(
        request.org_id, request.api_key_id, request.request_id, request.created_at_ms, "misuse"
    )
    facts = RoutingFacts(
        watermark=watermark_state(
            request.created_at_ms, router.ledger.watermark_ms, NOW, config.watermark_stall_ms
        ),
        misuse_flag_ids=tuple(h.hold_id for h in flags),
        deletion_requested=router.ledger.deletion_requested_at(request.org_id) is not None,
    )
    decision = decide_request(request, controls, facts, config)
    codec = contracts.codec
    expected = [(t.usage_events, codec("usage_events").encode(usage_event(request, config)))]
    if decision.has(Route.LOG_STORE):
        stored = log_store_record(request, decision, config)
        expected.append((t.log_store, codec("log_store").encode(stored)))
    if decision.has(Route.TRAINING_CANDIDATE):
        candidate = training_candidate(request, decision.consent_version, redactor, config)
        expected.append((t.training_candidates, codec("training_candidates").encode(candidate)))
    audit = _full_audit(source, request.request_id, "request", request.org_id, decision)
    expected.append((t.audit, codec("audit").encode(audit)))
    return expected


def test_remembered_decisions_give_the_outputs_of_a_fresh_decision_R16_R4_R9() -> None:
    """R16/R4/R9/R3: every output of every request (audit record, log-store record, training
    candidate, usage event) is byte-identical to the one the policy functions give for that
    request alone, while flags, deletions and control changes arrive between requests and
    change the decisions of some orgs (R13: only theirs)."""
    config = PolicyConfig()
    contracts = _contracts(config)
    router = Router(config, contracts)
    driver = JobDriver(router, contracts, PolicyAuditTrail(config), clock=lambda: NOW)
    traffic = TrafficGenerator(seed=11, start_ms=NOW - 3_600_000)
    for change in traffic.control_changes():
        router.ledger.apply(DataControlChange(**change))
    router.ledger.advance_watermark(ControlsWatermark(watermark_ms=NOW, published_at_ms=NOW))
    codec = contracts.codec("request_logs")
    redactor = Redactor()
    orgs = sorted(traffic.org_ids)
    zdr, opted_out = sorted(traffic.zdr_orgs)[0], sorted(traffic.opted_out_orgs)[0]
    pool = [zdr, opted_out, *orgs[-4:]]
    decisions = set()
    for i in range(1_500):
        if i == 300:  # an org-wide misuse flag over the whole window (R5/R9)
            router.holds.apply_flag(
                validate_flag(
                    {
                        "flag_id": "flag-1",
                        "action": "RAISE",
                        "scope": "ORG",
                        "org_id": orgs[-1],
                        "request_id": None,
                        "api_key_id": None,
                        "window_start_ms": 0,
                        "window_end_ms": NOW,
                        "reason": "abuse",
                        "at_ms": NOW,
                    }
                )
            )
        if i == 600:  # R15
            router.ledger.record_deletion(orgs[-2], NOW)
        if i == 900:  # R12: an opt-out effective from the middle of the traffic
            router.ledger.apply(
                DataControlChange(
                    change_id="late-opt-out",
                    org_id=orgs[-3],
                    effective_at_ms=NOW - 1_800_000,
                    consent_version="late-1",
                    prompts_generations_training=False,
                )
            )
        record = traffic.request(NOW - 3_600_000 + i * 2_000, org_id=pool[i % len(pool)])
        source = Source(Topology().request_logs, i % 6, i)
        value = codec.encode(record)
        expected = _expected(router, contracts, redactor, source, record)
        outputs = driver.process("request_logs", None, value, source.partition, source.offset)
        assert outputs is not None
        got = [(o.topic, o.value) for o in outputs]
        assert got == expected, f"request {i}"
        decisions.add(tuple(t for t, _ in got))
    assert len(decisions) >= 3  # usage only, log store, log store + candidate at least


def test_fine_tune_rows_audit_equals_a_full_encode_R10_R16() -> None:
    """R10/R16: the audit record of a fine-tune row (its outcome encoded apart and joined to
    its subject) is byte for byte the full record of that row's decision."""
    config = PolicyConfig()
    contracts = _contracts(config)
    router = Router(config, contracts)
    driver = JobDriver(router, contracts, PolicyAuditTrail(config), clock=lambda: NOW)
    router.ledger.advance_watermark(ControlsWatermark(watermark_ms=NOW, published_at_ms=NOW))
    codec = contracts.codec("finetune_rows")
    for i, deployment in enumerate(["SAAS", "PRIVATE"]):
        record = {
            "dataset_id": "ds-1",
            "row_index": i,
            "org_id": "org-1",
            "uploaded_at_ms": NOW - 1_000,
            "deployment": deployment,
            "text": "a row of fine-tune data",
        }
        source = Source(Topology().finetune_rows, 0, i)
        row = validate_finetune_row(record)
        decision = decide_finetune_row(
            row,
            router.ledger.controls_at(row.org_id, row.uploaded_at_ms),
            RoutingFacts(watermark=WatermarkState.PASSED),
            config,
        )
        expected = _full_audit(source, row.row_id, "finetune_row", row.org_id, decision)
        outputs = driver.process("finetune_rows", None, codec.encode(record), 0, i)
        assert outputs is not None
        audits = [o.value for o in outputs if o.topic == Topology().audit]
        assert audits == [contracts.codec("audit").encode(expected)]


def test_audit_runs_joined_equal_a_full_encode_R16() -> None:
    """R16: an audit record encoded in runs (subject, outcome, time and source) and joined,
    or written around its encoded outcome, is byte for byte the record fastavro writes whole."""
    config = PolicyConfig()
    contracts = _contracts(config)
    runs = SplicedCodec(contracts.codec("audit"), [AUDIT_OUTCOME_FIELDS[0], "decided_at_ms"])
    assert runs.runs[1] == AUDIT_OUTCOME_FIELDS
    for i, org in enumerate([None, "org-1", "ørg-ü"]):
        record = audit_record(
            job="router",
            source=Source("t.request-logs", i, 10**12 + i),
            subject_id=f"req-{i}",
            subject_kind="request",
            org_id=org,
            routes=["usage", "log_store"][: i + 1],
            rule_ids=["R3", "R12", "R4"][: i + 1],
            reasons=["R9: because"] * i,
            consent_version=f"c{i}",
            policy_version="p",
            decided_at_ms=-i,
        )
        joined = runs.join(runs.encode_run(n, record) for n in range(len(runs.runs)))
        assert joined == contracts.codec("audit").encode(record)
        around = runs.encode_around(1, runs.encode_run(1, record), record)
        assert around == joined
