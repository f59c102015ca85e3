"""R16 audit records and R17 dead-letter records: no content, deterministic, explainable."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from streams.policy.audit import Source, audit_record, dead_letter_decision, dead_letter_record
from streams.policy.config import POLICY_VERSION
from streams.policy.models import Deployment, RequestLog, Route
from streams.policy.routing import decide_finetune_row, decide_request
from tests.unit.strategies import (
    CONFIG,
    PROPS,
    SENTINEL,
    contains_sentinel,
    controls,
    data_controls,
    facts,
    finetune_row,
    request_log,
    request_logs,
    routing_facts,
)

AUDIT_FIELDS = {
    "decision_id",
    "subject_id",
    "subject_kind",
    "org_id",
    "job",
    "routes",
    "rule_ids",
    "reasons",
    "consent_version",
    "policy_version",
    "decided_at_ms",
    "source_topic",
    "source_partition",
    "source_offset",
}
CONTENT_FIELDS = {"prompt", "documents", "generation", "metadata", "text", "connectors"}
SRC = Source("request-logs", 3, 1234)


def audit_of(request: RequestLog, decision: Any, source: Source = SRC) -> dict[str, Any]:
    return audit_record(
        job="router",
        source=source,
        subject_id=request.request_id,
        subject_kind="request",
        org_id=request.org_id,
        routes=decision.routes,
        rule_ids=decision.rule_ids,
        reasons=decision.reasons,
        consent_version=decision.consent_version,
        policy_version=CONFIG.policy_version,
        decided_at_ms=99,
    )


def rule_number(rule: str) -> int:
    return int(rule[1:])


# --- R16 audit ------------------------------------------------------------------------------


def test_r16_audit_record_says_why_and_carries_no_content() -> None:
    """R16: request id, org, routes, rule ids, consent and policy version; no content fields."""
    request = request_log()
    decision = decide_request(request, controls(), facts(), CONFIG)
    record = audit_of(request, decision)
    assert set(record) == AUDIT_FIELDS
    assert not CONTENT_FIELDS & set(record)
    assert record["subject_id"] == "req-1" and record["org_id"] == "org-a"
    assert record["routes"] == sorted(decision.routes)
    assert set(record["rule_ids"]) == set(decision.rule_ids)
    assert record["consent_version"] == "consent-v7"
    assert record["policy_version"] == POLICY_VERSION
    assert (record["source_topic"], record["source_partition"], record["source_offset"]) == (
        "request-logs",
        3,
        1234,
    )
    assert not contains_sentinel(record)


@PROPS
@given(request_logs(), data_controls, routing_facts)
def test_r16_property_audit_of_any_decision_has_no_content(
    request: RequestLog, c: Any, f: Any
) -> None:
    """R16 (+R1, R2): whatever the decision, the audit record holds no prompt, document,
    generation or metadata text, and its rule ids are in numeric order without repeats."""
    decision = decide_request(request, c, f, CONFIG)
    record = audit_of(request, decision)
    assert set(record) == AUDIT_FIELDS
    assert not contains_sentinel(record)
    rules = record["rule_ids"]
    assert [rule_number(r) for r in rules] == sorted({rule_number(r) for r in rules})
    assert set(rules) == set(decision.rule_ids)
    assert record["routes"] == sorted(decision.routes)


def test_r16_r1_dropped_content_is_audited_with_its_reason() -> None:
    """R16 + R1: a non-SaaS content drop shows up in the audit as route "dropped" with R1."""
    request = request_log(deployment=Deployment.PRIVATE.value)
    record = audit_of(request, decide_request(request, controls(), facts(), CONFIG))
    assert record["routes"] == sorted([Route.DROPPED.value, Route.USAGE.value])
    assert "R1" in record["rule_ids"]
    assert any(r.startswith("R1:") for r in record["reasons"])
    assert not contains_sentinel(record)


def test_r16_r10_finetune_audit_has_no_row_text() -> None:
    """R16 + R10: a fine-tune decision's audit never carries the row text."""
    row = finetune_row()
    decision = decide_finetune_row(row, controls(), facts(), CONFIG)
    record = audit_record(
        job="router",
        source=Source("finetune-rows", 0, 7),
        subject_id=row.row_id,
        subject_kind="finetune_row",
        org_id=row.org_id,
        routes=decision.routes,
        rule_ids=decision.rule_ids,
        reasons=decision.reasons,
        consent_version=decision.consent_version,
        policy_version=POLICY_VERSION,
        decided_at_ms=1,
    )
    assert not contains_sentinel(record)
    assert record["rule_ids"][0] == "R10"


