"""The router's pure policy core: decide_request / decide_finetune_row and the record builders.

Every test names the rule(s) it checks (R1-R4, R7, R9-R17 of ../shared/POLICY.md).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from streams.policy.config import DEFAULT_CONTROLS, MIGRATION_CUTOFF_MS, POLICY_VERSION
from streams.policy.holds import HoldIndex
from streams.policy.models import (
    DAY_MS,
    HOUR_MS,
    ControlsWatermark,
    DataControlChange,
    DataControls,
    Deployment,
    FineTuneRow,
    FlagAction,
    HoldAction,
    LegalHold,
    MisuseFlag,
    RequestLog,
    RequestSource,
    Route,
)
from streams.policy.routing import (
    InvalidRecord,
    RoutingFacts,
    WatermarkState,
    decide_finetune_row,
    decide_request,
    finetune_candidate,
    is_workspace_connector,
    log_store_record,
    training_candidate,
    usage_event,
    validate_finetune_row,
    validate_request,
    watermark_state,
)
from tests.unit.strategies import (
    CONFIG,
    CONTENT_ROUTES,
    OTHER_CONNECTORS,
    PROPS,
    SENTINEL,
    T0,
    WORKSPACE_SPELLINGS,
    FakeRedactor,
    apply_event,
    change,
    contains_sentinel,
    controls,
    data_controls,
    decide,
    decide_row,
    facts,
    finetune_record,
    finetune_row,
    finetune_rows,
    flag,
    new_ledger,
    org_events,
    request_log,
    request_logs,
    request_record,
    routing_facts,
    small_times,
    strings_in,
    unique_changes,
)

USAGE, LOG, TRAIN, DROPPED = (
    Route.USAGE.value,
    Route.LOG_STORE.value,
    Route.TRAINING_CANDIDATE.value,
    Route.DROPPED.value,
)
NON_SAAS = [Deployment.PRIVATE.value, Deployment.THIRD_PARTY_CLOUD.value]
STALL = CONFIG.watermark_stall_ms


def is_workspace_name(name: str) -> bool:
    """The test's own, deliberately broad, notion of Google Workspace content (R9)."""
    compact = "".join(ch for ch in name.lower() if ch.isalnum())
    return any(m in compact for m in ("google", "gmail", "gsuite"))


def all_r9_conditions(request: RequestLog, c: DataControls, f: RoutingFacts) -> bool:
    return (
        request.deployment == Deployment.SAAS
        and not c.zero_data_retention
        and c.prompts_generations_training
        and not c.training_exclusion
        and not any(is_workspace_name(x) for x in request.connectors)
        and not f.misuse_flag_ids
        and not f.deletion_requested
        and f.facts_read
        and f.watermark == WatermarkState.PASSED
    )


# === R1 deployment ===


@pytest.mark.parametrize("deployment", NON_SAAS)
def test_r1_non_saas_content_is_dropped_audited_and_usage_still_flows(deployment: str) -> None:
    """R1 + R3: content from a private / third-party-cloud deployment is DROPPED (never log
    store or training) with an R1 reason, while its usage is still counted."""
    decision = decide_request(request_log(deployment=deployment), controls(), facts(), CONFIG)
    assert decision.routes == {USAGE, DROPPED}
    assert "R1" in decision.rule_ids and "R3" in decision.rule_ids
    assert any(r.startswith("R1:") and "dropped" in r for r in decision.reasons)


@pytest.mark.parametrize("deployment", NON_SAAS)
def test_r1_non_saas_without_content_is_usage_only(deployment: str) -> None:
    """R1 + R3: a non-SaaS request carrying only counts is usage, nothing dropped."""
    request = request_log(
        deployment=deployment, prompt=None, generation="", documents=[], metadata={}
    )
    assert not request.carries_content
    decision = decide_request(request, controls(), facts(), CONFIG)
    assert decision.routes == {USAGE}
    assert "R1" in decision.rule_ids


@pytest.mark.parametrize(
    "content",
    [
        {"prompt": "p"},
        {"generation": "g"},
        {"documents": ["d"]},
        {"documents": [""]},
        {"metadata": {"k": "v"}},
    ],
)
def test_r1_any_single_content_field_counts_as_content(content: dict[str, Any]) -> None:
    """R1: prompt, generation, documents or metadata alone make a non-SaaS record a violation."""
    empty = {"prompt": None, "generation": None, "documents": [], "metadata": {}}
    request = request_log(deployment=Deployment.PRIVATE.value, **{**empty, **content})
    assert DROPPED in decide_request(request, controls(), facts(), CONFIG).routes


@PROPS
@given(request_logs(), data_controls, routing_facts)
def test_r1_property_non_saas_never_reaches_log_store_or_training(
    request: RequestLog, c: DataControls, f: RoutingFacts
) -> None:
    """R1: for any controls/facts, a non-SaaS request gets usage (+ dropped iff content)."""
    assume(request.deployment != Deployment.SAAS)
    decision = decide_request(request, c, f, CONFIG)
    expected = {USAGE, DROPPED} if request.carries_content else {USAGE}
    assert decision.routes == expected
    assert "R1" in decision.rule_ids


@pytest.mark.parametrize("deployment", NON_SAAS)
def test_r1_non_saas_finetune_row_is_dropped(deployment: str) -> None:
    """R1 + R10: fine-tune content from a non-SaaS deployment is dropped, never a candidate."""
    decision = decide_finetune_row(finetune_row(deployment=deployment), controls(), facts(), CONFIG)
    assert decision.routes == {DROPPED}
    assert "R1" in decision.rule_ids and "R10" in decision.rule_ids


# === R2 zero data retention ===


