"""R12 / R13 / R14 / R15: the data-controls ledger answers "as of T" correctly."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from streams.policy.config import DEFAULT_CONTROLS, MIGRATION_CUTOFF_MS
from streams.policy.data_controls import DataControlsLedger, fold
from streams.policy.models import DAY_MS, ControlsWatermark, DataControlChange, DataControls
from tests.unit.strategies import (
    PROPS,
    change,
    new_ledger,
    small_times,
    unique_changes,
)

FIELDS = (
    "prompts_generations_training",
    "finetune_training",
    "zero_data_retention",
    "retention_days",
    "training_exclusion",
    "paying_customer",
)
QUERY_TIMES = range(-1, 43)  # covers every effective time drawn from ``small_times`` and beyond


def ledger_of(changes: list[DataControlChange]) -> DataControlsLedger:
    ledger = new_ledger()
    for c in changes:
        ledger.apply(c)
    return ledger


def reference_controls_at(
    changes: list[DataControlChange], org_id: str, at_ms: int
) -> DataControls:
    """The definition, written naively: fold every change of the org effective at or before T."""
    mine = sorted(
        (c for c in changes if c.org_id == org_id and c.effective_at_ms <= at_ms),
        key=lambda c: (c.effective_at_ms, c.change_id),
    )
    current: dict[str, Any] = {name: getattr(DEFAULT_CONTROLS, name) for name in FIELDS}
    if not mine:
        return DEFAULT_CONTROLS
    for c in mine:
        for name in FIELDS:
            if getattr(c, name) is not None:
                current[name] = getattr(c, name)
    return DataControls(**current, consent_version=mine[-1].consent_version, recorded=True)


# --- R14 defaults ---------------------------------------------------------------------


def test_r14_unknown_org_gets_published_defaults() -> None:
    """R14: no recorded settings -> both toggles on, no ZDR, 30 days, marked unrecorded."""
    got = new_ledger().controls_at("never-seen", 123)
    assert got == DEFAULT_CONTROLS
    assert got.prompts_generations_training and got.finetune_training
    assert not got.zero_data_retention
    assert got.retention_days == 30
    assert not got.training_exclusion
    assert got.recorded is False


def test_r14_r12_times_before_the_first_change_get_defaults() -> None:
    """R14 + R12: a change applies forward only; before it the org still has the defaults."""
    ledger = ledger_of([change(effective_at_ms=100, prompts_generations_training=False)])
    assert ledger.controls_at("org-a", 99) == DEFAULT_CONTROLS
    assert ledger.controls_at("org-a", 100).prompts_generations_training is False


def test_r14_ledger_uses_the_configured_defaults_object() -> None:
    """R14: the defaults come from configuration, not from the ledger's own constants."""
    custom = replace(DEFAULT_CONTROLS, retention_days=14, consent_version="custom")
    ledger = DataControlsLedger(custom)
    assert ledger.controls_at("x", 5) is custom
    ledger.apply(change(org_id="x", effective_at_ms=10, zero_data_retention=True))
    assert ledger.controls_at("x", 10).retention_days == 14


# --- R12 as-of semantics ----------------------------------------------------------------


def test_r12_change_effective_exactly_at_t_applies_to_t() -> None:
    """R12: a change "took effect" at T, so a record created at T is decided by it."""
    ledger = ledger_of([change(effective_at_ms=500, zero_data_retention=True)])
    assert ledger.controls_at("org-a", 500).zero_data_retention is True
    assert ledger.controls_at("org-a", 499).zero_data_retention is False


def test_r12_change_exactly_at_t_applies_whatever_its_change_id() -> None:
    """R12: "effective exactly at T applies to T" must not depend on how the change id sorts.

    Change ids are opaque strings; one that sorts after every sentinel the ledger
    might use internally must still apply at its own effective time.
    """
    for cid in ("\U0010ffff", "\U0010ffff-late", "\U0010ffff\U0010ffff", "zzz", ""):
        ledger = ledger_of([change(effective_at_ms=500, change_id=cid, zero_data_retention=True)])
        assert ledger.controls_at("org-a", 500).zero_data_retention is True, repr(cid)
        assert ledger.controls_at("org-a", 499).zero_data_retention is False, repr(cid)