def test_r16_rule_ids_sorted_by_number_not_text() -> None:
    """R16: R2 before R10 (numeric order), duplicates dropped, unknown ids last."""
    record = audit_record(
        job="j",
        source=SRC,
        subject_id="s",
        subject_kind="request",
        org_id=None,
        routes=["usage", "log_store"],
        rule_ids=["R10", "R2", "R17", "R3", "R2", "X", "R1"],
        reasons=[],
        consent_version="",
        policy_version="p",
        decided_at_ms=0,
    )
    assert record["rule_ids"] == ["R1", "R2", "R3", "R10", "R17", "X"]
    assert record["routes"] == ["log_store", "usage"]


@PROPS
@given(st.lists(st.integers(1, 18).map(lambda n: f"R{n}"), max_size=12))
def test_r16_property_rule_ids_numeric_order(rules: list[str]) -> None:
    """R16: any rule list comes out sorted by rule number, each id once."""
    record = audit_record(
        job="j",
        source=SRC,
        subject_id="s",
        subject_kind="request",
        org_id="o",
        routes=[],
        rule_ids=rules,
        reasons=[],
        consent_version="",
        policy_version="p",
        decided_at_ms=0,
    )
    assert record["rule_ids"] == [f"R{n}" for n in sorted({int(r[1:]) for r in rules})]


coordinates = st.tuples(
    st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789._-", min_size=1, max_size=12),
    st.integers(0, 64),
    st.integers(0, 2**40),
)


@PROPS
@given(coordinates, coordinates, st.integers(0, 10**13), st.integers(0, 10**13))
def test_r16_property_decision_id_is_a_function_of_source_coordinates(
    a: tuple[str, int, int], b: tuple[str, int, int], t1: int, t2: int
) -> None:
    """R16: the same source record always gets the same decision id (re-processing after a
    crash de-duplicates), whenever decided; different coordinates never share one."""

    def did(coords: tuple[str, int, int], at: int) -> str:
        return audit_record(
            job="router",
            source=Source(*coords),
            subject_id="s",
            subject_kind="request",
            org_id="o",
            routes=["usage"],
            rule_ids=["R3"],
            reasons=[],
            consent_version="",
            policy_version="p",
            decided_at_ms=at,
        )["decision_id"]

    assert did(a, t1) == did(a, t2)
    assert (did(a, t1) == did(b, t2)) == (a == b)


def test_r16_decision_suffix_distinguishes_several_decisions_of_one_record() -> None:
    """R16: a suffix keeps several decisions on one source record apart, deterministically."""
    kwargs: dict[str, Any] = dict(
        job="retention",
        source=SRC,
        subject_id="s",
        subject_kind="request",
        org_id="o",
        routes=[],
        rule_ids=[],
        reasons=[],
        consent_version="",
        policy_version="p",
        decided_at_ms=0,
    )
    plain = audit_record(**kwargs)["decision_id"]
    suffixed = audit_record(**kwargs, decision_suffix=":expire")["decision_id"]
    assert plain == "retention:request-logs/3/1234"
    assert suffixed == plain + ":expire"
    assert audit_record(**kwargs, decision_suffix=":expire")["decision_id"] == suffixed


# --- R17 dead letters ----------------------------------------------------------------------------