def test_r2_zdr_at_creation_is_usage_only() -> None:
    """R2 + R3: an org with ZDR in effect at creation gets only the usage route."""
    decision = decide_request(request_log(), controls(zero_data_retention=True), facts(), CONFIG)
    assert decision.routes == {USAGE}
    assert "R2" in decision.rule_ids and "R3" in decision.rule_ids
    assert any(r.startswith("R2:") for r in decision.reasons)


@PROPS
@given(request_logs(), data_controls, routing_facts)
def test_r2_property_zdr_orgs_content_never_appears_in_any_route(
    request: RequestLog, c: DataControls, f: RoutingFacts
) -> None:
    """R2: for any request/controls/facts with ZDR on, no content route is taken: SaaS gets
    exactly {usage}; a non-SaaS request may only add the content-free "dropped" marker (R1)."""
    decision = decide_request(request, replace(c, zero_data_retention=True), f, CONFIG)
    assert not decision.routes & CONTENT_ROUTES
    if request.deployment == Deployment.SAAS:
        assert decision.routes == {USAGE}
        assert "R2" in decision.rule_ids
    else:
        assert decision.routes <= {USAGE, DROPPED}


@PROPS
@given(finetune_rows(), data_controls, routing_facts)
def test_r2_r10_property_zdr_fine_tune_rows_never_become_candidates(
    row: FineTuneRow, c: DataControls, f: RoutingFacts
) -> None:
    """R2 + R10: a ZDR org's fine-tune rows are dropped, never training candidates."""
    decision = decide_finetune_row(row, replace(c, zero_data_retention=True), f, CONFIG)
    assert decision.routes == {DROPPED}


def test_r2_r12_zdr_applies_by_creation_time_not_arrival() -> None:
    """R2 + R12: ZDR effective at or before creation -> usage only; ZDR effective after
    creation does not reach back; ZDR switched off later does not release earlier records."""
    ledger = new_ledger(watermark_ms=T0 + 10 * HOUR_MS)
    ledger.apply(change(effective_at_ms=T0, change_id="on", zero_data_retention=True))
    ledger.apply(
        change(effective_at_ms=T0 + 5 * HOUR_MS, change_id="off", zero_data_retention=False)
    )
    holds = HoldIndex()
    now = T0 + 10 * HOUR_MS
    assert decide(ledger, holds, request_log(created_at_ms=T0 - 1), now).has(LOG)
    assert decide(ledger, holds, request_log(created_at_ms=T0), now).routes == {USAGE}
    assert decide(ledger, holds, request_log(created_at_ms=T0 + HOUR_MS), now).routes == {USAGE}
    assert decide(ledger, holds, request_log(created_at_ms=T0 + 5 * HOUR_MS), now).has(LOG)


# === R3 usage ===


@PROPS
@given(request_logs(), data_controls, routing_facts)
def test_r3_property_every_request_decision_includes_usage(
    request: RequestLog, c: DataControls, f: RoutingFacts
) -> None:
    """R3: whatever the org's settings, the deployment or the facts, usage is counted."""
    decision = decide_request(request, c, f, CONFIG)
    assert USAGE in decision.routes
    assert decision.rule_ids[0] == "R3"


@PROPS
@given(request_logs())
def test_r3_usage_event_carries_counts_but_no_content_or_identifiers(request: RequestLog) -> None:
    """R3: usage events carry tokens per org/endpoint/model/time, never content, key, user, IP."""
    event = usage_event(request, CONFIG)
    assert set(event) == {
        "request_id",
        "org_id",
        "endpoint",
        "model",
        "deployment",
        "created_at_ms",
        "input_tokens",
        "output_tokens",
        "policy_version",
    }
    assert (event["input_tokens"], event["output_tokens"]) == (
        request.input_tokens,
        request.output_tokens,
    )
    assert not contains_sentinel(event)
    values = set(strings_in(event))
    assert request.api_key_id not in values
    assert request.client_ip is None or request.client_ip not in values
    assert request.user_id is None or request.user_id not in values


# === R4 / R7 log store and retention ===


def test_r4_saas_non_zdr_request_goes_to_log_store_for_30_days() -> None:
    """R4: a SaaS, non-ZDR, non-deleted request is kept in the log store for 30 days."""
    decision = decide_request(request_log(), controls(), facts(), CONFIG)
    assert LOG in decision.routes
    assert "R4" in decision.rule_ids and "R7" not in decision.rule_ids
    assert decision.retention_days == 30
    record = log_store_record(request_log(), decision, CONFIG)
    assert record["retention_days"] == 30
    assert record["prompt"] == request_log().prompt  # the log store is where content is kept
    assert record["consent_version"] == "consent-v7"
    assert record["policy_version"] == POLICY_VERSION


@pytest.mark.parametrize("days", [1, 7, 90, 365])
def test_r7_contractual_retention_is_stamped_and_named(days: int) -> None:
    """R4 + R7: a contractual period replaces the 30 days and R7 joins the rule ids."""
    decision = decide_request(request_log(), controls(retention_days=days), facts(), CONFIG)
    assert decision.retention_days == days
    assert "R4" in decision.rule_ids and "R7" in decision.rule_ids
    assert log_store_record(request_log(), decision, CONFIG)["retention_days"] == days


def test_r7_r12_contractual_retention_applies_to_records_created_while_in_effect() -> None:
    """R7 + R12: the retention in effect at creation is the one stamped; a later contract
    does not reach back."""
    ledger = new_ledger(watermark_ms=T0 + DAY_MS)
    ledger.apply(change(effective_at_ms=T0, change_id="contract", retention_days=180))
    before = decide(ledger, HoldIndex(), request_log(created_at_ms=T0 - 1), T0 + DAY_MS)
    after = decide(ledger, HoldIndex(), request_log(created_at_ms=T0), T0 + DAY_MS)
    assert before.retention_days == 30 and "R7" not in before.rule_ids
    assert after.retention_days == 180 and "R7" in after.rule_ids


