"""The router on the real broker: every rule it enforces, asserted on the real output topics."""

from __future__ import annotations

import io
import json
import struct
import time
from typing import Any

import fastavro
import pytest

from streams.jobs.router import Router, build_router_loop
from streams.policy.config import MIGRATION_CUTOFF_MS
from streams.policy.models import DAY_MS
from tests.integration.conftest import Stack

pytestmark = pytest.mark.integration

NOW = int(time.time() * 1000)
CREATED = NOW - 10 * 60_000


def request(org: str, rid: str, created: int = CREATED, **overrides: Any) -> dict[str, Any]:
    base = {
        "request_id": rid,
        "org_id": org,
        "api_key_id": f"key-{org}",
        "key_type": "PRODUCTION",
        "created_at_ms": created,
        "endpoint": "chat",
        "model": "command-r",
        "deployment": "SAAS",
        "source": "API",
        "connectors": [],
        "prompt": f"prompt of {rid} CANARY-{rid}",
        "documents": [f"document of {rid} CANARY-{rid}"],
        "generation": f"generation of {rid} CANARY-{rid}",
        "input_tokens": 11,
        "output_tokens": 22,
        "client_ip": "198.51.100.7",
        "user_id": "user-1",
        "metadata": {"note": f"CANARY-{rid}"},
    }
    base.update(overrides)
    return base


def change(org: str, effective: int, cid: str, **fields: Any) -> dict[str, Any]:
    record: dict[str, Any] = {
        "change_id": cid,
        "org_id": org,
        "effective_at_ms": effective,
        "consent_version": f"consent-{cid}",
    }
    for name in (
        "prompts_generations_training",
        "finetune_training",
        "zero_data_retention",
        "retention_days",
        "training_exclusion",
        "paying_customer",
    ):
        record[name] = fields.get(name)
    return record


def watermark(stack: Stack, at_ms: int) -> None:
    stack.produce(
        "controls_watermark", [("watermark", {"watermark_ms": at_ms, "published_at_ms": at_ms})]
    )


def run_router(stack: Stack, decisions: int, timeout_s: float = 60.0, **kwargs: Any) -> Router:
    loop, router = build_router_loop(stack.settings(), **kwargs)
    deadline = time.monotonic() + timeout_s
    loop.run(until=lambda: loop.decided >= decisions or time.monotonic() > deadline)
    assert loop.decided >= decisions, loop.summary()
    return router


def by_key(records: list[tuple[str | None, Any]]) -> dict[str | None, Any]:
    return dict(records)