def letter(keep: bool, **overrides: Any) -> dict[str, Any]:
    kwargs: dict[str, Any] = dict(
        job="router",
        source=Source("request-logs", 1, 55),
        reason="unknown deployment",
        error_class="InvalidRecord",
        org_id="org-a",
        original_key=b"req-1",
        original_value=(SENTINEL + "raw avro bytes").encode(),
        keep_content=keep,
        received_at_ms=10,
        policy_version=POLICY_VERSION,
    )
    kwargs.update(overrides)
    return dead_letter_record(**kwargs)


@pytest.mark.parametrize("org_id", ["org-zdr", None])
def test_r17_r2_dead_letter_withholds_original_bytes_unless_keep_content(
    org_id: str | None,
) -> None:
    """R17 + R2: without keep_content (ZDR, non-SaaS or unidentifiable org) the original key
    and value are withheld; the reason and coordinates still let an operator find it."""
    record = letter(False, org_id=org_id)
    assert record["original_key"] is None and record["original_value"] is None
    assert record["content_withheld"] is True
    assert not contains_sentinel(record)
    assert (record["source_topic"], record["source_partition"], record["source_offset"]) == (
        "request-logs",
        1,
        55,
    )
    assert record["reason"] == "unknown deployment"
    assert record["org_id"] == org_id


def test_r17_dead_letter_keeps_bytes_when_allowed() -> None:
    """R17: nothing is lost: an identified, non-ZDR SaaS org's bad record keeps its bytes."""
    record = letter(True)
    assert record["original_key"] == b"req-1"
    assert record["original_value"] == (SENTINEL + "raw avro bytes").encode()
    assert record["content_withheld"] is False
    assert record["policy_version"] == POLICY_VERSION
    assert record["error_class"] == "InvalidRecord"


@PROPS
@given(st.binary(max_size=64), st.one_of(st.none(), st.binary(max_size=8)), st.booleans())
def test_r17_property_content_withheld_flag_matches_bytes(
    value: bytes, key: bytes | None, keep: bool
) -> None:
    """R17 + R2: the bytes are present exactly when keep_content, and the flag says which."""
    record = letter(keep, original_key=key, original_value=value)
    assert record["content_withheld"] is (not keep)
    assert record["original_value"] == (value if keep else None)
    assert record["original_key"] == (key if keep else None)


def test_r17_r16_dead_letter_decision_pairs_the_letter_with_its_audit() -> None:
    """R17 + R16: every job sets a bad record aside the same way: the dead letter, and an
    audit record keyed by the subject when known (else the coordinates), no content."""
    source = Source("t.request-logs", 2, 41)
    letter, audit = dead_letter_decision(
        job="router",
        source=source,
        reason="unknown deployment",
        error_class="InvalidRecord",
        org_id="org-1",
        original_key=b"k",
        original_value=SENTINEL.encode(),
        keep_content=False,
        decided_at_ms=1_700_000_000_000,
        policy_version=POLICY_VERSION,
        rule_ids=("R17", "R2"),
    )
    assert letter["original_value"] is None and letter["content_withheld"]
    assert letter["received_at_ms"] == audit["decided_at_ms"]
    assert audit["subject_id"] == source.id and audit["subject_kind"] == "undecodable"
    assert audit["routes"] == ["dead_letter"] and audit["rule_ids"] == ["R2", "R17"]
    assert audit["reasons"] == ["R17: unknown deployment"]
    assert not contains_sentinel(letter) and not contains_sentinel(audit)
    _, named = dead_letter_decision(
        job="usage",
        source=source,
        reason="late",
        error_class="LateEvent",
        org_id="org-1",
        original_key=None,
        original_value=None,
        keep_content=True,
        decided_at_ms=1,
        policy_version=POLICY_VERSION,
        subject_id="req-1",
        subject_kind="usage_event",
    )
    assert (named["subject_id"], named["subject_kind"]) == ("req-1", "usage_event")