@PROPS
@given(request_logs(), data_controls, routing_facts)
def test_r4_property_log_store_exactly_for_saas_non_zdr_non_deleted(
    request: RequestLog, c: DataControls, f: RoutingFacts
) -> None:
    """R4 (+R1, R2, R12, R15): log store iff SaaS, not ZDR, no deletion, the facts before it
    read and the watermark did not stall (fail closed); training blockers (toggle, misuse,
    connectors, a watermark still waiting) never remove the log store; R7 iff non-default."""
    decision = decide_request(request, c, f, CONFIG)
    expected = (
        request.deployment == Deployment.SAAS
        and not c.zero_data_retention
        and not f.deletion_requested
        and f.facts_read
        and f.watermark != WatermarkState.STALLED
    )
    assert decision.has(LOG) == expected
    if expected:
        assert decision.retention_days == c.retention_days
        assert ("R7" in decision.rule_ids) == (c.retention_days != 30)
        assert "R4" in decision.rule_ids


# === R9 training candidates ===


def test_r9_all_conditions_true_makes_a_candidate_with_consent_version() -> None:
    """R9 + R11: SaaS, no ZDR, toggle on, no exclusion, no Workspace connector, no flag, not
    deleted, watermark passed -> training candidate carrying the consent version."""
    decision = decide_request(request_log(connectors=["slack"]), controls(), facts(), CONFIG)
    assert decision.routes == {USAGE, LOG, TRAIN}
    assert decision.consent_version == "consent-v7"
    for rule in ("R3", "R4", "R9", "R11", "R12"):
        assert rule in decision.rule_ids
    assert any("consent-v7" in r for r in decision.reasons)


R9_BLOCKERS: list[tuple[str, dict[str, Any], dict[str, Any], dict[str, Any]]] = [
    ("toggle off", {}, {"prompts_generations_training": False}, {}),
    ("training exclusion", {}, {"training_exclusion": True}, {}),
    ("misuse flag", {}, {}, {"misuse_flag_ids": ("flag-1",)}),
    ("watermark waiting", {}, {}, {"watermark": WatermarkState.WAITING}),
] + [
    (f"connector {name!r}", {"connectors": ["slack", name]}, {}, {}) for name in WORKSPACE_SPELLINGS
]


@pytest.mark.parametrize(
    ("name", "req", "ctl", "fct"), R9_BLOCKERS, ids=[b[0] for b in R9_BLOCKERS]
)
def test_r9_each_blocker_alone_blocks_candidacy_but_keeps_log_store(
    name: str, req: dict[str, Any], ctl: dict[str, Any], fct: dict[str, Any]
) -> None:
    """R9 (+R5, R12): any single failed condition removes training; the log store stays (R4)."""
    decision = decide_request(request_log(**req), controls(**ctl), facts(**fct), CONFIG)
    assert decision.routes == {USAGE, LOG}, name
    assert "R9" in decision.rule_ids
    assert "R11" not in decision.rule_ids
    assert decision.reasons


@pytest.mark.parametrize(
    ("name", "req", "ctl", "fct"),
    [
        ("non-SaaS", {"deployment": Deployment.PRIVATE.value}, {}, {}),
        ("third-party cloud", {"deployment": Deployment.THIRD_PARTY_CLOUD.value}, {}, {}),
        ("zdr", {}, {"zero_data_retention": True}, {}),
        ("deletion requested", {}, {}, {"deletion_requested": True}),
    ],
)
def test_r9_r1_r2_r15_blockers_remove_training_and_log_store(
    name: str, req: dict[str, Any], ctl: dict[str, Any], fct: dict[str, Any]
) -> None:
    """R9 with R1 / R2 / R15: these conditions block candidacy and retention alike."""
    decision = decide_request(request_log(**req), controls(**ctl), facts(**fct), CONFIG)
    assert TRAIN not in decision.routes and LOG not in decision.routes, name
    assert USAGE in decision.routes


@pytest.mark.parametrize("source", list(RequestSource))
def test_r9_google_drive_blocks_whatever_the_surface_slack_app_included(
    source: RequestSource,
) -> None:
    """R9: Google Workspace data is never training data, from the API, playground, chat app
    or the Slack app."""
    decision = decide_request(
        request_log(source=source.value, connectors=["Google Drive"]), controls(), facts(), CONFIG
    )
    assert TRAIN not in decision.routes
    assert any("Google Drive" in r for r in decision.reasons)


@pytest.mark.parametrize(
    "name",
    list(WORKSPACE_SPELLINGS)
    + [
        "G Suite",
        "gsuite",
        "GSUITE",
        "slack_google_drive",
        "Slack - Google Drive",
        "drive.google.com",
        "\tGoogle\u00a0Drive\n",
        "\uff27\uff4f\uff4f\uff47\uff4c\uff45 Drive",
    ],
)
def test_r9_workspace_connector_recognised_in_any_spelling(name: str) -> None:
    """R9 (fail closed): Google Drive / Workspace (formerly G Suite) in any case, separator or
    surface prefix is recognised as Workspace content."""
    assert is_workspace_connector(name, CONFIG)


@pytest.mark.parametrize("name", OTHER_CONNECTORS)
def test_r9_other_connectors_do_not_block(name: str) -> None:
    """R9: connectors that are not Google Workspace do not block training on their own."""
    assert not is_workspace_connector(name, CONFIG)
    assert (
        TRAIN in decide_request(request_log(connectors=[name]), controls(), facts(), CONFIG).routes
    )