def test_router_routes_each_rule_R1_R2_R3_R4_R7_R9_R11_R13_R14_R15_R16(stack: Stack) -> None:
    """One request per case on the real broker; outputs checked topic by topic."""
    stack.produce(
        "data_controls",
        [
            (None, change("zdr", CREATED - DAY_MS, "z1", zero_data_retention=True)),
            (None, change("optout", CREATED - DAY_MS, "o1", prompts_generations_training=False)),
            (None, change("contract", CREATED - DAY_MS, "c1", retention_days=90)),
            (None, change("excluded", CREATED - DAY_MS, "e1", training_exclusion=True)),
            # R13: an opt-out recorded before the 2023-08-10 migration is kept, not reset.
            (
                None,
                change(
                    "legacy",
                    MIGRATION_CUTOFF_MS - 30 * DAY_MS,
                    "l1",
                    prompts_generations_training=False,
                ),
            ),
        ],
    )
    stack.produce(
        "account_deletions",
        [
            (
                "deleted",
                {"deletion_id": "d1", "org_id": "deleted", "requested_at_ms": CREATED - 1000},
            )
        ],
    )
    stack.produce(
        "misuse_flags",
        [
            (
                "f1",
                {
                    "flag_id": "f1",
                    "action": "RAISE",
                    "scope": "REQUEST",
                    "org_id": "flagged",
                    "request_id": "r-flagged",
                    "api_key_id": None,
                    "window_start_ms": None,
                    "window_end_ms": None,
                    "reason": "abuse",
                    "at_ms": CREATED,
                },
            )
        ],
    )
    watermark(stack, NOW)
    cases = {
        "r-default": request("default", "r-default"),
        "r-zdr": request("zdr", "r-zdr"),
        "r-optout": request("optout", "r-optout"),
        "r-private": request("private", "r-private", deployment="PRIVATE"),
        "r-thirdparty": request("tp", "r-thirdparty", deployment="THIRD_PARTY_CLOUD"),
        "r-drive": request("default", "r-drive", connectors=["Google Drive"], source="SLACK_APP"),
        "r-contract": request("contract", "r-contract"),
        "r-excluded": request("excluded", "r-excluded"),
        "r-legacy": request("legacy", "r-legacy"),
        "r-deleted": request("deleted", "r-deleted"),
        "r-flagged": request("flagged", "r-flagged"),
        "r-pii": request(
            "default", "r-pii", prompt="mail jane.doe@example.com or call +1 415 555 0100"
        ),
    }
    stack.produce("request_logs", [(rid, r) for rid, r in cases.items()])
    run_router(stack, decisions=len(cases))

    log_store = by_key(stack.read("log_store"))
    candidates = by_key(stack.read("training_candidates"))
    usage = stack.read("usage_events")
    audit = by_key(stack.read("audit"))

    # R3: every request is counted, whatever its org's settings, with no identifiers.
    assert sorted(u["request_id"] for _, u in usage) == sorted(cases)
    assert all(set(u) >= {"org_id", "input_tokens"} and "api_key_id" not in u for _, u in usage)
    # R4: SaaS requests that may be logged are in the log store.
    assert set(log_store) == {
        "r-default",
        "r-optout",
        "r-drive",
        "r-contract",
        "r-excluded",
        "r-legacy",
        "r-flagged",
        "r-pii",
    }
    # R7: contractual retention stamped on the record.
    assert log_store["r-contract"]["retention_days"] == 90
    assert log_store["r-default"]["retention_days"] == 30
    # R9 / R14: only requests meeting every R9 condition become candidates.
    assert set(candidates) == {"r-default", "r-pii", "r-contract"}
    assert candidates["r-default"]["consent_version"] == "default"
    assert candidates["r-default"]["policy_version"] == stack.config.policy_version
    # R11: personal information stripped, typed placeholders, counts recorded.
    pii = candidates["r-pii"]
    assert "jane.doe@example.com" not in pii["prompt"] and "[EMAIL]" in pii["prompt"]
    assert pii["redaction_counts"].get("EMAIL") == 1
    # R1 / R2 / R15: no content of ZDR, private, third-party or deleted orgs anywhere.
    for rid in ("r-zdr", "r-private", "r-thirdparty", "r-deleted"):
        for field in ("log_store", "training_candidates", "audit", "usage_events", "dead_letters"):
            assert not any(f"CANARY-{rid}".encode() in raw for raw in stack.raw(field)), (
                rid,
                field,
            )
    # R16: one audit record per decision, naming its rules, with no content.
    assert set(audit) == set(cases)
    assert "R2" in audit["r-zdr"]["rule_ids"] and audit["r-zdr"]["routes"] == ["usage"]
    assert "R1" in audit["r-private"]["rule_ids"] and "dropped" in audit["r-private"]["routes"]
    assert "R15" in audit["r-deleted"]["rule_ids"]
    assert "R14" in audit["r-default"]["rule_ids"]
    assert any("toggle off" in r for r in audit["r-legacy"]["reasons"])
    assert any("Workspace" in r for r in audit["r-drive"]["reasons"])
    assert any("misuse" in r for r in audit["r-flagged"]["reasons"])
    for raw in stack.raw("audit"):
        assert b"CANARY" not in raw