def test_r12_change_after_t_never_applies_to_t() -> None:
    """R12: settings apply forward: data created before a change keeps the earlier settings."""
    ledger = ledger_of(
        [
            change(effective_at_ms=100, change_id="a", prompts_generations_training=False),
            change(effective_at_ms=200, change_id="b", prompts_generations_training=True),
        ]
    )
    assert ledger.controls_at("org-a", 199).prompts_generations_training is False
    assert ledger.controls_at("org-a", 200).prompts_generations_training is True
    assert ledger.controls_at("org-a", 10**15).prompts_generations_training is True


def test_r12_late_arriving_change_rebases_later_settings() -> None:
    """R12: a change published after a later one is still placed at its effective time."""
    ledger = new_ledger()
    ledger.apply(change(effective_at_ms=20, change_id="later", prompts_generations_training=False))
    ledger.apply(change(effective_at_ms=10, change_id="earlier", zero_data_retention=True))
    at_15 = ledger.controls_at("org-a", 15)
    assert at_15.zero_data_retention is True
    assert at_15.prompts_generations_training is True  # R14 default, the opt-out is later
    at_25 = ledger.controls_at("org-a", 25)
    assert at_25.zero_data_retention is True  # carried from the late-arriving earlier change
    assert at_25.prompts_generations_training is False
    assert at_25.consent_version == "consent-later"


def test_r12_null_fields_carry_previous_values() -> None:
    """R12: a change that leaves a field null keeps that setting as it was."""
    ledger = ledger_of(
        [
            change(
                effective_at_ms=10,
                change_id="full",
                prompts_generations_training=False,
                finetune_training=False,
                retention_days=90,
                training_exclusion=True,
                paying_customer=True,
            ),
            change(effective_at_ms=20, change_id="zdr-only", zero_data_retention=True),
        ]
    )
    got = ledger.controls_at("org-a", 20)
    assert got.zero_data_retention is True
    assert got.prompts_generations_training is False
    assert got.finetune_training is False
    assert got.retention_days == 90
    assert got.training_exclusion is True
    assert got.paying_customer is True
    assert got.consent_version == "consent-zdr-only"
    assert got.recorded is True


def test_r12_fold_takes_consent_version_and_marks_recorded() -> None:
    """R12/R14: folding a change stamps its consent version and marks the org as recorded."""
    folded = fold(DEFAULT_CONTROLS, change(consent_version="cv-9", retention_days=7))
    assert folded.consent_version == "cv-9"
    assert folded.recorded is True
    assert folded.retention_days == 7
    assert folded.prompts_generations_training is DEFAULT_CONTROLS.prompts_generations_training


def test_r12_duplicate_change_is_ignored() -> None:
    """R12: a replayed change (same id and effective time) is harmless."""
    ledger = new_ledger()
    first = change(effective_at_ms=10, change_id="c", prompts_generations_training=False)
    assert ledger.apply(first) is True
    before = [ledger.controls_at("org-a", t) for t in range(0, 30)]
    assert ledger.apply(first) is False
    assert ledger.apply(replace(first)) is False
    assert [ledger.controls_at("org-a", t) for t in range(0, 30)] == before


@PROPS
@given(unique_changes(max_size=10), st.data())
def test_r12_property_any_arrival_order_gives_same_controls_at_every_t(
    changes: list[DataControlChange], data: st.DataObject
) -> None:
    """R12: any permutation of the same set of changes gives the same ``controls_at`` for all T."""
    shuffled = data.draw(st.permutations(changes))
    a, b = ledger_of(changes), ledger_of(shuffled)
    for org in ("org-a", "org-b", "org-c"):
        for t in QUERY_TIMES:
            assert a.controls_at(org, t) == b.controls_at(org, t)