@PROPS
@given(request_logs(), data_controls, routing_facts)
def test_r9_property_candidate_implies_every_condition(
    request: RequestLog, c: DataControls, f: RoutingFacts
) -> None:
    """R9: candidate <=> all conditions hold; a candidate carries its consent version (+R11)."""
    decision = decide_request(request, c, f, CONFIG)
    assert decision.has(TRAIN) == all_r9_conditions(request, c, f)
    if decision.has(TRAIN):
        assert decision.consent_version == c.consent_version
        assert {"R9", "R11", "R12"} <= set(decision.rule_ids)
        assert decision.has(LOG)


def test_r9_r5_flag_from_the_hold_index_blocks_candidacy() -> None:
    """R9 + R5: a misuse flag covering the request (via the hold index) blocks training."""
    ledger = new_ledger(watermark_ms=T0)
    holds = HoldIndex()
    request = request_log()
    assert decide(ledger, holds, request, T0).has(TRAIN)
    holds.apply_flag(flag("f", scope="API_KEY", api_key_id=request.api_key_id, window_start_ms=0))
    decision = decide(ledger, holds, request, T0)
    assert not decision.has(TRAIN) and decision.has(LOG)
    holds.apply_flag(flag("f", action="RELEASE", scope="API_KEY"))
    assert decide(ledger, holds, request, T0).has(TRAIN)


def test_r9_r6_legal_hold_alone_does_not_block_training() -> None:
    """R9 + R6: only misuse flags are an R9 blocker; a legal hold keeps records, not consent."""
    from tests.unit.strategies import legal_hold

    ledger = new_ledger(watermark_ms=T0)
    holds = HoldIndex()
    holds.apply_legal_hold(legal_hold("L", window_start_ms=0, window_end_ms=2 * T0))
    assert decide(ledger, holds, request_log(), T0).has(TRAIN)


# === R10 fine-tune rows ===


@pytest.mark.parametrize("prompts_on", [True, False])
@pytest.mark.parametrize("finetune_on", [True, False])
def test_r10_fine_tune_toggle_is_independent_of_prompts_toggle(
    prompts_on: bool, finetune_on: bool
) -> None:
    """R10 vs R9: rows follow only the fine-tune toggle, requests only the prompts toggle."""
    c = controls(prompts_generations_training=prompts_on, finetune_training=finetune_on)
    row = decide_finetune_row(finetune_row(), c, facts(), CONFIG)
    req = decide_request(request_log(), c, facts(), CONFIG)
    assert row.has(TRAIN) == finetune_on
    assert req.has(TRAIN) == prompts_on
    assert row.has(DROPPED) == (not finetune_on)
    assert "R10" in row.rule_ids


@pytest.mark.parametrize(
    ("name", "ctl", "fct"),
    [
        ("training exclusion", {"training_exclusion": True}, {}),
        ("misuse flag", {}, {"misuse_flag_ids": ("f",)}),
        ("deletion requested", {}, {"deletion_requested": True}),
        ("watermark waiting", {}, {"watermark": WatermarkState.WAITING}),
        ("watermark stalled", {}, {"watermark": WatermarkState.STALLED}),
        ("zdr", {"zero_data_retention": True}, {}),
    ],
)
def test_r10_r9_other_conditions_block_fine_tune_rows(
    name: str, ctl: dict[str, Any], fct: dict[str, Any]
) -> None:
    """R10: R9's other conditions apply to fine-tune rows too (fine-tune toggle on)."""
    decision = decide_finetune_row(finetune_row(), controls(**ctl), facts(**fct), CONFIG)
    assert decision.routes == {DROPPED}, name
    assert "R10" in decision.rule_ids


def test_r10_r15_deleted_org_row_names_r15() -> None:
    """R10 + R15: a row of an org being deleted is dropped and the audit names R15."""
    decision = decide_finetune_row(
        finetune_row(), controls(), facts(deletion_requested=True), CONFIG
    )
    assert decision.routes == {DROPPED}
    assert "R15" in decision.rule_ids


def test_r10_candidate_row_carries_consent_and_r11() -> None:
    """R10 + R11: a candidate row names R10, R11, R12 and carries the consent version."""
    decision = decide_finetune_row(finetune_row(), controls(), facts(), CONFIG)
    assert decision.routes == {TRAIN}
    assert {"R10", "R11", "R12"} <= set(decision.rule_ids)
    assert decision.consent_version == "consent-v7"


@PROPS
@given(finetune_rows(), data_controls, routing_facts)
def test_r10_property_row_candidate_iff_all_conditions(
    row: FineTuneRow, c: DataControls, f: RoutingFacts
) -> None:
    """R10: row candidate <=> SaaS, no ZDR, fine-tune toggle on, no exclusion, no flag, not
    deleted, watermark passed; otherwise dropped. Rows never reach log store or usage."""
    decision = decide_finetune_row(row, c, f, CONFIG)
    ok = (
        row.deployment == Deployment.SAAS
        and not c.zero_data_retention
        and c.finetune_training
        and not c.training_exclusion
        and not f.misuse_flag_ids
        and not f.deletion_requested
        and f.facts_read
        and f.watermark == WatermarkState.PASSED
    )
    assert decision.routes == ({TRAIN} if ok else {DROPPED})
    assert "R10" in decision.rule_ids
    assert ("R14" in decision.rule_ids) == (not c.recorded)


def test_r10_r12_fine_tune_toggle_at_upload_time_decides() -> None:
    """R10 + R12: the fine-tune toggle in effect at upload decides, not the current one."""
    ledger = new_ledger(watermark_ms=T0 + DAY_MS)
    ledger.apply(change(effective_at_ms=T0, change_id="off", finetune_training=False))
    holds = HoldIndex()
    assert decide_row(ledger, holds, finetune_row(uploaded_at_ms=T0 - 1), T0 + DAY_MS).has(TRAIN)
    assert not decide_row(ledger, holds, finetune_row(uploaded_at_ms=T0), T0 + DAY_MS).has(TRAIN)


