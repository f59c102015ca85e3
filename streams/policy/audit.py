"""R16 audit records and R17 dead-letter records, as Avro-shaped dicts.

Neither ever carries prompt, document or generation text. Both are keyed by
their source coordinates, so a record re-processed after a crash produces the
same ``decision_id`` and downstream readers can de-duplicate.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from typing import Any

# Re-exported: the policy's callers name a decision's source with it.
from streams.source import Source as Source


def audit_record(
    *,
    job: str,
    source: Source,
    subject_id: str,
    subject_kind: str,
    org_id: str | None,
    routes: Iterable[str],
    rule_ids: Iterable[str],
    reasons: Iterable[str],
    consent_version: str,
    policy_version: str,
    decided_at_ms: int,
    decision_suffix: str = "",
) -> dict[str, Any]:
    """R16: one decision, with the rule IDs that made it and no content."""
    return {
        **audit_subject(
            job=job,
            source=source,
            subject_id=subject_id,
            subject_kind=subject_kind,
            org_id=org_id,
            decided_at_ms=decided_at_ms,
            decision_suffix=decision_suffix,
        ),
        **audit_outcome(
            job=job,
            routes=routes,
            rule_ids=rule_ids,
            reasons=reasons,
            consent_version=consent_version,
            policy_version=policy_version,
        ),
    }


def audit_subject(
    *,
    job: str,
    source: Source,
    subject_id: str,
    subject_kind: str,
    org_id: str | None,
    decided_at_ms: int,
    decision_suffix: str = "",
) -> dict[str, Any]:
    """The fields of an audit record that name what was decided, where and when."""
    return {
        "decision_id": f"{job}:{source.id}{decision_suffix}",
        "subject_id": subject_id,
        "subject_kind": subject_kind,
        "org_id": org_id,
        "decided_at_ms": decided_at_ms,
        "source_topic": source.topic,
        "source_partition": source.partition,
        "source_offset": source.offset,
    }


# The fields of an audit record that ``audit_outcome`` fills: the same for every record a
# job decides alike, so a job may encode them once per decision (the router does).
AUDIT_OUTCOME_FIELDS = (
    "job",
    "routes",
    "rule_ids",
    "reasons",
    "consent_version",
    "policy_version",
)


def audit_outcome(
    *,
    job: str,
    routes: Iterable[str],
    rule_ids: Iterable[str],
    reasons: Iterable[str],
    consent_version: str,
    policy_version: str,
) -> dict[str, Any]:
    """The fields of an audit record that say what was decided and by which rules."""
    return {
        "job": job,
        "routes": sorted(routes),
        "rule_ids": sorted(set(rule_ids), key=_rule_order),
        "reasons": list(reasons),
        "consent_version": consent_version,
        "policy_version": policy_version,
    }


@functools.cache
def _rule_order(rule_id: str) -> tuple[int, str]:
    digits = rule_id[1:]
    return (int(digits), rule_id) if digits.isdigit() else (10**6, rule_id)


def dead_letter_record(
    *,
    job: str,
    source: Source,
    reason: str,
    error_class: str,
    org_id: str | None,
    original_key: bytes | None,
    original_value: bytes | None,
    keep_content: bool,
    received_at_ms: int,
    policy_version: str,
) -> dict[str, Any]:
    """R17: the reason and source coordinates of a bad record.

    R2/R1: the original bytes are copied only when ``keep_content`` (the org is
    identified, not ZDR, and the deployment is SaaS); otherwise they are
    withheld and the coordinates alone let an operator find the record.
    """
    return {
        "source_topic": source.topic,
        "source_partition": source.partition,
        "source_offset": source.offset,
        "job": job,
        "reason": reason,
        "error_class": error_class,
        "org_id": org_id,
        "original_key": original_key if keep_content else None,
        "original_value": original_value if keep_content else None,
        "content_withheld": not keep_content,
        "received_at_ms": received_at_ms,
        "policy_version": policy_version,
    }


def dead_letter_decision(
    *,
    job: str,
    source: Source,
    reason: str,
    error_class: str,
    org_id: str | None,
    original_key: bytes | None,
    original_value: bytes | None,
    keep_content: bool,
    decided_at_ms: int,
    policy_version: str,
    rule_ids: Iterable[str] = ("R17",),
    subject_id: str | None = None,
    subject_kind: str = "undecodable",
) -> tuple[dict[str, Any], dict[str, Any]]:
    """R17 + R16: the dead letter of a bad record and the audit record of setting it aside.

    The audit names the record's subject when it was identified, else its coordinates
    (``subject_kind`` applies only with a ``subject_id``: without one it is undecodable).
    """
    letter = dead_letter_record(
        job=job,
        source=source,
        reason=reason,
        error_class=error_class,
        org_id=org_id,
        original_key=original_key,
        original_value=original_value,
        keep_content=keep_content,
        received_at_ms=decided_at_ms,
        policy_version=policy_version,
    )
    audit = audit_record(
        job=job,
        source=source,
        subject_id=subject_id or source.id,
        subject_kind=subject_kind if subject_id else "undecodable",
        org_id=org_id,
        routes=("dead_letter",),
        rule_ids=rule_ids,
        reasons=(f"R17: {reason}",),
        consent_version="",
        policy_version=policy_version,
        decided_at_ms=decided_at_ms,
    )
    return letter, audit
