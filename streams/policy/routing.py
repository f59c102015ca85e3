"""The router's policy: where a request log or fine-tune row may go, and why.

``decide_request`` and ``decide_finetune_row`` are pure functions of the record,
the org's data controls as of the record's creation time (R12), a few facts the
job knows (watermark, misuse flags, deletion) and the configuration. They
return the routes and the rule IDs that chose them (R16). The ``*_record``
builders turn a decision into the Avro-shaped output dicts; only
``training_candidate`` copies content into training, and only through the R11
redactor.

Fail closed: every branch that is unsure removes a route, never adds one.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, NamedTuple

from streams.policy.config import PolicyConfig
from streams.policy.models import (
    MAX_TIME_MS,
    MAX_TOKENS,
    DataControls,
    Decision,
    Deployment,
    FineTuneRow,
    InvalidRecord,
    KeyType,
    PersonalInformationRedactor,
    RequestLog,
    RequestSource,
    Route,
)

_DEPLOYMENTS = frozenset(Deployment)
_SOURCES = frozenset(RequestSource)
_KEY_TYPES = frozenset(KeyType)


class WatermarkState(StrEnum):
    PASSED = "passed"
    WAITING = "waiting"
    STALLED = "stalled"


def watermark_state(
    created_at_ms: int, watermark_ms: int | None, now_ms: int, stall_ms: int
) -> WatermarkState:
    """R12: may a record created at ``created_at_ms`` be decided yet?

    PASSED when every control change up to its creation is published; STALLED
    when it has waited longer than the configured bound (then it is decided
    without training, fail closed); WAITING otherwise.
    """
    if watermark_ms is not None and watermark_ms >= created_at_ms:
        return WatermarkState.PASSED
    if now_ms - created_at_ms > stall_ms:
        return WatermarkState.STALLED
    return WatermarkState.WAITING


@dataclass(frozen=True, slots=True)
class RoutingFacts:
    """What the job knows besides the record and its controls."""

    watermark: WatermarkState
    misuse_flag_ids: tuple[str, ...] = ()
    deletion_requested: bool = False
    # R15/R5/R12: False when the facts published before the record was read (deletions,
    # flags, holds, control changes) could not all be read within the bound.
    facts_read: bool = True
    # R16: the record waited longer than the audited bound for those facts.
    waited_for_facts: bool = False


# The reasons of the two facts states, named once for both kinds of record.
_FACTS_UNREAD = (
    "R15/R5: facts published before the record was read (deletions, misuse flags) were "
    "not all read within the bound; content not written (fail closed)"
)
_WAITED_FOR_FACTS = "R12: decided after a long wait for the facts published before it was read"


def validate_request(record: Mapping[str, Any]) -> RequestLog:
    """R17: a decoded request log, checked beyond what Avro types can say."""
    request = RequestLog(**record)
    org = request.org_id or None
    if not request.request_id:
        raise InvalidRecord("empty request_id", org)
    if not request.org_id:
        raise InvalidRecord("empty org_id")
    if request.deployment not in _DEPLOYMENTS:
        raise InvalidRecord("unknown deployment", org)
    if request.source not in _SOURCES:
        raise InvalidRecord("unknown source", org)
    if request.key_type not in _KEY_TYPES:
        raise InvalidRecord("unknown key_type", org)
    if request.created_at_ms <= 0:
        raise InvalidRecord("created_at_ms not positive", org)
    if request.created_at_ms > MAX_TIME_MS:
        raise InvalidRecord("created_at_ms out of range", org)
    if request.input_tokens < 0 or request.output_tokens < 0:
        raise InvalidRecord("negative token count", org)
    if request.input_tokens > MAX_TOKENS or request.output_tokens > MAX_TOKENS:
        raise InvalidRecord("token count out of range", org)
    return request


def validate_finetune_row(record: Mapping[str, Any]) -> FineTuneRow:
    """R17: a decoded fine-tune row, checked beyond its Avro types."""
    row = FineTuneRow(**record)
    org = row.org_id or None
    if not row.dataset_id or row.row_index < 0:
        raise InvalidRecord("bad dataset_id/row_index", org)
    if not row.org_id:
        raise InvalidRecord("empty org_id")
    if row.deployment not in _DEPLOYMENTS:
        raise InvalidRecord("unknown deployment", org)
    if row.uploaded_at_ms <= 0:
        raise InvalidRecord("uploaded_at_ms not positive", org)
    if row.uploaded_at_ms > MAX_TIME_MS:
        raise InvalidRecord("uploaded_at_ms out of range", org)
    return row


# R9: markers of Google Workspace content anywhere in a connector name, separators removed
# ("G Suite" is Workspace's former name; "slack_google_drive" is Drive through Slack).
_WORKSPACE_MARKERS = ("google", "gsuite", "gmail")


def is_workspace_connector(name: str, config: PolicyConfig) -> bool:
    """R9: Google Drive / Workspace content, however the connector is spelled (fail closed)."""
    normal = name.strip().lower().replace("-", "_").replace(" ", "_")
    if normal in config.workspace_connectors:
        return True
    compact = "".join(ch for ch in unicodedata.normalize("NFKC", name).casefold() if ch.isalnum())
    return any(marker in compact for marker in _WORKSPACE_MARKERS)


class RequestShape(NamedTuple):
    """All that ``decide_request`` reads of a request.

    Requests of equal shape, with equal controls, facts and configuration, are routed
    alike: the decision is computed from the shape alone, so a job may reuse it for every
    request of that shape (the router does; most requests share a handful of shapes).
    """

    deployment: str
    carries_content: bool
    connectors: tuple[str, ...]


def request_shape(request: RequestLog) -> RequestShape:
    return RequestShape(request.deployment, request.carries_content, tuple(request.connectors))


def decide_request(
    request: RequestLog, controls: DataControls, facts: RoutingFacts, config: PolicyConfig
) -> Decision:
    """Route one request log by the rules R1-R4, R7, R9, R11-R15."""
    return decide_request_shape(request_shape(request), controls, facts, config)


def decide_request_shape(
    request: RequestShape, controls: DataControls, facts: RoutingFacts, config: PolicyConfig
) -> Decision:
    """``decide_request`` on the shape of a request (see ``RequestShape``)."""
    routes = {Route.USAGE.value}
    rules = ["R3"]  # R3: every request is counted, whatever the org's settings
    reasons: list[str] = []
    if not controls.recorded:
        rules.append("R14")

    def done() -> Decision:
        return Decision(
            routes=frozenset(routes),
            rule_ids=tuple(rules),
            reasons=tuple(reasons),
            consent_version=controls.consent_version,
            retention_days=controls.retention_days,
        )

    # R1: private and third-party deployments never carry content into the pipeline.
    if request.deployment != Deployment.SAAS:
        rules.append("R1")
        if request.carries_content:
            routes.add(Route.DROPPED.value)
            reasons.append("R1: content from a non-SaaS deployment dropped (policy violation)")
        else:
            reasons.append("R1: non-SaaS deployment, usage only")
        return done()

    rules.append("R12")
    if facts.waited_for_facts:
        reasons.append(_WAITED_FOR_FACTS)
    # R2: zero data retention as of creation time: nothing but usage.
    if controls.zero_data_retention:
        rules.append("R2")
        reasons.append("R2: zero data retention in effect at creation; content not written")
        return done()

    # R15: an org being deleted gets nothing new retained or trained on.
    if facts.deletion_requested:
        rules.append("R15")
        reasons.append("R15: account deletion requested; content not written")
        return done()

    # Fail closed: the deletion or flag that would stop this request may be among the
    # facts not read yet, so nothing but usage is written.
    if not facts.facts_read:
        rules += ["R15", "R5"]
        reasons.append(_FACTS_UNREAD)
        return done()

    if facts.watermark == WatermarkState.STALLED:
        # Fail closed: a ZDR or opt-out change may be waiting unpublished, so nothing but
        # usage is written; the audit record lets operators see what the stall cost.
        reasons.append(
            "R12: controls watermark stalled past the bound; settings at creation unknown, "
            "content not written (fail closed)"
        )
        return done()

    # R4 (+ R7 when a contract sets another period): the log store keeps it for its retention.
    routes.add(Route.LOG_STORE.value)
    rules.append("R4")
    if controls.retention_days != config.defaults.retention_days:
        rules.append("R7")

    blockers = _training_blockers(
        controls,
        facts,
        connectors=request.connectors,
        toggle=controls.prompts_generations_training,
        toggle_name="prompts and generations",
        config=config,
    )
    rules.append("R9")
    if blockers:
        reasons.extend(blockers)
    else:
        routes.add(Route.TRAINING_CANDIDATE.value)
        rules.append("R11")
        reasons.append("R9: training candidate under consent " + controls.consent_version)
    return done()


def decide_finetune_row(
    row: FineTuneRow, controls: DataControls, facts: RoutingFacts, config: PolicyConfig
) -> Decision:
    """R10: a fine-tune row is a candidate only under the fine-tune toggle at upload time."""
    routes: set[str] = set()
    rules = ["R10", "R12"]
    reasons: list[str] = []
    if not controls.recorded:
        rules.append("R14")
    if facts.waited_for_facts:
        reasons.append(_WAITED_FOR_FACTS)
    if row.deployment != Deployment.SAAS:
        rules.append("R1")
        reasons.append("R1: content from a non-SaaS deployment dropped (policy violation)")
        routes.add(Route.DROPPED.value)
    elif controls.zero_data_retention:
        rules.append("R2")
        reasons.append("R2: zero data retention in effect at upload; row not written")
        routes.add(Route.DROPPED.value)
    elif not facts.facts_read:
        rules += ["R15", "R5"]
        reasons.append(_FACTS_UNREAD)
        routes.add(Route.DROPPED.value)
    else:
        blockers = _training_blockers(
            controls,
            facts,
            connectors=(),
            toggle=controls.finetune_training,
            toggle_name="fine-tune data",
            config=config,
        )
        if facts.deletion_requested:
            rules.append("R15")
        if blockers:
            reasons.extend(blockers)
            routes.add(Route.DROPPED.value)
        else:
            rules.append("R11")
            routes.add(Route.TRAINING_CANDIDATE.value)
            reasons.append("R10: training candidate under consent " + controls.consent_version)
    return Decision(
        routes=frozenset(routes),
        rule_ids=tuple(rules),
        reasons=tuple(reasons),
        consent_version=controls.consent_version,
        retention_days=controls.retention_days,
    )


def _training_blockers(
    controls: DataControls,
    facts: RoutingFacts,
    *,
    connectors: tuple[str, ...] | list[str],
    toggle: bool,
    toggle_name: str,
    config: PolicyConfig,
) -> list[str]:
    """R9's conditions besides deployment and ZDR; empty when training is allowed."""
    blockers = []
    if facts.watermark != WatermarkState.PASSED:
        blockers.append("R12: controls not known to be complete at creation; not a candidate")
    if not toggle:
        blockers.append(f"R9: '{toggle_name}' training toggle off at creation")
    if controls.training_exclusion:
        blockers.append("R9: contractual training exclusion")
    if any(is_workspace_connector(c, config) for c in connectors):
        blockers.append("R9: Google Drive / Workspace connector content")
    if facts.misuse_flag_ids:
        blockers.append("R9: flagged for misuse (R5)")
    if facts.deletion_requested:
        blockers.append("R15: account deletion requested")
    return blockers