def test_r10_r5_request_scope_flag_on_row_id_blocks_row() -> None:
    """R10 + R5: a REQUEST-scope flag naming the row id blocks that row only."""
    ledger = new_ledger(watermark_ms=T0)
    holds = HoldIndex()
    row = finetune_row(row_index=3)
    holds.apply_flag(flag("f", scope="REQUEST", request_id=row.row_id))
    assert decide_row(ledger, holds, row, T0).routes == {DROPPED}
    assert decide_row(ledger, holds, finetune_row(row_index=4), T0).routes == {TRAIN}


# === R11 personal information ===


def expected_counts(texts: list[str], mapping: dict[str, str]) -> dict[str, int]:
    total: dict[str, int] = {}
    for t in texts + list(mapping.values()):
        for kind, n in FakeRedactor.counts_for(t).items():
            total[kind] = total.get(kind, 0) + n
    return total


def test_r11_training_candidate_redacts_every_text_field_and_sums_counts() -> None:
    """R11 + R9: prompt, each document, generation and metadata go through the redactor; the
    candidate holds only redacted text and the summed counts."""
    request = request_log()
    decision = decide_request(request, controls(), facts(), CONFIG)
    redactor = FakeRedactor()
    candidate = training_candidate(request, decision.consent_version, redactor, CONFIG)
    mark = FakeRedactor.mark
    assert request.prompt is not None and request.generation is not None
    assert candidate["prompt"] == mark(request.prompt)
    assert candidate["generation"] == mark(request.generation)
    assert candidate["documents"] == [mark(d) for d in request.documents]
    assert candidate["metadata"] == {k: mark(v) for k, v in request.metadata.items()}
    texts = [request.prompt, request.generation, *request.documents]
    assert sorted(redactor.seen) == sorted(texts)
    assert redactor.seen_mappings == [dict(request.metadata)]
    assert candidate["redaction_counts"] == expected_counts(texts, dict(request.metadata))
    assert candidate["consent_version"] == "consent-v7"
    assert candidate["policy_version"] == POLICY_VERSION
    assert candidate["kind"] == "PROMPT_GENERATION"
    assert not contains_sentinel(candidate)


@PROPS
@given(request_logs())
def test_r11_property_no_unredacted_text_reaches_a_training_candidate(request: RequestLog) -> None:
    """R11: for any request, no raw content (nor API key, user or IP) is in the candidate."""
    decision = decide_request(request, controls(), facts(), CONFIG)
    redactor = FakeRedactor()
    candidate = training_candidate(request, decision.consent_version, redactor, CONFIG)
    assert not contains_sentinel(candidate)
    assert not {"api_key_id", "client_ip", "user_id", "connectors"} & set(candidate)
    texts = [t for t in (request.prompt, request.generation) if t] + [
        d for d in request.documents if d
    ]
    assert candidate["redaction_counts"] == expected_counts(texts, dict(request.metadata))
    assert len(candidate["documents"]) == len(request.documents)


def test_r11_empty_fields_stay_empty_and_are_not_counted() -> None:
    """R11: absent prompt/generation stay absent; nothing is counted for them."""
    request = request_log(prompt=None, generation="", documents=[], metadata={})
    redactor = FakeRedactor()
    decision = decide_request(request, controls(), facts(), CONFIG)
    candidate = training_candidate(request, decision.consent_version, redactor, CONFIG)
    assert candidate["prompt"] is None and candidate["generation"] == ""
    assert candidate["documents"] == [] and candidate["metadata"] == {}
    assert candidate["redaction_counts"] == {}
    assert redactor.seen == []


@PROPS
@given(finetune_rows())
def test_r11_r10_finetune_candidate_is_redacted(row: FineTuneRow) -> None:
    """R11 + R10: a fine-tune candidate holds only the redacted row text and its counts."""
    decision = decide_finetune_row(row, controls(), facts(), CONFIG)
    redactor = FakeRedactor()
    candidate = finetune_candidate(row, decision.consent_version, redactor, CONFIG)
    assert candidate["prompt"] == FakeRedactor.mark(row.text)
    assert candidate["redaction_counts"] == FakeRedactor.counts_for(row.text)
    assert candidate["source_id"] == row.row_id
    assert candidate["kind"] == "FINETUNE_ROW"
    assert candidate["created_at_ms"] == row.uploaded_at_ms
    assert not contains_sentinel(candidate)


# === R12 settings apply forward, watermark ===


def test_r12_watermark_state_boundaries() -> None:
    """R12: PASSED iff watermark >= creation; otherwise STALLED only strictly past the bound."""
    c = 1_000_000
    assert watermark_state(c, c, c, STALL) == WatermarkState.PASSED
    assert watermark_state(c, c + 1, c, STALL) == WatermarkState.PASSED
    assert watermark_state(c, c - 1, c, STALL) == WatermarkState.WAITING
    assert watermark_state(c, None, c, STALL) == WatermarkState.WAITING
    assert watermark_state(c, None, c + STALL, STALL) == WatermarkState.WAITING
    assert watermark_state(c, None, c + STALL + 1, STALL) == WatermarkState.STALLED
    assert watermark_state(c, c - 1, c + STALL + 1, STALL) == WatermarkState.STALLED
    # a passed watermark wins however long the record waited
    assert watermark_state(c, c, c + 100 * STALL, STALL) == WatermarkState.PASSED


