"""The retention job's pure logic (R4, R5, R6, R7, R15, R16): streams.policy.retention.

Examples first (one rule each, exact to the millisecond), then properties checked against
a brute-force reference model over random timelines with restarts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streams.jobs.retention import BookStore
from streams.kafka.state import MemoryStore
from streams.policy.config import PolicyConfig
from streams.policy.models import (
    DAY_MS,
    HOUR_MS,
    AccountDeletionRequest,
    FlagAction,
    FlagScope,
    HoldAction,
    InvalidRecord,
    LegalHold,
    MisuseFlag,
)
from streams.policy.retention import (
    Deletion,
    DeletionReason,
    DictStore,
    Effect,
    Note,
    Outcome,
    RetentionBook,
    Review,
    Tracked,
    owner_partition,
    tracked_from_log_record,
    untrusted_tracked,
)

CONFIG = PolicyConfig()
T0 = 1_800_000_000_000  # a creation time
DAY30 = T0 + 30 * DAY_MS


def rec(
    rid: str = "r1",
    *,
    org: str = "org-a",
    key: str = "key-a",
    created: int = T0,
    days: int = 30,
    offset: int = 0,
) -> Tracked:
    return Tracked(rid, org, key, created, days, partition=0, offset=offset)


def flag(
    flag_id: str = "f1",
    *,
    action: str = FlagAction.RAISE,
    scope: str = FlagScope.REQUEST,
    org: str = "org-a",
    request_id: str | None = "r1",
    api_key_id: str | None = None,
    start: int | None = None,
    end: int | None = None,
    at: int = T0,
) -> MisuseFlag:
    return MisuseFlag(flag_id, action, scope, org, request_id, api_key_id, start, end, "spam", at)


def legal(
    hold_id: str = "h1",
    *,
    action: str = HoldAction.PLACE,
    org: str = "org-a",
    start: int = T0 - DAY_MS,
    end: int = T0 + DAY_MS,
    at: int = T0,
) -> LegalHold:
    return LegalHold(hold_id, action, org, start, end, "matter-7", at)


def deletion(org: str = "org-a", at: int = T0 + DAY_MS, did: str = "d1") -> AccountDeletionRequest:
    return AccountDeletionRequest(did, org, at)


def book(store: DictStore | None = None, **kwargs: Any) -> RetentionBook:
    return RetentionBook(CONFIG, store if store is not None else DictStore(), **kwargs)


def deletions(effects: list[Effect]) -> dict[str, Deletion]:
    return {e.record.request_id: e for e in effects if isinstance(e, Deletion)}


def reviews(effects: list[Effect]) -> list[tuple[str, str]]:
    return [(e.hold.hold_id, e.record.request_id) for e in effects if isinstance(e, Review)]


def notes(effects: list[Effect], outcome: str) -> list[Note]:
    return [e for e in effects if isinstance(e, Note) and outcome in e.routes]


# --- R4 ------------------------------------------------------------------------------------
def test_R4_expires_at_day_30_exactly_not_before() -> None:
    b = book()
    effects = b.record(rec(), now_ms=T0)
    assert [n.rule_ids for n in notes(effects, Outcome.RETAINED)] == [("R4",)]
    assert deletions(b.tick(DAY30 - DAY_MS).effects) == {}  # day 29
    assert deletions(b.tick(DAY30 - 1).effects) == {}  # one ms short of day 30
    gone = deletions(b.tick(DAY30).effects)
    assert set(gone) == {"r1"}
    assert gone["r1"].reason == DeletionReason.EXPIRED
    assert gone["r1"].rule_ids == ("R4",)
    assert gone["r1"].deleted_at_ms == DAY30
    assert len(b) == 0
    assert deletions(b.tick(DAY30 + DAY_MS).effects) == {}  # deleted once


def test_R4_tick_after_a_gap_deletes_everything_due_and_nothing_else() -> None:
    b = book()
    for i in range(50):
        b.record(rec(f"r{i}", created=T0 + i * HOUR_MS), now_ms=T0)
    gone = deletions(b.tick(DAY30 + 10 * HOUR_MS).effects)
    assert set(gone) == {f"r{i}" for i in range(11)}
    assert len(b) == 39


def test_R4_record_arriving_after_its_expiry_is_deleted_on_arrival() -> None:
    b = book()
    effects = b.record(rec(created=T0 - 31 * DAY_MS), now_ms=T0)
    assert set(deletions(effects)) == {"r1"}


def test_R4_tick_limit_spreads_a_backlog_over_ticks() -> None:
    b = book()
    for i in range(25):
        b.record(rec(f"r{i}"), now_ms=T0)
    first = b.tick(DAY30, limit=10)
    assert len(deletions(first.effects)) == 10 and first.more
    second = b.tick(DAY30, limit=10)
    third = b.tick(DAY30, limit=10)
    assert len(deletions(second.effects)) == 10 and second.more
    assert len(deletions(third.effects)) == 5 and not third.more


def test_R4_expiry_is_exact_to_the_millisecond_whenever_a_record_is_scheduled() -> None:
    b = book()
    b.record(rec("a", created=T0 + 10), now_ms=T0)
    b.record(rec("b", created=T0 + 60_000 - 1), now_ms=T0)
    assert deletions(b.tick(DAY30 + 9).effects) == {}
    assert set(deletions(b.tick(DAY30 + 10).effects)) == {"a"}
    # A record scheduled after a tick passed its time is still exact.
    b.record(rec("c", created=T0 + 20), now_ms=DAY30 + 10)
    assert deletions(b.tick(DAY30 + 19).effects) == {}
    assert set(deletions(b.tick(DAY30 + 20).effects)) == {"c"}
    assert set(deletions(b.tick(DAY30 + 60_000).effects)) == {"b"}


def test_R4_rewritten_record_keeps_one_schedule_and_is_deleted_once() -> None:
    b = book()
    b.record(rec(offset=1), now_ms=T0)
    b.record(rec(offset=2), now_ms=T0 + 1)
    assert b.store.get("r1") is not None and b.store.get("r1").offset == 2  # type: ignore[union-attr]
    assert len(deletions(b.tick(DAY30).effects)) == 1


def test_R4_forget_drops_a_record_tombstoned_elsewhere() -> None:
    b = book()
    b.record(rec(), now_ms=T0)
    b.forget("r1")
    assert deletions(b.tick(DAY30).effects) == {}


# --- R7 ------------------------------------------------------------------------------------
def test_R7_contract_retention_of_90_days_replaces_the_30() -> None:
    b = book()
    effects = b.record(rec(days=90), now_ms=T0)
    assert notes(effects, Outcome.RETAINED)[0].rule_ids == ("R4", "R7")
    assert deletions(b.tick(DAY30).effects) == {}
    assert deletions(b.tick(T0 + 90 * DAY_MS - 1).effects) == {}
    gone = deletions(b.tick(T0 + 90 * DAY_MS).effects)["r1"]
    assert gone.reason == DeletionReason.CONTRACT_RETENTION_EXPIRED
    assert gone.rule_ids == ("R4", "R7")


def test_R7_shorter_contract_retention_is_honoured_too() -> None:
    b = book()
    b.record(rec(days=7), now_ms=T0)
    assert set(deletions(b.tick(T0 + 7 * DAY_MS).effects)) == {"r1"}


# --- R5 ------------------------------------------------------------------------------------
def test_R5_flag_at_day_29_keeps_the_record_past_day_30_and_reviews_it_once() -> None:
    b = book()
    b.record(rec(), now_ms=T0)
    effects = b.flag(flag(at=T0 + 29 * DAY_MS), now_ms=T0 + 29 * DAY_MS)
    assert reviews(effects) == [("f1", "r1")]
    held = b.tick(DAY30).effects
    assert deletions(held) == {}
    assert [n.rule_ids for n in notes(held, Outcome.HELD)] == [("R5", "R4")]
    assert deletions(b.tick(DAY30 + 40 * DAY_MS).effects) == {}
    assert b.is_held("r1")
    # The same flag again (replay) does not send the record to review twice.
    assert reviews(b.flag(flag(at=T0 + 29 * DAY_MS), now_ms=DAY30 + 41 * DAY_MS)) == []


def test_R5_release_after_day_30_deletes_at_once() -> None:
    b = book()
    b.record(rec(), now_ms=T0)
    b.flag(flag(at=T0 + 29 * DAY_MS), now_ms=T0 + 29 * DAY_MS)
    b.tick(DAY30)
    release_at = DAY30 + 5 * DAY_MS
    effects = b.flag(flag(action=FlagAction.RELEASE, at=release_at), now_ms=release_at)
    gone = deletions(effects)["r1"]
    assert gone.reason == DeletionReason.HOLD_RELEASED
    assert gone.rule_ids == ("R4", "R5")
    assert gone.deleted_at_ms == release_at
    assert notes(effects, Outcome.HOLD_RELEASED)


def test_R5_release_before_expiry_leaves_the_normal_30_days() -> None:
    b = book()
    b.record(rec(), now_ms=T0)
    b.flag(flag(at=T0 + DAY_MS), now_ms=T0 + DAY_MS)
    assert (
        deletions(b.flag(flag(action=FlagAction.RELEASE, at=T0 + 2 * DAY_MS), T0 + 2 * DAY_MS))
        == {}
    )
    assert deletions(b.tick(DAY30 - 1).effects) == {}
    assert deletions(b.tick(DAY30).effects)["r1"].reason == DeletionReason.EXPIRED


def test_R5_release_taking_effect_later_deletes_at_the_release_instant() -> None:
    b = book()
    b.record(rec(), now_ms=T0)
    b.flag(flag(at=T0 + DAY_MS), now_ms=T0 + DAY_MS)
    release_at = DAY30 + 3 * DAY_MS
    assert deletions(b.flag(flag(action=FlagAction.RELEASE, at=release_at), T0 + 2 * DAY_MS)) == {}
    assert deletions(b.tick(DAY30).effects) == {}
    assert deletions(b.tick(release_at - 1).effects) == {}
    gone = deletions(b.tick(release_at).effects)["r1"]
    assert gone.reason == DeletionReason.HOLD_RELEASED


def test_R5_flag_for_an_already_deleted_record_is_reported_not_found() -> None:
    b = book()
    b.record(rec(), now_ms=T0)
    b.tick(DAY30)
    effects = b.flag(flag(at=DAY30 + 1), now_ms=DAY30 + 1)
    missing = notes(effects, Outcome.NOT_FOUND_OR_EXPIRED)
    assert len(missing) == 1
    assert missing[0].subject_id == "r1" and missing[0].rule_ids == ("R5", "R4")
    assert reviews(effects) == [] and deletions(effects) == {}


def test_R5_only_the_partition_owning_the_request_reports_it() -> None:
    owner = owner_partition("r1", 6)
    reports = []
    for p in range(6):
        b = book(partition=p, partitions=6)
        reports.append(len(notes(b.flag(flag(at=T0), now_ms=T0), Outcome.NOT_FOUND_OR_EXPIRED)))
        # ... but every partition holds the flag, whatever partitioner placed the record.
        assert b.holds.covering("org-a", "key-a", "r1", T0)
    assert reports == [1 if p == owner else 0 for p in range(6)]


def test_R5_api_key_flag_over_a_window_covers_that_key_only() -> None:
    b = book()
    b.record(rec("in", key="k1", created=T0), now_ms=T0)
    b.record(rec("other-key", key="k2", created=T0), now_ms=T0)
    b.record(rec("outside", key="k1", created=T0 + 2 * DAY_MS), now_ms=T0)
    f = flag(scope=FlagScope.API_KEY, request_id=None, api_key_id="k1", start=T0, end=T0 + DAY_MS)
    effects = b.flag(f, now_ms=T0 + 3 * DAY_MS)
    assert reviews(effects) == [("f1", "in")]
    gone = deletions(b.tick(T0 + 40 * DAY_MS).effects)
    assert set(gone) == {"other-key", "outside"}


def test_R5_org_flag_reviews_records_arriving_later_in_its_window() -> None:
    b = book()
    f = flag(scope=FlagScope.ORG, request_id=None, start=T0, end=None)
    assert reviews(b.flag(f, now_ms=T0)) == []
    effects = b.record(rec("late", created=T0 + HOUR_MS), now_ms=T0 + HOUR_MS)
    assert reviews(effects) == [("f1", "late")]
    assert deletions(b.tick(T0 + 60 * DAY_MS).effects) == {}


def test_R5_each_flag_sends_its_own_review() -> None:
    b = book()
    b.record(rec(), now_ms=T0)
    assert reviews(b.flag(flag("f1"), now_ms=T0)) == [("f1", "r1")]
    assert reviews(b.flag(flag("f2"), now_ms=T0)) == [("f2", "r1")]
    assert b.store.get("r1").reviewed == ("f1", "f2")  # type: ignore[union-attr]
    # A record written again (router replay) keeps what was already reviewed.
    assert reviews(b.record(rec(offset=9), now_ms=T0)) == []


def test_R5_raise_after_release_is_ignored() -> None:
    b = book()
    b.record(rec(), now_ms=T0)
    b.flag(flag(action=FlagAction.RELEASE, at=T0), now_ms=T0)
    effects = b.flag(flag(at=T0), now_ms=T0)
    assert notes(effects, Outcome.IGNORED) and reviews(effects) == []
    assert set(deletions(b.tick(DAY30).effects)) == {"r1"}


def test_R5_R13_a_flag_never_reaches_another_org() -> None:
    b = book()
    b.record(rec("a", org="org-a"), now_ms=T0)
    b.record(rec("b", org="org-b"), now_ms=T0)
    f = flag(scope=FlagScope.ORG, org="org-a", request_id=None, start=0, end=None)
    assert reviews(b.flag(f, now_ms=T0)) == [("f1", "a")]
    assert set(deletions(b.tick(DAY30).effects)) == {"b"}


# --- R6 ------------------------------------------------------------------------------------
def test_R6_legal_hold_over_a_window_keeps_only_records_in_it() -> None:
    b = book()
    b.record(rec("before", created=T0 - 2 * DAY_MS), now_ms=T0)
    b.record(rec("inside", created=T0), now_ms=T0)
    b.record(rec("end", created=T0 + DAY_MS), now_ms=T0)  # the window is half-open
    effects = b.legal_hold(legal(at=T0 + 5 * DAY_MS), now_ms=T0 + 5 * DAY_MS)
    assert reviews(effects) == []  # a legal hold is not a misuse flag
    assert notes(effects, Outcome.HOLD_PLACED)[0].rule_ids == ("R6",)
    gone = deletions(b.tick(T0 + 60 * DAY_MS).effects)
    assert set(gone) == {"before", "end"}
    release_at = T0 + 70 * DAY_MS
    gone = deletions(b.legal_hold(legal(action=HoldAction.RELEASE, at=release_at), release_at))
    assert set(gone) == {"inside"}
    assert gone["inside"].rule_ids == ("R4", "R6")
    assert gone["inside"].reason == DeletionReason.HOLD_RELEASED


def test_R5_R6_overlapping_holds_keep_the_record_until_the_last_release() -> None:
    b = book()
    b.record(rec(), now_ms=T0)
    b.flag(flag(at=T0 + DAY_MS), now_ms=T0 + DAY_MS)
    b.legal_hold(legal(at=T0 + 2 * DAY_MS), now_ms=T0 + 2 * DAY_MS)
    f2 = flag("f2", scope=FlagScope.ORG, request_id=None, start=T0 - DAY_MS, end=T0 + DAY_MS)
    b.flag(f2, now_ms=T0 + 3 * DAY_MS)
    assert deletions(b.tick(DAY30 + DAY_MS).effects) == {}
    t = DAY30 + 2 * DAY_MS
    assert deletions(b.flag(flag(action=FlagAction.RELEASE, at=t), t)) == {}
    t += DAY_MS
    assert deletions(b.legal_hold(legal(action=HoldAction.RELEASE, at=t), t)) == {}
    assert deletions(b.tick(t + DAY_MS).effects) == {}
    t += 2 * DAY_MS
    gone = deletions(b.flag(replace_flag(f2, action=FlagAction.RELEASE, at_ms=t), t))["r1"]
    assert gone.rule_ids == ("R4", "R5", "R6")
    assert gone.deleted_at_ms == t


def replace_flag(f: MisuseFlag, **changes: Any) -> MisuseFlag:
    from dataclasses import replace

    return replace(f, **changes)


# --- R15 -----------------------------------------------------------------------------------
def test_R15_account_deletion_spares_only_the_legal_hold_until_its_release() -> None:
    b = book()
    b.record(rec("plain", created=T0 - 3 * DAY_MS), now_ms=T0)
    b.record(rec("held", created=T0), now_ms=T0)
    b.record(rec("flagged", created=T0 - 5 * DAY_MS), now_ms=T0)
    b.record(rec("other-org", org="org-b", created=T0), now_ms=T0)
    b.legal_hold(legal(start=T0, end=T0 + 1), now_ms=T0)
    b.flag(flag("f1", request_id="flagged"), now_ms=T0)
    t = T0 + 2 * DAY_MS
    effects = b.delete_account(deletion(at=t), now_ms=t)
    gone = deletions(effects)
    # R15 names legal holds as its only exception: the misuse-flagged record goes too.
    assert set(gone) == {"plain", "flagged"}
    assert all(d.reason == DeletionReason.ACCOUNT_DELETED for d in gone.values())
    assert all(d.rule_ids == ("R15",) for d in gone.values())
    assert notes(effects, Outcome.HELD)[0].subject_id == "held"
    assert notes(effects, Outcome.ACCOUNT_DELETION)[0].rule_ids == ("R15",)
    # A record of the org arriving later is deleted at once.
    late = b.record(rec("late", created=t + 1), now_ms=t + 2)
    assert deletions(late)["late"].reason == DeletionReason.ACCOUNT_DELETED
    # A misuse flag on the legal-held record does not send it to review (kept for legal only).
    assert reviews(b.flag(flag("f9", request_id="held"), now_ms=t + 3)) == []
    # Legal release: deleted at once, long before its 30 days.
    r = t + DAY_MS
    gone = deletions(b.legal_hold(legal(action=HoldAction.RELEASE, start=T0, end=T0 + 1, at=r), r))
    assert set(gone) == {"held"}
    assert gone["held"].rule_ids == ("R15", "R6")
    # R13: the other org keeps its 30 days.
    assert deletions(b.tick(T0 + 30 * DAY_MS - 1).effects) == {}
    assert set(deletions(b.tick(T0 + 30 * DAY_MS).effects)) == {"other-org"}


def test_R15_deletion_requested_for_the_future_waits_for_it() -> None:
    b = book()
    b.record(rec(), now_ms=T0)
    assert deletions(b.delete_account(deletion(at=T0 + DAY_MS), now_ms=T0)) == {}
    assert deletions(b.tick(T0 + DAY_MS - 1).effects) == {}
    assert set(deletions(b.tick(T0 + DAY_MS).effects)) == {"r1"}


# --- restarts ------------------------------------------------------------------------------
def test_R4_R5_R6_R15_state_rebuilt_from_the_store_decides_the_same() -> None:
    store = DictStore()
    b = book(store)
    b.record(rec("plain"), now_ms=T0)
    b.record(rec("flagged"), now_ms=T0)
    b.record(rec("legal", org="org-l"), now_ms=T0)
    b.record(rec("contract", days=90), now_ms=T0)
    b.record(rec("gone", org="org-d"), now_ms=T0)
    b.flag(flag(request_id="flagged"), now_ms=T0)
    b.legal_hold(legal(org="org-l"), now_ms=T0)
    b.delete_account(deletion(org="org-d", at=T0 + 1), now_ms=T0 + 1)
    b.tick(DAY30)  # parks the held ones
    again = book(store)  # a restart: only the store survives
    assert again.deletion_requested_at("org-d") == T0 + 1
    assert deletions(again.tick(DAY30 + DAY_MS).effects) == {}
    t = DAY30 + 2 * DAY_MS
    assert set(deletions(again.flag(flag(request_id="flagged", action="RELEASE", at=t), t))) == {
        "flagged"
    }
    assert reviews(again.flag(flag(request_id="flagged", at=t), t)) == []
    assert set(deletions(again.tick(T0 + 90 * DAY_MS).effects)) == {"contract"}
    assert len(again) == 1  # the legal hold stands


# --- input validation (R17) ----------------------------------------------------------------
def log_record(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "request_id": "r1",
        "org_id": "org-a",
        "api_key_id": "key-a",
        "created_at_ms": T0,
        "retention_days": 30,
        "consent_version": "c1",
        "prompt": "PII: secret prompt",
    }
    base.update(overrides)
    return base


def test_R17_log_record_validation() -> None:
    tracked = tracked_from_log_record(log_record(), "r1", partition=3, offset=42)
    assert (tracked.partition, tracked.offset, tracked.expires_at_ms) == (3, 42, DAY30)
    store = MemoryStore()
    BookStore(store, 3).put(tracked, tracked.expires_at_ms)
    assert all(b"secret" not in k + v for k, v in store.items())  # never content (R2)
    for bad, key in (
        (log_record(request_id=""), None),
        (log_record(), "other"),
        (log_record(org_id=""), "r1"),
        (log_record(retention_days=0), "r1"),
        (log_record(created_at_ms=0), "r1"),
    ):
        with pytest.raises(InvalidRecord):
            tracked_from_log_record(bad, key, 0, 0)


def test_R4_R17_unreadable_log_value_still_expires_30_days_after_receipt() -> None:
    b = book()
    b.record(untrusted_tracked("junk", 0, 7, received_at_ms=T0, config=CONFIG), now_ms=T0)
    assert deletions(b.tick(DAY30 - 1).effects) == {}
    assert deletions(b.tick(DAY30).effects)["junk"].rule_ids == ("R4",)


def test_tracked_encoding_round_trips() -> None:
    t = Tracked("r|1", "org\x1f", "k", 1, 30, 5, 99, ("f1", "f2"), "c")
    store = BookStore(MemoryStore(), 5)
    store.put(t, t.expires_at_ms)
    assert store.get("r|1") == t
    store.put(t)  # stored again (a review): keeps its due time
    assert store.due(t.expires_at_ms, 10) == [(t.expires_at_ms, "r|1")]
    with pytest.raises(ValueError, match="due time"):  # R4: never stored unscheduled
        store.put(Tracked("r|2", "org", "k", 1, 30, 5, 100, (), "c"))


# --- properties against a brute-force reference ------------------------------------------
STEP = HOUR_MS
STEPS = 24 * 5
ORGS = ("org-a", "org-b")
KEYS = ("k1", "k2")


@dataclass
class Timeline:
    events: list[tuple[int, str, Any]] = field(default_factory=list)  # (step, kind, payload)
    restarts: set[int] = field(default_factory=set)


_ORDER = {"place": 0, "release": 1, "delete": 2, "record": 3}


@st.composite
def timelines(draw: st.DrawFn) -> Timeline:
    timeline = Timeline()
    n_records = draw(st.integers(1, 12))
    for i in range(n_records):
        arrive = draw(st.integers(0, STEPS - 1))
        created = arrive - draw(st.integers(0, 30))  # the router may deliver late
        days = draw(st.integers(1, 2))
        org, key = draw(st.sampled_from(ORGS)), draw(st.sampled_from(KEYS))
        timeline.events.append((arrive, "record", (f"r{i}", org, key, created, days)))
    for j in range(draw(st.integers(0, 6))):
        kind = draw(st.sampled_from(["request", "key", "org", "legal"]))
        org = draw(st.sampled_from(ORGS))
        place = draw(st.integers(0, STEPS - 1))
        release = draw(st.one_of(st.none(), st.integers(0, STEPS - 1)))
        start = draw(st.integers(-30, STEPS))
        end = start + draw(st.integers(1, 60))
        target = (
            f"r{draw(st.integers(0, n_records - 1))}"
            if kind == "request"
            else draw(st.sampled_from(KEYS))
        )
        hold_id = f"h{j}"
        timeline.events.append((place, "place", (hold_id, kind, org, target, start, end)))
        if release is not None:
            timeline.events.append((release, "release", (hold_id, kind, org, target, start, end)))
    for org in ORGS:
        if draw(st.booleans()):
            timeline.events.append((draw(st.integers(0, STEPS - 1)), "delete", org))
    # Within one instant: holds placed, then released, then deletions, then arrivals.
    timeline.events.sort(key=lambda e: (e[0], _ORDER[e[1]]))
    timeline.restarts = set(draw(st.lists(st.integers(0, STEPS - 1), max_size=3)))
    return timeline


def _hold_messages(payload: tuple[Any, ...], action: str, step: int) -> MisuseFlag | LegalHold:
    hold_id, kind, org, target, start, end = payload
    at = T0 + step * STEP
    if kind == "legal":
        act = HoldAction.PLACE if action == "place" else HoldAction.RELEASE
        return LegalHold(hold_id, act, org, T0 + start * STEP, T0 + end * STEP, "m", at)
    flag_act = FlagAction.RAISE if action == "place" else FlagAction.RELEASE
    if kind == "request":
        return MisuseFlag(
            hold_id, flag_act, FlagScope.REQUEST, org, target, None, None, None, "x", at
        )
    scope = FlagScope.API_KEY if kind == "key" else FlagScope.ORG
    api_key = target if kind == "key" else None
    return MisuseFlag(
        hold_id, flag_act, scope, org, None, api_key, T0 + start * STEP, T0 + end * STEP, "x", at
    )


def run_book(timeline: Timeline) -> tuple[dict[str, tuple[int, Deletion]], list[Effect]]:
    """Feed the timeline to a book on the job's store adapter (ticking every step,
    restarting where drawn: the store rebuilt from its changelog, as a worker does)."""
    changelog: dict[bytes, bytes] = {}

    def restored() -> RetentionBook:
        return book(BookStore(MemoryStore(changelog), 0))

    def commit() -> None:
        for key, value in b.store.kv.take_changes().items():  # type: ignore[attr-defined]
            if value is None:
                changelog.pop(key, None)
            else:
                changelog[key] = value

    b = restored()
    by_step: dict[int, list[tuple[int, str, Any]]] = {}
    for event in timeline.events:
        by_step.setdefault(event[0], []).append(event)
    deleted: dict[str, tuple[int, Deletion]] = {}
    everything: list[Effect] = []
    for step in range(STEPS + 24 * 4):
        now = T0 + step * STEP
        if step in timeline.restarts:
            commit()
            b = restored()
        effects: list[Effect] = []
        for _, kind, payload in by_step.get(step, []):
            if kind == "record":
                rid, org, key, created, days = payload
                effects += b.record(
                    rec(rid, org=org, key=key, created=T0 + created * STEP, days=days), now
                )
            elif kind == "delete":
                effects += b.delete_account(deletion(org=payload, at=now), now)
            else:
                message = _hold_messages(payload, kind, step)
                if isinstance(message, LegalHold):
                    effects += b.legal_hold(message, now)
                else:
                    effects += b.flag(message, now)
        while True:
            result = b.tick(now, limit=5)
            effects += result.effects
            if not result.more:
                break
        commit()
        for d in deletions(effects).values():
            assert d.record.request_id not in deleted, "deleted twice"
            deleted[d.record.request_id] = (step, d)
        everything += effects
    return deleted, everything


def reference(timeline: Timeline) -> dict[str, int]:
    """Brute force: the first step at which each record is due, present and not held."""
    arrivals = {p[0]: (step, p) for step, kind, p in timeline.events if kind == "record"}
    deletions_at = {org: step for step, kind, org in timeline.events if kind == "delete"}
    holds: list[tuple[int, int | None, tuple[Any, ...]]] = []
    released: dict[str, int] = {}
    for step, kind, p in timeline.events:
        if kind == "release" and p[0] not in released:
            released[p[0]] = step
    for step, kind, p in timeline.events:
        if kind == "place":
            rel = released.get(p[0])
            if rel is not None and rel <= step:
                continue  # a release already seen wins over the raise
            holds.append((step, rel, p))
    result: dict[str, int] = {}
    for rid, (arrive, (_, org, key, created, days)) in arrivals.items():
        due = created + days * 24
        deleted_org = deletions_at.get(org)
        for step in range(arrive, STEPS + 24 * 4):
            org_deleted_now = deleted_org is not None and deleted_org <= step
            if step < (min(due, step) if org_deleted_now else due):
                continue
            blocked = False
            for placed, rel, (_, kind, horg, target, start, end) in holds:
                if horg != org or placed > step or (rel is not None and rel <= step):
                    continue
                if org_deleted_now and kind != "legal":
                    continue
                if kind == "request":
                    # A REQUEST flag after the record's deletion catches nothing: covered by
                    # construction because we stop at the first deletable step.
                    covers = target == rid
                elif kind == "key":
                    covers = target == key and start <= created < end
                else:
                    covers = start <= created < end
                blocked = blocked or covers
            if not blocked:
                result[rid] = step
                break
    return result


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(timelines())
def test_R4_R5_R6_R7_R15_book_matches_the_reference_across_restarts(timeline: Timeline) -> None:
    """Every record is deleted exactly once, at the first instant it is due and unheld;
    held records are never deleted; nothing expires before its retention; restarts change
    nothing."""
    deleted, effects = run_book(timeline)
    expected = reference(timeline)
    assert {rid: step for rid, (step, _) in deleted.items()} == expected
    arrivals = {p[0]: p for _, kind, p in timeline.events if kind == "record"}
    for rid, (step, d) in deleted.items():
        _, org, _, created, days = arrivals[rid]
        if d.reason != DeletionReason.ACCOUNT_DELETED:
            assert step >= created + days * 24  # nothing expires before its retention (R4/R7)
        assert "R15" in d.rule_ids or "R4" in d.rule_ids
    # R5: at most one review per (flag, record), and only of records retained at the time.
    pairs = reviews(effects)
    assert len(pairs) == len(set(pairs))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(timelines())
def test_R16_every_effect_audits_with_rule_ids_and_no_content(timeline: Timeline) -> None:
    _, effects = run_book(timeline)
    for effect in effects:
        rules = effect.rule_ids
        assert rules and all(r.startswith("R") for r in rules)
        if isinstance(effect, Note):
            assert effect.routes and effect.reasons
            assert not any("PII" in text for text in effect.reasons)


def test_R5_flag_arriving_at_day_30_before_the_tick_still_catches_the_record() -> None:
    b = book()
    b.record(rec(), now_ms=T0)
    assert reviews(b.flag(flag(at=DAY30), now_ms=DAY30)) == [("f1", "r1")]
    assert deletions(b.tick(DAY30).effects) == {}


# --- the job's state adapter and clock (in-process fakes) -------------------------------------
def test_R4_R5_R15_book_store_indexes_find_only_what_is_asked() -> None:
    """The job's store: an org's records by creation window, the schedule in time order,
    and a restart from the changelog that decides the same (R4, R5, R6, R15)."""
    kv = MemoryStore()
    store = BookStore(kv, 0)
    b = RetentionBook(CONFIG, store, partition=0)
    for i in range(5):
        b.record(rec(f"a{i}", org="org-a", created=T0 + i), now_ms=T0)
        b.record(rec(f"b{i}", org="org-b", created=T0 + i), now_ms=T0)
    b.record(rec("ab", org="org-a\0b", created=T0), now_ms=T0)  # shares the prefix "org-a"
    assert {r.request_id for r in store.scan("org-a")} == {f"a{i}" for i in range(5)}
    assert {r.request_id for r in store.scan("org-a", T0 + 1, T0 + 3)} == {"a1", "a2"}
    assert [rid for _, rid in store.due(DAY30 + 1, 3)] == ["a0", "ab", "b0"]
    assert store.due(DAY30 - 1, 10) == []
    b.legal_hold(legal(org="org-b"), now_ms=T0)
    changelog = {k: v for k, v in kv.take_changes().items() if v is not None}
    # Restart from the changelog: same holds, same schedule.
    again = RetentionBook(CONFIG, BookStore(MemoryStore(changelog), 0), partition=0)
    assert set(deletions(again.tick(DAY30 + 10).effects)) == {f"a{i}" for i in range(5)} | {"ab"}
    assert {r.request_id for r in again.store.scan("org-a")} == set()
    assert again.is_held("b0") and len(again) == 5


def test_R5_R6_released_holds_are_pruned_and_not_applied_again() -> None:
    """A hold released a day ago is forgotten (memory stays bounded by the holds in force);
    its facts stay filed, so reading the flag again does not place it again (R5, R6)."""
    store = DictStore()
    b = book(store)
    b.record(rec("r1"), now_ms=T0)
    raised = flag()
    b.flag(raised, now_ms=T0)
    b.flag(flag(action=FlagAction.RELEASE, at=T0 + DAY_MS), now_ms=T0 + DAY_MS)
    assert b.prune_released(T0 + DAY_MS + 1) == 0
    assert b.prune_released(T0 + 2 * DAY_MS) == 1
    assert b.released_hold("org-a", "misuse", "f1") is None
    assert b.has_applied(raised)
    again = book(store)
    assert not again.holds.covering("org-a", "key-a", "r1", T0, "")
    assert set(deletions(again.tick(DAY30).effects)) == {"r1"}


def test_R4_file_clock_moves_forward_only(tmp_path: Any) -> None:
    from streams.kafka.runtime import FileClock, write_clock

    path = tmp_path / "clock"
    clock = FileClock(path, cache_s=0.0)
    assert clock() > T0 - 10 * 365 * DAY_MS  # no file: wall-clock time
    write_clock(path, DAY30 * 2)
    assert clock() == DAY30 * 2
    write_clock(path, DAY30)  # never backwards
    assert clock() == DAY30 * 2
    path.write_text("not a number")
    assert clock() == DAY30 * 2