# --- output records ---------------------------------------------------------------


def log_store_record(request: RequestLog, decision: Decision, config: PolicyConfig) -> dict:
    """R4: the retained log, stamped with the retention (R7) that will expire it."""
    return {
        "request_id": request.request_id,
        "org_id": request.org_id,
        "api_key_id": request.api_key_id,
        "key_type": request.key_type,
        "created_at_ms": request.created_at_ms,
        "endpoint": request.endpoint,
        "model": request.model,
        "deployment": request.deployment,
        "source": request.source,
        "connectors": request.connectors,
        "prompt": request.prompt,
        "documents": request.documents,
        "generation": request.generation,
        "input_tokens": request.input_tokens,
        "output_tokens": request.output_tokens,
        "client_ip": request.client_ip,
        "user_id": request.user_id,
        "metadata": request.metadata,
        **log_store_stamp(decision, config),
    }


def log_store_stamp(decision: Decision, config: PolicyConfig) -> dict[str, Any]:
    """What the router adds to a request log to make it a log-store record (R4/R7)."""
    return {
        "retention_days": decision.retention_days,
        "consent_version": decision.consent_version,
        "policy_version": config.policy_version,
    }


def usage_event(request: RequestLog, config: PolicyConfig) -> dict:
    """R3: counts only; no content, API key, user or IP."""
    return {
        "request_id": request.request_id,
        "org_id": request.org_id,
        "endpoint": request.endpoint,
        "model": request.model,
        "deployment": request.deployment,
        "created_at_ms": request.created_at_ms,
        "input_tokens": request.input_tokens,
        "output_tokens": request.output_tokens,
        "policy_version": config.policy_version,
    }