@PROPS
@given(
    st.integers(1, 10**13),
    st.one_of(st.none(), st.integers(0, 10**13)),
    st.integers(0, 10**13),
    st.integers(0, 10**7),
    st.integers(0, 10**7),
)
def test_r12_property_watermark_state_is_monotone(
    created: int, watermark: int | None, now: int, stall: int, more: int
) -> None:
    """R12: PASSED exactly when watermark >= creation; a later watermark never un-passes it,
    and a record that stalled stays stalled as time goes on (without a new watermark)."""
    state = watermark_state(created, watermark, now, stall)
    assert (state == WatermarkState.PASSED) == (watermark is not None and watermark >= created)
    if state == WatermarkState.PASSED:
        assert watermark is not None
        assert watermark_state(created, watermark + more, now, stall) == WatermarkState.PASSED
    if state == WatermarkState.STALLED:
        assert watermark_state(created, watermark, now + more, stall) == WatermarkState.STALLED


def test_r12_stalled_watermark_is_decided_fail_closed_and_audited() -> None:
    """R12: past the stall bound the request is decided with usage only (R3): no training and,
    since a ZDR change may be unpublished, no log store either (fail closed); audited."""
    decision = decide_request(
        request_log(), controls(), facts(watermark=WatermarkState.STALLED), CONFIG
    )
    assert decision.routes == {USAGE}
    assert "R12" in decision.rule_ids
    assert any("R12" in r and "stalled" in r for r in decision.reasons)


def test_r12_opt_out_arriving_after_the_request_still_applies() -> None:
    """R12: a request is routed by the settings at its creation even when the change reaches
    the pipeline later (the job waits for the watermark, then asks the ledger)."""
    ledger = new_ledger()
    holds = HoldIndex()
    request = request_log(created_at_ms=T0 + 10)
    # the request arrives first: the watermark has not passed, so no training yet
    early = decide(ledger, holds, request, T0 + 11)
    assert not early.has(TRAIN)
    # the opt-out effective before the request is published late, then the watermark
    ledger.apply(change(effective_at_ms=T0, change_id="late", prompts_generations_training=False))
    ledger.advance_watermark(ControlsWatermark(T0 + 10, T0 + 20))
    assert not decide(ledger, holds, request, T0 + 21).has(TRAIN)


@PROPS
@given(
    st.integers(0, 20),
    st.integers(1, 20),
    unique_changes(org_id=st.just("org-a"), max_size=6),
    st.data(),
)
def test_r12_property_record_created_before_an_opt_in_never_becomes_a_candidate(
    t_off: int, gap: int, noise: list[DataControlChange], data: st.DataObject
) -> None:
    """R12: org opted out at t_off, opts in at t_on; whatever else changes (toggle left
    untouched) and whatever order changes arrive in, a record created in [t_off, t_on) is
    never a candidate, while a record at or after t_on with nothing else blocking is."""
    t_on = t_off + gap
    noise = [
        replace(
            c,
            change_id="n" + c.change_id,
            prompts_generations_training=None,
            zero_data_retention=None,
            training_exclusion=None,
        )
        for c in noise
    ]
    events = [
        change(effective_at_ms=t_off, change_id="opt-out", prompts_generations_training=False),
        change(effective_at_ms=t_on, change_id="opt-in", prompts_generations_training=True),
        *noise,
    ]
    ledger = new_ledger(watermark_ms=100)
    for event in data.draw(st.permutations(events)):
        ledger.apply(event)
    holds = HoldIndex()
    for t in range(t_off, t_on):
        assert not decide(ledger, holds, request_log(created_at_ms=t), 100).has(TRAIN)
    assert decide(ledger, holds, request_log(created_at_ms=t_on), 100).has(TRAIN)


@PROPS
@given(
    unique_changes(org_id=st.just("org-a"), max_size=8),
    st.one_of(st.none(), small_times),
    small_times,
    st.data(),
)
def test_r12_property_candidate_only_with_toggle_on_at_creation_and_watermark_passed(
    changes: list[DataControlChange], watermark: int | None, created: int, data: st.DataObject
) -> None:
    """R12 + R9: via the ledger, a candidate needs the toggle on *as of creation* (the last
    change at or before creation that set it, else the R14 default) and the watermark past
    creation; changes arrive in any order."""
    ledger = new_ledger(watermark_ms=watermark)
    for c in data.draw(st.permutations(changes)):
        ledger.apply(c)
    decision = decide(ledger, HoldIndex(), request_log(created_at_ms=created), now_ms=50)
    if decision.has(TRAIN):
        assert watermark is not None and watermark >= created
        setting = [
            c
            for c in sorted(changes, key=lambda c: (c.effective_at_ms, c.change_id))
            if c.effective_at_ms <= created and c.prompts_generations_training is not None
        ]
        assert setting[-1].prompts_generations_training if setting else True
        zdr = [
            c
            for c in sorted(changes, key=lambda c: (c.effective_at_ms, c.change_id))
            if c.effective_at_ms <= created and c.zero_data_retention is not None
        ]
        assert not (zdr and zdr[-1].zero_data_retention)


# === R13 orgs are independent ===


def echo_for_other_org(event: Any, org_id: str) -> Any:
    """The same id/time as ``event`` for another org, with the most disruptive content."""
    if isinstance(event, MisuseFlag):
        return replace(event, org_id=org_id, action=FlagAction.RELEASE.value)
    if isinstance(event, LegalHold):
        return replace(event, org_id=org_id, action=HoldAction.RELEASE.value)
    return replace(
        event,
        org_id=org_id,
        zero_data_retention=True,
        prompts_generations_training=False,
        finetune_training=False,
        training_exclusion=True,
    )