@PROPS
@given(unique_changes(max_size=10), st.data())
def test_r12_property_replays_and_duplicates_change_nothing(
    changes: list[DataControlChange], data: st.DataObject
) -> None:
    """R12: replaying any subset of already-applied changes, in any order, changes nothing."""
    ledger = ledger_of(changes)
    expected = {(o, t): ledger.controls_at(o, t) for o in ("org-a", "org-b") for t in QUERY_TIMES}
    replay = data.draw(st.lists(st.sampled_from(changes), max_size=10)) if changes else []
    for c in replay:
        assert ledger.apply(c) is False
    assert {(o, t): ledger.controls_at(o, t) for o in ("org-a", "org-b") for t in QUERY_TIMES} == (
        expected
    )


@PROPS
@given(
    unique_changes(max_size=10).filter(
        lambda cs: len({(c.org_id, c.effective_at_ms) for c in cs}) == len(cs)
    ),
    st.data(),
)
def test_r12_property_controls_at_matches_the_definition(
    changes: list[DataControlChange], data: st.DataObject
) -> None:
    """R12/R14: controls_at(T) is the fold of exactly the changes effective at or before T,
    on top of the defaults; nothing after T ever leaks in (changes arrive in random order)."""
    ledger = ledger_of(data.draw(st.permutations(changes)))
    for org in ("org-a", "org-b", "org-c"):
        for t in QUERY_TIMES:
            assert ledger.controls_at(org, t) == reference_controls_at(changes, org, t)


@PROPS
@given(unique_changes(max_size=8), small_times, small_times)
def test_r12_property_a_change_after_t_never_affects_t(
    changes: list[DataControlChange], t: int, later: int
) -> None:
    """R12: adding a change effective after T leaves controls_at(T) unchanged."""
    ledger = ledger_of(changes)
    before = ledger.controls_at("org-a", t)
    ledger.apply(
        change(
            effective_at_ms=t + 1 + later,
            change_id="late-arrival",
            prompts_generations_training=False,
            zero_data_retention=True,
            retention_days=1,
            training_exclusion=True,
        )
    )
    assert ledger.controls_at("org-a", t) == before


# --- R12 watermark ----------------------------------------------------------------------


def test_r12_watermark_starts_unknown_and_passes_at_or_after_t() -> None:
    """R12: with no watermark nothing has passed; a watermark at W passes every T <= W."""
    ledger = new_ledger()
    assert ledger.watermark_ms is None
    assert not ledger.watermark_passed(1)
    ledger.advance_watermark(ControlsWatermark(watermark_ms=1000, published_at_ms=5))
    assert ledger.watermark_passed(999)
    assert ledger.watermark_passed(1000)
    assert not ledger.watermark_passed(1001)


def test_r12_watermark_never_moves_backwards() -> None:
    """R12: an out-of-order older watermark must not re-open decided time."""
    ledger = new_ledger()
    ledger.advance_watermark(ControlsWatermark(1000, 1))
    ledger.advance_watermark(ControlsWatermark(400, 2))
    assert ledger.watermark_ms == 1000
    assert ledger.watermark_passed(1000)
    ledger.advance_watermark(ControlsWatermark(1000, 3))
    assert ledger.watermark_ms == 1000
    ledger.advance_watermark(ControlsWatermark(1001, 4))
    assert ledger.watermark_ms == 1001


@PROPS
@given(st.lists(st.integers(-(10**6), 10**15), min_size=1, max_size=20))
def test_r12_property_watermark_is_the_running_maximum(marks: list[int]) -> None:
    """R12: whatever order watermarks arrive in, the ledger's watermark is monotone (max seen)."""
    ledger = new_ledger()
    seen: list[int] = []
    for i, m in enumerate(marks):
        ledger.advance_watermark(ControlsWatermark(m, i))
        seen.append(m)
        assert ledger.watermark_ms == max(seen)


# --- R15 deletion -----------------------------------------------------------------------


def test_r15_deletion_unknown_until_requested() -> None:
    """R15: no deletion recorded -> None."""
    assert new_ledger().deletion_requested_at("org-a") is None