def training_candidate(
    request: RequestLog,
    consent_version: str,
    redactor: PersonalInformationRedactor,
    config: PolicyConfig,
) -> dict:
    """R9 + R11: a prompt/generation pair with personal information stripped first,
    stamped with the consent version of the decision that made it a candidate."""
    counts: dict[str, int] = {}
    prompt = _redacted(request.prompt, redactor, counts)
    generation = _redacted(request.generation, redactor, counts)
    documents = [_redacted(d, redactor, counts) or "" for d in request.documents]
    metadata, meta_counts = redactor.redact_mapping(request.metadata)
    _add(counts, meta_counts)
    return {
        "source_id": request.request_id,
        "kind": "PROMPT_GENERATION",
        "org_id": request.org_id,
        "created_at_ms": request.created_at_ms,
        "model": request.model,
        "prompt": prompt,
        "documents": documents,
        "generation": generation,
        "metadata": metadata,
        "consent_version": consent_version,
        "policy_version": config.policy_version,
        "redaction_counts": counts,
    }


def finetune_candidate(
    row: FineTuneRow,
    consent_version: str,
    redactor: PersonalInformationRedactor,
    config: PolicyConfig,
) -> dict:
    """R10 + R11: a fine-tune row with personal information stripped first."""
    counts: dict[str, int] = {}
    text = _redacted(row.text, redactor, counts)
    return {
        "source_id": row.row_id,
        "kind": "FINETUNE_ROW",
        "org_id": row.org_id,
        "created_at_ms": row.uploaded_at_ms,
        "model": None,
        "prompt": text,
        "documents": [],
        "generation": None,
        "metadata": {},
        "consent_version": consent_version,
        "policy_version": config.policy_version,
        "redaction_counts": counts,
    }


def _redacted(
    text: str | None, redactor: PersonalInformationRedactor, counts: dict[str, int]
) -> str | None:
    if not text:
        return text
    result = redactor.redact(text)
    _add(counts, result.counts)
    return str(result.text)


def _add(total: dict[str, int], more: Mapping[str, int]) -> None:
    for kind, n in more.items():
        total[kind] = total.get(kind, 0) + n