def test_late_control_change_is_honoured_R12(stack: Stack) -> None:
    """R12: requests wait for the watermark; a change published late still routes them."""
    opt_in = CREATED
    before = request("late", "r-before", created=opt_in - 60_000)
    after = request("late", "r-after", created=opt_in + 60_000)
    stack.produce(
        "data_controls",
        [(None, change("late", CREATED - DAY_MS, "off", prompts_generations_training=False))],
    )
    stack.produce("request_logs", [("r-before", before), ("r-after", after)])
    # The opt-in reaches the pipeline after the requests; only then the watermark moves.
    stack.produce(
        "data_controls", [(None, change("late", opt_in, "on", prompts_generations_training=True))]
    )
    watermark(stack, NOW)
    run_router(stack, decisions=2)
    candidates = by_key(stack.read("training_candidates"))
    assert set(candidates) == {"r-after"}
    assert candidates["r-after"]["consent_version"] == "consent-on"
    # R16: anyone can ask why; the answer comes from the audit topic.
    from streams.cli import explain
    from streams.jobs.audit_index import render_text

    why = render_text(explain("r-before", stack.settings()))
    assert "R12" in why and "toggle off" in why and "consent-off" in why
    assert "prompt of" not in why


def test_stalled_watermark_fails_closed_R12(stack: Stack) -> None:
    """R12: no watermark past creation within the stall bound: usage only, fail closed."""
    from dataclasses import replace

    stack.config = replace(stack.config, watermark_stall_ms=1_000)
    watermark(stack, CREATED - 60_000)
    stack.produce("request_logs", [("r-stall", request("default", "r-stall"))])
    run_router(stack, decisions=1)
    assert by_key(stack.read("training_candidates")) == {}
    assert by_key(stack.read("log_store")) == {}
    assert len(stack.read("usage_events")) == 1
    audit = by_key(stack.read("audit"))
    assert "R12" in audit["r-stall"]["rule_ids"]
    assert any("stalled" in r for r in audit["r-stall"]["reasons"])


def test_finetune_rows_follow_the_finetune_toggle_R10(stack: Stack) -> None:
    """R10: fine-tune rows become candidates only under the fine-tune toggle at upload."""
    stack.produce(
        "data_controls", [(None, change("ft-off", CREATED - DAY_MS, "ft", finetune_training=False))]
    )
    watermark(stack, NOW)
    rows = [
        (
            "ds1:0",
            {
                "dataset_id": "ds1",
                "row_index": 0,
                "org_id": "ft-on",
                "uploaded_at_ms": CREATED,
                "deployment": "SAAS",
                "text": "reach me at bob@example.org",
            },
        ),
        (
            "ds2:0",
            {
                "dataset_id": "ds2",
                "row_index": 0,
                "org_id": "ft-off",
                "uploaded_at_ms": CREATED,
                "deployment": "SAAS",
                "text": "row text",
            },
        ),
    ]
    stack.produce("finetune_rows", rows)
    run_router(stack, decisions=2)
    candidates = by_key(stack.read("training_candidates"))
    assert set(candidates) == {"ds1:0"}
    assert "bob@example.org" not in candidates["ds1:0"]["prompt"]
    assert candidates["ds1:0"]["kind"] == "FINETUNE_ROW"


def _other_schema_bytes(stack: Stack, schema: dict[str, Any], record: dict[str, Any]) -> bytes:
    from confluent_kafka.schema_registry import Schema

    schema_id = stack.contracts.registry.register_schema(
        f"{stack.topology.request_logs}-other", Schema(json.dumps(schema), "AVRO")
    )
    out = io.BytesIO()
    out.write(struct.pack(">bI", 0, schema_id))
    fastavro.schemaless_writer(out, fastavro.parse_schema(schema), record)
    return out.getvalue()