@PROPS
@given(
    st.lists(st.tuples(st.sampled_from(("org-a", "org-b")), st.integers(1, 10**13)), max_size=10)
)
def test_r15_r13_property_ledger_keeps_earliest_deletion_per_org(
    requests: list[tuple[str, int]],
) -> None:
    """R15: the earliest deletion request wins, whatever the arrival order; R13: per org."""
    ledger = new_ledger()
    for org, at in requests:
        ledger.record_deletion(org, at)
    for org in ("org-a", "org-b"):
        mine = [at for o, at in requests if o == org]
        assert ledger.deletion_requested_at(org) == (min(mine) if mine else None)


# --- R13 ----------------------------------------------------------------------------------


def test_r13_settings_recorded_before_migration_cutoff_still_apply_after_it() -> None:
    """R13: an opt-out made before 2023-08-10 is kept as it was, not reset to the defaults."""
    before = MIGRATION_CUTOFF_MS - 30 * DAY_MS
    ledger = ledger_of(
        [
            change(
                effective_at_ms=before,
                change_id="legacy",
                prompts_generations_training=False,
                finetune_training=False,
            )
        ]
    )
    for t in (
        MIGRATION_CUTOFF_MS - 1,
        MIGRATION_CUTOFF_MS,
        MIGRATION_CUTOFF_MS + 1,
        MIGRATION_CUTOFF_MS + 900 * DAY_MS,
    ):
        got = ledger.controls_at("org-a", t)
        assert got.prompts_generations_training is False
        assert got.finetune_training is False
        assert got.recorded is True
        assert got.consent_version == "consent-legacy"


def test_r13_pre_cutoff_settings_survive_a_post_cutoff_partial_change() -> None:
    """R13 + R12: a post-cut-off change to another field keeps the legacy opt-out."""
    ledger = ledger_of(
        [
            change(
                effective_at_ms=MIGRATION_CUTOFF_MS - 1,
                change_id="legacy",
                prompts_generations_training=False,
            ),
            change(
                effective_at_ms=MIGRATION_CUTOFF_MS + DAY_MS, change_id="new", retention_days=90
            ),
        ]
    )
    got = ledger.controls_at("org-a", MIGRATION_CUTOFF_MS + 2 * DAY_MS)
    assert got.prompts_generations_training is False
    assert got.retention_days == 90


@PROPS
@given(
    unique_changes(org_id=st.just("org-a"), max_size=6),
    unique_changes(org_id=st.sampled_from(("org-b", "org-c")), max_size=8),
    st.data(),
)
def test_r13_property_other_orgs_changes_never_alter_an_orgs_controls(
    mine: list[DataControlChange], others: list[DataControlChange], data: st.DataObject
) -> None:
    """R13: changes (and deletions) of other orgs, interleaved anyhow, never change org A's
    controls, deletion state or ZDR history, even when change ids collide across orgs."""
    alone = ledger_of(mine)
    mixed_events = data.draw(st.permutations(mine + others))
    mixed = ledger_of(mixed_events)
    mixed.record_deletion("org-b", 5)
    for t in QUERY_TIMES:
        assert mixed.controls_at("org-a", t) == alone.controls_at("org-a", t)
    assert mixed.deletion_requested_at("org-a") is None
    assert mixed.ever_zero_data_retention("org-a") == alone.ever_zero_data_retention("org-a")


# --- R2 helper used by dead letters ---------------------------------------------------------


def test_r2_ever_zero_data_retention() -> None:
    """R2/R17: an org that had ZDR at any recorded time is known as such (dead letters)."""
    ledger = ledger_of(
        [
            change(effective_at_ms=10, change_id="on", zero_data_retention=True),
            change(effective_at_ms=20, change_id="off", zero_data_retention=False),
        ]
    )
    assert ledger.ever_zero_data_retention("org-a") is True
    assert ledger.ever_zero_data_retention("org-b") is False
    assert sorted(ledger.orgs()) == ["org-a"]
    ledger.apply(change(org_id="org-b", effective_at_ms=5, retention_days=7))
    assert ledger.ever_zero_data_retention("org-b") is False
