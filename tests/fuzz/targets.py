"""Fuzz targets: every job's input decoding and validation, over the real codecs and job code.

One target per input topic. A target takes the bytes of one record value, feeds it to the
job code that reads that topic in production (no broker: a ``FakeMessage``, an in-memory
schema registry), and checks the invariants of R17 and R2:

* no exception escapes (a record the job cannot read is a dead letter, never a crash loop);
* nothing of a canary that only ZDR, private and third-party records carry reaches any
  output, unless the record as read is itself allowed to carry content (a valid SaaS
  record of an org without ZDR: a corruption that turns one org's id into another's is
  indistinguishable from a genuine record of that org);
* a control record that fails to decode or validate never changes a setting or a hold.

A breach raises ``Finding`` (its message never contains the record's content).
``benchmarks/fuzz_inputs.py`` runs these under atheris (coverage-guided);
``tests/unit/test_fuzz_inputs.py`` runs each for a few seconds in the suite.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from streams.jobs.retention import RetentionJob, RetentionSettings, decode_control
from streams.jobs.router import Router
from streams.jobs.safety_evaluation import SafetyEvaluationJob
from streams.jobs.usage import UsageJob
from streams.jobs.wiring import PolicyAuditTrail
from streams.kafka.runtime import ConsumedRecord as FakeMessage
from streams.kafka.runtime import JobDriver
from streams.kafka.serde import Contracts, DecodeError, registry_client
from streams.kafka.topics import Topology
from streams.kafka.transactional import Output, resolved
from streams.policy.config import PolicyConfig
from streams.policy.models import (
    DAY_MS,
    ControlsWatermark,
    DataControlChange,
    Deployment,
    InvalidRecord,
)
from streams.policy.redaction import Redactor
from streams.policy.routing import validate_finetune_row, validate_request

NOW = 1_790_000_000_000
CANARY = "FUZZCANARY"  # only in records whose content must never be written (R1/R2)
ZDR_ORG = "org-zdr"


class Finding(AssertionError):
    """An invariant broken; the message names the invariant and the target, no content."""


@dataclass
class Target:
    name: str
    seeds: list[bytes]
    run: Callable[[bytes], None]
    runs: int = 0
    findings: list[str] = field(default_factory=list)


def _request(org: str, rid: str, deployment: str = "SAAS", text: str = "hello") -> dict[str, Any]:
    return {
        "request_id": rid,
        "org_id": org,
        "api_key_id": f"key-{org}",
        "key_type": "PRODUCTION",
        "created_at_ms": NOW - 60_000,
        "endpoint": "chat",
        "model": "command-r",
        "deployment": deployment,
        "source": "API",
        "connectors": ["slack"],
        "prompt": f"prompt {text} mail a@b.example",
        "documents": [f"document {text}"],
        "generation": f"generation {text}",
        "input_tokens": 3,
        "output_tokens": 4,
        "client_ip": "198.51.100.7",
        "user_id": "user-1",
        "metadata": {"note": text},
    }


def _outputs_bytes(outputs: list[Output] | None) -> bytes:
    if not outputs:
        return b""
    return b"\x00".join(
        (out.key.encode() if isinstance(out.key, str) else out.key or b"")
        + b"\x00"
        + (resolved(out.value) or b"")
        for out in outputs
    )


def build_targets() -> dict[str, Target]:
    config = PolicyConfig()
    topics = Topology("fuzz.")
    contracts = Contracts(registry_client(f"mock://fuzz-{uuid.uuid4().hex}"), topics)
    contracts.register_all()
    codec = contracts.codec
    trail = PolicyAuditTrail(config)
    router = Router(config, contracts, redactor=Redactor())
    driver = JobDriver(router, contracts, trail, clock=lambda: NOW)
    router.ledger.apply(
        DataControlChange("zdr-1", ZDR_ORG, NOW - DAY_MS, "c-zdr", zero_data_retention=True)
    )
    router.ledger.advance_watermark(ControlsWatermark(NOW, NOW))
    offsets = iter(range(10**12))

    def message(field_name: str, value: bytes, key: bytes | None = b"k") -> FakeMessage:
        return FakeMessage(getattr(topics, field_name), 0, next(offsets), key, value)

    def content_allowed(org: Any, deployment: Any, at_ms: Any) -> bool:
        """The independent oracle: may a record read as this carry content (R1, R2)?"""
        if deployment != Deployment.SAAS or not isinstance(org, str) or not isinstance(at_ms, int):
            return False
        return not router.ledger.controls_at(org, at_ms).zero_data_retention

    def routed(field_name: str, value: bytes) -> None:
        outputs = driver.process(field_name, b"k", value) or []
        # What the turn after it writes on its own: dead letters of bad state records. (Its
        # retractions of earlier, allowed candidates, after a fact the control targets applied,
        # and its store changelogs carry earlier inputs' ids, not this input's content.)
        later = [o for o in driver.punctuate() if o.topic == topics.dead_letters]
        written = _outputs_bytes(outputs) + _outputs_bytes(later)
        if CANARY.encode() not in written:
            return
        try:
            record = codec(field_name).decode(value)
            if field_name == "request_logs":
                request = validate_request(record)
                ok = content_allowed(request.org_id, request.deployment, request.created_at_ms)
            else:
                row = validate_finetune_row(record)
                ok = content_allowed(row.org_id, row.deployment, row.uploaded_at_ms)
        except (DecodeError, InvalidRecord, TypeError):
            ok = False
        if not ok:
            raise Finding(f"{field_name}: a ZDR/private/third-party canary reached an output")

    def state_snapshot() -> str:
        ledger, holds = router.ledger, router.holds
        return repr(
            (
                sorted((org, len(h.keys)) for org, h in ledger._orgs.items()),
                sorted(ledger._deleted.items()),
                ledger.watermark_ms,
                len(router._watermarks),
                sorted((org, sorted(h)) for org, h in holds._by_org.items()),
                sorted(holds._released.items()),
            )
        )

    def control(field_name: str, value: bytes) -> None:
        before = state_snapshot()
        router.apply_state(message(field_name, value))
        letters = [o for o in driver.punctuate() if o.topic == topics.dead_letters]
        if letters and state_snapshot() != before:
            raise Finding(f"{field_name}: a record that failed validation changed the state")

    retention_codecs = {f: codec(f) for f in ("misuse_flags", "legal_holds", "account_deletions")}
    ops = {"misuse_flags": "flag", "legal_holds": "legal", "account_deletions": "deletion"}
    retention = JobDriver(
        RetentionJob(RetentionSettings(config, topics, Path("unused")), contracts, 6),
        contracts,
        trail,
        clock=lambda: NOW,
    )

    def retention_control(field_name: str, value: bytes) -> None:
        control(field_name, value)  # the router reads these topics too
        try:
            decode_control(retention_codecs[field_name], ops[field_name], value)
        except (DecodeError, InvalidRecord, TypeError):
            return  # the job dead-letters exactly these

    def log_store(value: bytes) -> None:
        # The real job: a bad value is dead-lettered without its bytes and still tracked
        # for deletion (R4 + R17); a good one is tracked. Then our own tombstone.
        retention.process("log_store", b"r-1", value)
        retention.process("log_store", b"r-1", None)
        retention.commit()

    usage = JobDriver(UsageJob(config), contracts, trail, clock=lambda: NOW)
    safety = JobDriver(SafetyEvaluationJob(config, Redactor()), contracts, trail, lambda: NOW)

    def usage_event(value: bytes) -> None:
        usage.process("usage_events", b"org-ok", value)

    def safety_review(value: bytes) -> None:
        outputs = safety.process("safety_review", b"k", value) or []
        written = _outputs_bytes([o for o in outputs if o.topic == topics.safety_evaluation])
        # R8: safety evaluation never carries the customer identifiers of the review.
        for identifier in (b"org-flagged", b"key-org-flagged", b"user-1", b"198.51.100.7"):
            if identifier in written:
                raise Finding("safety_review: a customer identifier reached an output (R8)")

    requests = [
        _request(ZDR_ORG, "r-zdr", text=CANARY),
        _request("org-private", "r-private", deployment="PRIVATE", text=CANARY),
        _request("org-3p", "r-3p", deployment="THIRD_PARTY_CLOUD", text=CANARY),
        _request("org-ok", "r-ok"),
    ]
    rows = [
        {
            "dataset_id": f"ds-{org}",
            "row_index": 1,
            "org_id": org,
            "uploaded_at_ms": NOW - 60_000,
            "deployment": deployment,
            "text": text,
        }
        for org, deployment, text in (
            (ZDR_ORG, "SAAS", f"row {CANARY}"),
            ("org-private", "PRIVATE", f"row {CANARY}"),
            ("org-ok", "SAAS", "row text"),
        )
    ]
    flag = {
        "flag_id": "f-1",
        "action": "RAISE",
        "scope": "API_KEY",
        "org_id": "org-ok",
        "request_id": None,
        "api_key_id": "key-org-ok",
        "window_start_ms": NOW - DAY_MS,
        "window_end_ms": NOW,
        "reason": "abuse",
        "at_ms": NOW,
    }
    hold = {
        "hold_id": "h-1",
        "action": "PLACE",
        "org_id": "org-ok",
        "window_start_ms": NOW - DAY_MS,
        "window_end_ms": NOW,
        "matter": "m-1",
        "at_ms": NOW,
    }
    log_value = {
        **_request("org-ok", "r-1"),
        "retention_days": 30,
        "consent_version": "c-1",
        "policy_version": "p-1",
    }
    log_value.pop("deployment")
    review = {
        "flag_id": "f-1",
        "flag_reason": "abuse",
        "flagged_at_ms": NOW,
        "request_id": "r-1",
        "org_id": "org-flagged",
        "api_key_id": "key-org-flagged",
        "created_at_ms": NOW - 60_000,
        "endpoint": "chat",
        "model": "command-r",
        "source": "API",
        "prompt": "call jane at +1 415 555 0100",
        "documents": [],
        "generation": "ok",
        "client_ip": "198.51.100.7",
        "user_id": "user-1",
        "metadata": {},
        "policy_version": "p-1",
    }
    event = {
        "request_id": "r-1",
        "org_id": "org-ok",
        "endpoint": "chat",
        "model": "command-r",
        "deployment": "SAAS",
        "created_at_ms": NOW - 60_000,
        "input_tokens": 3,
        "output_tokens": 4,
        "policy_version": "p-1",
    }
    change = {
        "change_id": "c-2",
        "org_id": "org-ok",
        "effective_at_ms": NOW - DAY_MS,
        "consent_version": "v2",
        "prompts_generations_training": False,
        "finetune_training": None,
        "zero_data_retention": None,
        "retention_days": 90,
        "training_exclusion": None,
        "paying_customer": True,
    }

    def seeds(field_name: str, *records: dict[str, Any]) -> list[bytes]:
        return [codec(field_name).encode(r) for r in records]

    targets = [
        Target(
            "request_logs", seeds("request_logs", *requests), lambda v: routed("request_logs", v)
        ),
        Target(
            "finetune_rows", seeds("finetune_rows", *rows), lambda v: routed("finetune_rows", v)
        ),
        Target(
            "data_controls", seeds("data_controls", change), lambda v: control("data_controls", v)
        ),
        Target(
            "controls_watermark",
            seeds("controls_watermark", {"watermark_ms": NOW, "published_at_ms": NOW}),
            lambda v: control("controls_watermark", v),
        ),
        Target(
            "misuse_flags",
            seeds("misuse_flags", flag),
            lambda v: retention_control("misuse_flags", v),
        ),
        Target(
            "legal_holds", seeds("legal_holds", hold), lambda v: retention_control("legal_holds", v)
        ),
        Target(
            "account_deletions",
            seeds(
                "account_deletions",
                {"deletion_id": "d-1", "org_id": "org-ok", "requested_at_ms": NOW},
            ),
            lambda v: retention_control("account_deletions", v),
        ),
        Target("log_store", seeds("log_store", log_value), log_store),
        Target("usage_events", seeds("usage_events", event), usage_event),
        Target("safety_review", seeds("safety_review", review), safety_review),
    ]
    return {t.name: t for t in targets}


def finding_line(target: str, error: BaseException) -> str:
    """One line for a finding: the target, the invariant or the exception's type and place;
    never the input (it may carry a canary)."""
    if isinstance(error, Finding):
        return json.dumps({"target": target, "finding": str(error)})
    tb = error.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    where = f"{tb.tb_frame.f_code.co_filename}:{tb.tb_lineno}" if tb is not None else "?"
    return json.dumps(
        {"target": target, "finding": f"uncaught {type(error).__name__}", "where": where}
    )