@PROPS
@given(
    org_events("org-a", max_size=6),
    org_events("org-b", max_size=8),
    st.lists(request_logs(org_id=st.just("org-a")), min_size=1, max_size=4),
    st.lists(finetune_rows(), max_size=2),
    st.one_of(st.none(), small_times),
    st.data(),
)
def test_r13_property_other_orgs_events_never_change_an_orgs_decisions(
    mine: list[Any],
    theirs: list[Any],
    requests: list[RequestLog],
    rows: list[FineTuneRow],
    watermark: int | None,
    data: st.DataObject,
) -> None:
    """R13: adding data-control changes, misuse flags, legal holds and deletions of org B
    (interleaved anywhere, ids colliding with org A's) never changes any decision for org A."""
    requests = [r._replace(created_at_ms=data.draw(small_times)) for r in requests]
    rows = [replace(r, org_id="org-a", uploaded_at_ms=data.draw(small_times)) for r in rows]
    # Org B "echoes" of org A's own events: same ids and times, opposite intent.
    echoes = [echo_for_other_org(e, "org-b") for e in mine if not isinstance(e, tuple)]
    if echoes:
        theirs = theirs + data.draw(st.lists(st.sampled_from(echoes), max_size=4))
    merged = list(mine)
    for event in theirs:
        merged.insert(data.draw(st.integers(0, len(merged))), event)

    def decisions(events: list[Any]) -> list[Any]:
        ledger, holds = new_ledger(watermark_ms=watermark), HoldIndex()
        for event in events:
            apply_event(ledger, holds, event)
        return [decide(ledger, holds, r, 30) for r in requests] + [
            decide_row(ledger, holds, r, 30) for r in rows
        ]

    assert decisions(merged) == decisions(mine)


def test_r13_r9_pre_cutoff_opt_out_still_blocks_training_after_cutoff() -> None:
    """R13 + R9: an opt-out recorded before 2023-08-10 still applies to later requests; the
    org is not treated as unrecorded (no R14 defaults)."""
    ledger = new_ledger(watermark_ms=MIGRATION_CUTOFF_MS + 400 * DAY_MS)
    ledger.apply(
        change(
            effective_at_ms=MIGRATION_CUTOFF_MS - 90 * DAY_MS,
            change_id="legacy",
            prompts_generations_training=False,
            finetune_training=False,
        )
    )
    now = MIGRATION_CUTOFF_MS + 400 * DAY_MS
    for t in (MIGRATION_CUTOFF_MS, MIGRATION_CUTOFF_MS + 1, MIGRATION_CUTOFF_MS + 300 * DAY_MS):
        decision = decide(ledger, HoldIndex(), request_log(created_at_ms=t), now)
        assert not decision.has(TRAIN)
        assert "R14" not in decision.rule_ids
        assert decision.consent_version == "consent-legacy"
        assert not decide_row(ledger, HoldIndex(), finetune_row(uploaded_at_ms=t), now).has(TRAIN)


def test_r13_r15_deletion_of_one_org_leaves_others_alone() -> None:
    """R13 + R15: org B's deletion request does not affect org A's routing."""
    ledger = new_ledger(watermark_ms=T0)
    ledger.record_deletion("org-b", T0 - 5)
    assert decide(ledger, HoldIndex(), request_log(org_id="org-a"), T0).has(TRAIN)
    assert decide(ledger, HoldIndex(), request_log(org_id="org-b"), T0).routes == {USAGE}


# === R14 defaults ===


def test_r14_unknown_org_routed_with_published_defaults() -> None:
    """R14: an org with no recorded settings: toggles on, no ZDR, 30 days; R14 named."""
    ledger = new_ledger(watermark_ms=T0)
    decision = decide(ledger, HoldIndex(), request_log(org_id="brand-new"), T0)
    assert decision.routes == {USAGE, LOG, TRAIN}
    assert "R14" in decision.rule_ids
    assert decision.retention_days == 30 and "R7" not in decision.rule_ids
    assert decision.consent_version == DEFAULT_CONTROLS.consent_version
    row = decide_row(ledger, HoldIndex(), finetune_row(org_id="brand-new"), T0)
    assert row.routes == {TRAIN} and "R14" in row.rule_ids


@PROPS
@given(request_logs(), data_controls, routing_facts)
def test_r14_property_r14_named_iff_controls_unrecorded(
    request: RequestLog, c: DataControls, f: RoutingFacts
) -> None:
    """R14: every decision made on defaults says so, and only those."""
    assert ("R14" in decide_request(request, c, f, CONFIG).rule_ids) == (not c.recorded)


def test_r14_defaults_live_in_configuration() -> None:
    """R14: the defaults used by routing are the ones in PolicyConfig (one place)."""
    assert CONFIG.defaults is DEFAULT_CONTROLS
    assert DEFAULT_CONTROLS.prompts_generations_training and DEFAULT_CONTROLS.finetune_training
    assert not DEFAULT_CONTROLS.zero_data_retention
    assert DEFAULT_CONTROLS.retention_days == 30


# === R15 account deletion ===


def test_r15_deletion_requested_means_no_log_store_and_no_candidate() -> None:
    """R15 + R3: after a deletion request only usage is kept; R15 is named."""
    decision = decide_request(request_log(), controls(), facts(deletion_requested=True), CONFIG)
    assert decision.routes == {USAGE}
    assert "R15" in decision.rule_ids
    assert any(r.startswith("R15:") for r in decision.reasons)


def test_r15_deletion_via_ledger_blocks_every_later_decision() -> None:
    """R15: once recorded, a deletion stops candidates and retention for the org."""
    ledger = new_ledger(watermark_ms=T0 + DAY_MS)
    ledger.record_deletion("org-a", T0 + HOUR_MS)
    ledger.record_deletion("org-a", T0 + 2 * HOUR_MS)
    assert ledger.deletion_requested_at("org-a") == T0 + HOUR_MS
    for t in (T0, T0 + 3 * HOUR_MS):
        assert decide(ledger, HoldIndex(), request_log(created_at_ms=t), T0 + DAY_MS).routes == {
            USAGE
        }
        assert decide_row(
            ledger, HoldIndex(), finetune_row(uploaded_at_ms=t), T0 + DAY_MS
        ).routes == {DROPPED}