def test_bad_input_goes_to_dead_letters_and_the_job_keeps_running_R17_R16(stack: Stack) -> None:
    """R17: garbage, unknown schema id, missing fields, oversize, invalid UTF-8, invalid values."""
    from dataclasses import replace

    stack.config = replace(stack.config, max_record_bytes=100_000)
    watermark(stack, NOW)
    stack.produce(
        "data_controls", [(None, change("zdr", CREATED - DAY_MS, "z", zero_data_retention=True))]
    )
    codec = stack.contracts.codec("request_logs")
    good = codec.encode(request("default", "r-good"))
    missing = _other_schema_bytes(
        stack,
        {"type": "record", "name": "Partial", "fields": [{"name": "request_id", "type": "string"}]},
        {"request_id": "r-missing"},
    )
    invalid_utf8 = good.replace(b"prompt of r-good", b"prompt of r-\xff\xfe\xfd")
    oversize = codec.encode(request("default", "r-big", prompt="x" * 200_000))
    zdr_invalid = codec.encode(request("zdr", "r-zdr-bad", deployment="MOON"))
    stack.produce(
        "request_logs",
        [
            ("garbage", b"\x00\x01not avro at all"),
            ("no-magic", b"hello world, plainly not framed"),
            ("unknown-id", struct.pack(">bI", 0, 987654) + good[5:]),
            ("missing", missing),
            ("utf8", invalid_utf8),
            ("big", oversize),
            ("zdr-bad", zdr_invalid),
            ("r-good", good),
        ],
    )
    run_router(stack, decisions=8)
    letters = [v for _, v in stack.read("dead_letters")]
    assert len(letters) == 7
    reasons = " | ".join(letter["reason"] for letter in letters)
    for expected in (
        "magic",
        "unknown schema id",
        "invalid UTF-8",
        "oversize",
        "unknown deployment",
    ):
        assert expected in reasons, reasons
    for letter in letters:
        assert letter["source_topic"] == stack.topology.request_logs
        assert letter["source_offset"] >= 0
    zdr_letter = next(letter for letter in letters if letter["org_id"] == "zdr")
    assert zdr_letter["content_withheld"] and zdr_letter["original_value"] is None  # R2
    # R2 fail closed: a record that failed validation has no trustworthy org id, so no dead
    # letter of the router carries the original bytes, whatever org it names.
    assert all(letter["original_value"] is None for letter in letters)
    # The good record after the bad ones was still routed.
    assert "r-good" in by_key(stack.read("log_store"))
    # R16: a record that failed validation but whose request id is readable is audited under
    # that id (``streams explain r-zdr-bad`` finds it), with its coordinates.
    audit = by_key(stack.read("audit"))
    assert audit["r-zdr-bad"]["routes"] == ["dead_letter"]
    assert audit["r-zdr-bad"]["subject_kind"] == "request"
    assert audit["r-zdr-bad"]["source_topic"] == stack.topology.request_logs


def test_router_metrics_count_routes_rules_and_dead_letters_without_content_R16(
    stack: Stack,
) -> None:
    """Operational metrics (Prometheus text): records in/out, decisions per rule, dead letters;
    never a prompt, org, key or request id in a label."""
    from streams.kafka.metrics import JobMetrics

    metrics = JobMetrics("router")
    watermark(stack, NOW)
    stack.produce("request_logs", [("r-m", request("metrics-org", "r-m")), ("bad", b"garbage!")])
    loop, router = build_router_loop(stack.settings(), metrics=metrics)
    deadline = time.monotonic() + 60
    loop.run(until=lambda: loop.decided >= 2 or time.monotonic() > deadline)
    loop.publish_metrics()
    text = metrics.exposition().decode()
    assert 'rule="R9"' in text and 'rule="R17"' in text
    assert 'route="log_store"' in text
    assert "DecodeError" in text
    for secret in ("CANARY", "metrics-org", "key-metrics-org", "r-m", "198.51.100.7"):
        assert secret not in text