# === R17 validation ===


def test_r17_valid_request_and_row_pass_validation() -> None:
    """R17: well-formed records validate into their domain objects unchanged."""
    assert validate_request(request_record()) == request_log()
    assert validate_request(request_record(input_tokens=0, output_tokens=0, created_at_ms=1))
    assert validate_finetune_row(finetune_record()) == finetune_row()
    assert validate_finetune_row(finetune_record(row_index=0, uploaded_at_ms=1))


INVALID_REQUESTS: list[tuple[str, dict[str, Any], bool, str]] = [
    # (case, field override, org attached to the error, field name the reason must name)
    ("empty request_id", {"request_id": ""}, True, "request_id"),
    ("empty org_id", {"org_id": ""}, False, "org_id"),
    ("unknown deployment", {"deployment": "MAINFRAME-zq93"}, True, "deployment"),
    ("lowercase deployment", {"deployment": "saas"}, True, "deployment"),
    ("unknown source", {"source": "FAX-zq93"}, True, "source"),
    ("unknown key_type", {"key_type": "GOLD-zq93"}, True, "key_type"),
    ("negative input tokens", {"input_tokens": -31337}, True, "token"),
    ("negative output tokens", {"output_tokens": -4242}, True, "token"),
    ("input tokens beyond any request", {"input_tokens": 2**40 + 7}, True, "token"),
    ("zero created_at", {"created_at_ms": 0}, True, "created_at_ms"),
    ("negative created_at", {"created_at_ms": -98765}, True, "created_at_ms"),
    ("created_at past year 9999", {"created_at_ms": 2**62 + 3}, True, "created_at_ms"),
]


def assert_reason_has_no_values(exc: InvalidRecord, record: dict[str, Any]) -> None:
    reason = exc.reason
    assert str(exc) == reason
    for name, value in record.items():
        for text in strings_in(value) if not isinstance(value, int) else [str(value)]:
            if len(text) >= 2 and text not in ("0", "-1"):
                assert text not in reason, (name, text, reason)
    assert SENTINEL not in reason


@pytest.mark.parametrize(
    ("name", "override", "org_known", "named"),
    INVALID_REQUESTS,
    ids=[c[0] for c in INVALID_REQUESTS],
)
def test_r17_invalid_request_raises_with_a_value_free_reason(
    name: str, override: dict[str, Any], org_known: bool, named: str
) -> None:
    """R17: each contract break raises InvalidRecord; the reason names fields, never values;
    the org is attached when known (for R2-aware dead letters)."""
    record = request_record(**override)
    with pytest.raises(InvalidRecord) as info:
        validate_request(record)
    assert_reason_has_no_values(info.value, record)
    assert info.value.org_id == ("org-a" if org_known else None)
    assert named in info.value.reason


INVALID_ROWS: list[tuple[str, dict[str, Any], bool]] = [
    ("empty dataset_id", {"dataset_id": ""}, True),
    ("negative row_index", {"row_index": -77}, True),
    ("empty org_id", {"org_id": ""}, False),
    ("unknown deployment", {"deployment": "ONPREM-zq93"}, True),
    ("zero uploaded_at", {"uploaded_at_ms": 0}, True),
    ("negative uploaded_at", {"uploaded_at_ms": -5555}, True),
]


@pytest.mark.parametrize(
    ("name", "override", "org_known"), INVALID_ROWS, ids=[c[0] for c in INVALID_ROWS]
)
def test_r17_invalid_finetune_row_raises_with_a_value_free_reason(
    name: str, override: dict[str, Any], org_known: bool
) -> None:
    """R17: a broken fine-tune row raises InvalidRecord naming fields, not values."""
    record = finetune_record(**override)
    with pytest.raises(InvalidRecord) as info:
        validate_finetune_row(record)
    assert_reason_has_no_values(info.value, record)
    assert info.value.org_id == ("org-a" if org_known else None)


_break_request = st.sampled_from(
    [
        ("request_id", st.just("")),
        ("org_id", st.just("")),
        ("deployment", st.text(min_size=1).map(lambda s: "Zx" + s)),
        ("source", st.text(min_size=1).map(lambda s: "Zx" + s)),
        ("key_type", st.text(min_size=1).map(lambda s: "Zx" + s)),
        ("input_tokens", st.integers(max_value=-1)),
        ("output_tokens", st.integers(max_value=-1)),
        ("created_at_ms", st.integers(max_value=0)),
    ]
)


@PROPS
@given(_break_request, st.data())
def test_r17_property_invalid_request_reason_never_carries_values(
    broken: tuple[str, st.SearchStrategy[Any]], data: st.DataObject
) -> None:
    """R17: whatever the (sentinel-marked) values, the reason of a broken request holds none
    of them, and content fields never leak into it."""
    name, values = broken
    record = request_record(
        request_id="Zx-req-" + data.draw(st.text(max_size=5)),
        api_key_id="Zx-key",
        endpoint="Zx-endpoint",
        model="Zx-model",
        client_ip="Zx-ip",
        user_id="Zx-user",
    )
    record[name] = data.draw(values)
    with pytest.raises(InvalidRecord) as info:
        validate_request(record)
    assert "Zx" not in info.value.reason
    assert_reason_has_no_values(info.value, record)


def test_r17_records_not_matching_the_contract_raise_type_error() -> None:
    """R17: missing or extra fields raise TypeError (the router dead-letters it)."""
    record = request_record()
    del record["prompt"]
    with pytest.raises(TypeError):
        validate_request(record)
    with pytest.raises(TypeError):
        validate_finetune_row({**finetune_record(), "extra": 1})
