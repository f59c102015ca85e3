"""R5 / R6 / R13: which misuse flags and legal holds cover a request."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from streams.policy.holds import HoldIndex, hold_from_flag, hold_from_legal
from streams.policy.models import FlagAction, FlagScope, HoldAction, LegalHold, MisuseFlag
from tests.unit.strategies import PROPS, flag, legal_hold, legal_holds, misuse_flags, small_times

RAISE, RELEASE = FlagAction.RAISE.value, FlagAction.RELEASE.value
PLACE, LIFT = HoldAction.PLACE.value, HoldAction.RELEASE.value


def ids(holds: Any) -> set[str]:
    return {h.hold_id for h in holds}


def index_of(*events: MisuseFlag | LegalHold) -> HoldIndex:
    index = HoldIndex()
    for event in events:
        if isinstance(event, MisuseFlag):
            index.apply_flag(event)
        else:
            index.apply_legal_hold(event)
    return index


# --- scopes ---------------------------------------------------------------------------


def test_r5_request_scope_covers_only_the_named_request_whatever_its_time() -> None:
    """R5: a REQUEST-scope flag holds exactly that request, with no window."""
    index = index_of(flag("f", scope=FlagScope.REQUEST.value, request_id="req-1"))
    for t in (1, 10**6, 10**13):
        assert ids(index.covering("org-a", "key-any", "req-1", t)) == {"f"}
    assert index.covering("org-a", "key-any", "req-2", 10**6) == ()


def test_r5_request_scope_ignores_any_window_it_carries() -> None:
    """R5: a window on a REQUEST-scope flag does not narrow it (fail closed)."""
    index = index_of(
        flag("f", scope="REQUEST", request_id="req-1", window_start_ms=10, window_end_ms=20)
    )
    assert ids(index.covering("org-a", "k", "req-1", 500)) == {"f"}


def test_r5_api_key_scope_half_open_window() -> None:
    """R5: an API_KEY flag holds that key's requests created in [start, end)."""
    index = index_of(
        flag("f", scope="API_KEY", api_key_id="key-1", window_start_ms=100, window_end_ms=200)
    )
    assert ids(index.covering("org-a", "key-1", "r", 100)) == {"f"}  # start included
    assert ids(index.covering("org-a", "key-1", "r", 199)) == {"f"}
    assert index.covering("org-a", "key-1", "r", 200) == ()  # end excluded
    assert index.covering("org-a", "key-1", "r", 99) == ()
    assert index.covering("org-a", "key-2", "r", 150) == ()  # another key


def test_r5_missing_window_bounds_mean_open_ended() -> None:
    """R5: a flag without a window end stands "until further notice"; without start, from 0."""
    index = index_of(
        flag("open-end", scope="API_KEY", api_key_id="key-1", window_start_ms=100),
        flag("open-start", scope="ORG", window_end_ms=50),
    )
    assert ids(index.covering("org-a", "key-1", "r", 10**15)) == {"open-end"}
    assert ids(index.covering("org-a", "key-9", "r", 0)) == {"open-start"}
    assert index.covering("org-a", "key-9", "r", 50) == ()


def test_r5_org_scope_flag_covers_every_key_in_window() -> None:
    """R5: an ORG-scope flag holds every request of the org created in its window."""
    index = index_of(flag("f", scope="ORG", window_start_ms=10, window_end_ms=20))
    assert ids(index.covering("org-a", "key-1", "r1", 10)) == {"f"}
    assert ids(index.covering("org-a", "key-2", "r2", 19)) == {"f"}
    assert index.covering("org-a", "key-1", "r1", 20) == ()


def test_r6_legal_hold_half_open_window_and_kind() -> None:
    """R6: a legal hold covers every record of its org created in [start, end), kind "legal"."""
    index = index_of(legal_hold("L", window_start_ms=100, window_end_ms=200))
    (hold,) = index.covering("org-a", "any-key", "any-req", 100)
    assert hold.kind == "legal" and hold.scope == FlagScope.ORG
    assert index.covering("org-a", "k", "r", 200) == ()
    assert index.covering("org-a", "k", "r", 99) == ()


def test_r5_r6_covering_filters_by_kind() -> None:
    """R5/R6: the router asks for misuse holds only (R9); retention asks for any."""
    index = index_of(
        flag("F", scope="ORG", window_start_ms=0, window_end_ms=1000),
        legal_hold("L", window_start_ms=0, window_end_ms=1000),
    )
    assert ids(index.covering("org-a", "k", "r", 5)) == {"F", "L"}
    assert ids(index.covering("org-a", "k", "r", 5, "misuse")) == {"F"}
    assert ids(index.covering("org-a", "k", "r", 5, "legal")) == {"L"}


def test_r5_r6_hold_builders_keep_identity_and_reason() -> None:
    """R5/R6: holds built from flags and legal holds keep ids, org, reason and placement time."""
    h = hold_from_flag(flag("f", scope="API_KEY", api_key_id="k", window_start_ms=3, at_ms=9))
    assert (h.kind, h.hold_id, h.org_id, h.api_key_id, h.window_start_ms, h.placed_at_ms) == (
        "misuse",
        "f",
        "org-a",
        "k",
        3,
        9,
    )
    assert h.window_end_ms > 10**15
    lh = hold_from_legal(legal_hold("L", at_ms=11))
    assert (lh.kind, lh.reason, lh.placed_at_ms, lh.request_id, lh.api_key_id) == (
        "legal",
        "matter-1",
        11,
        None,
        None,
    )


# --- raise / release ---------------------------------------------------------------------


def test_r5_release_removes_the_hold_and_records_when() -> None:
    """R5: a released flag no longer covers; its release time is kept."""
    index = HoldIndex()
    placed = index.apply_flag(flag("f", scope="REQUEST", request_id="r"))
    assert placed is not None and placed.hold_id == "f"
    released = index.apply_flag(flag("f", action=RELEASE, scope="REQUEST", at_ms=777))
    assert released == placed
    assert index.covering("org-a", "k", "r", 1) == ()
    assert index.released_at("f") == 777
    assert index.active() == ()


def test_r5_release_of_unknown_flag_returns_none() -> None:
    """R5: releasing something never raised is harmless and reported as None."""
    index = HoldIndex()
    assert index.apply_flag(flag("nope", action=RELEASE)) is None
    assert index.apply_legal_hold(legal_hold("nope", action=LIFT)) is None


@pytest.mark.parametrize("kind", ["misuse", "legal"])
def test_r5_r6_release_wins_over_replayed_raise(kind: str) -> None:
    """R5/R6: after a release, replaying the raise (compacted-topic replay) does not re-hold."""
    if kind == "misuse":
        raise_ = flag("x", scope="ORG", window_start_ms=0, window_end_ms=100)
        release = flag("x", action=RELEASE, scope="ORG")
    else:
        raise_ = legal_hold("x", window_start_ms=0, window_end_ms=100)
        release = legal_hold("x", action=LIFT)
    index = index_of(raise_, release, raise_)
    assert index.covering("org-a", "k", "r", 5) == ()
    # and reordered: the release seen first, the raise later
    assert index_of(release, raise_).covering("org-a", "k", "r", 5) == ()


def test_r5_replayed_raise_is_idempotent() -> None:
    """R5: raising the same flag twice keeps one hold."""
    f = flag("f", scope="ORG", window_start_ms=0, window_end_ms=10)
    index = index_of(f, f)
    assert len(index.active("org-a")) == 1


def test_r6_legal_hold_release_then_r4_applies() -> None:
    """R6: a released legal hold no longer covers its window."""
    index = index_of(legal_hold("L"), legal_hold("L", action=LIFT, at_ms=42))
    assert index.covering("org-a", "k", "r", legal_hold().window_start_ms) == ()
    assert index.released_at("L") == 42


def test_r5_r6_r13_released_at_by_org_and_kind() -> None:
    """R5/R6/R13: release times are kept per org and kind; asking by id alone gives the latest."""
    index = index_of(
        flag("x", action=RELEASE, org_id="org-a", at_ms=10),
        legal_hold("x", action=LIFT, org_id="org-b", at_ms=30),
    )
    assert index.released_at("x", org_id="org-a") == 10
    assert index.released_at("x", org_id="org-b") == 30
    assert index.released_at("x", kind="misuse") == 10
    assert index.released_at("x", org_id="org-a", kind="legal") is None
    assert index.released_at("x") == 30
    assert index.released_at("never") is None


def test_r5_r6_misuse_release_never_lifts_a_legal_hold_with_the_same_id() -> None:
    """R6 (fail closed): trust & safety and legal number their ids independently; releasing
    misuse flag "7" must not lift legal hold "7", nor the reverse."""
    index = index_of(
        legal_hold("7", window_start_ms=0, window_end_ms=100),
        flag("7", scope="ORG", window_start_ms=0, window_end_ms=100),
    )
    assert ids(index.covering("org-a", "k", "r", 5, "legal")) == {"7"}
    assert ids(index.covering("org-a", "k", "r", 5, "misuse")) == {"7"}
    index.apply_flag(flag("7", action=RELEASE, scope="ORG"))
    assert ids(index.covering("org-a", "k", "r", 5, "legal")) == {"7"}
    assert index.covering("org-a", "k", "r", 5, "misuse") == ()
    index2 = index_of(
        flag("7", scope="ORG", window_start_ms=0, window_end_ms=100),
        legal_hold("7", window_start_ms=0, window_end_ms=100),
        legal_hold("7", action=LIFT),
    )
    assert ids(index2.covering("org-a", "k", "r", 5, "misuse")) == {"7"}
    assert index2.covering("org-a", "k", "r", 5, "legal") == ()


# --- R13 org isolation ----------------------------------------------------------------------


def test_r13_holds_never_reach_across_orgs() -> None:
    """R13: the same request id, API key id or window in another org is not covered."""
    index = index_of(
        flag("f1", scope="REQUEST", request_id="req-1"),
        flag("f2", scope="API_KEY", api_key_id="key-1", window_start_ms=0),
        flag("f3", scope="ORG", window_start_ms=0),
        legal_hold("L", window_start_ms=0, window_end_ms=10**15),
    )
    assert ids(index.covering("org-a", "key-1", "req-1", 5)) == {"f1", "f2", "f3", "L"}
    assert index.covering("org-b", "key-1", "req-1", 5) == ()
    assert index.active("org-b") == ()
    for h in index.active():
        assert h.covers("org-b", "key-1", "req-1", 5) is False


def test_r13_release_in_another_org_never_releases_or_blocks_this_orgs_hold() -> None:
    """R13: a release for org B never lifts, nor pre-empts, org A's hold that shares its id."""
    a_raise = flag("dup", scope="ORG", org_id="org-a", window_start_ms=0)
    b_release = flag("dup", action=RELEASE, scope="ORG", org_id="org-b")
    for order in ((a_raise, b_release), (b_release, a_raise)):
        index = index_of(*order)
        assert ids(index.covering("org-a", "k", "r", 5)) == {"dup"}, order
    legal_a = legal_hold("L", org_id="org-a")
    legal_b_lift = legal_hold("L", org_id="org-b", action=LIFT)
    for order in ((legal_a, legal_b_lift), (legal_b_lift, legal_a)):
        index = index_of(*order)
        assert ids(index.covering("org-a", "k", "r", legal_a.window_start_ms)) == {"L"}


QUERIES = [
    (key, req, t) for key in ("key-1", "key-2") for req in ("req-1", "req-2") for t in range(-1, 42)
]


def coverage(index: HoldIndex, org: str) -> dict[tuple[str, str, int], set[tuple[str, str]]]:
    return {
        (key, req, t): {(h.kind, h.hold_id) for h in index.covering(org, key, req, t)}
        for key, req, t in QUERIES
    }


@PROPS
@given(
    st.lists(st.one_of(misuse_flags(st.just("org-a")), legal_holds(st.just("org-a"))), max_size=8),
    st.lists(
        st.one_of(misuse_flags(st.sampled_from(("org-b", "org-c"))), legal_holds()),
        max_size=8,
    ),
    st.data(),
)
def test_r13_property_other_orgs_holds_never_change_this_orgs_coverage(
    mine: list[Any], others: list[Any], data: st.DataObject
) -> None:
    """R13: flags/holds (raise or release) of other orgs, interleaved anyhow and reusing the
    same ids, never change which holds cover org A's requests."""
    others = [e for e in others if e.org_id != "org-a"]
    alone = index_of(*mine)
    # interleave the other orgs' events anywhere, keeping org A's own order
    merged: list[Any] = list(mine)
    for event in others:
        merged.insert(data.draw(st.integers(0, len(merged))), event)
    assert coverage(index_of(*merged), "org-a") == coverage(alone, "org-a")


@PROPS
@given(
    st.lists(st.one_of(misuse_flags(st.just("org-a")), legal_holds(st.just("org-a"))), max_size=10),
    st.data(),
)
def test_r5_r6_property_release_wins_in_any_order(events: list[Any], data: st.DataObject) -> None:
    """R5/R6: with one raise per id, the active holds are those raised and never released,
    whatever order the events arrive in (a release always wins over its raise)."""
    raises: dict[tuple[str, str], Any] = {}
    released: set[tuple[str, str]] = set()
    kept: list[Any] = []
    for e in events:
        kind = "misuse" if isinstance(e, MisuseFlag) else "legal"
        is_raise = e.action in (RAISE, PLACE)
        if is_raise:
            if (kind, e.hold_id if kind == "legal" else e.flag_id) in raises:
                continue  # one payload per id so "which raise wins" is not in question
            raises[(kind, e.hold_id if kind == "legal" else e.flag_id)] = e
        else:
            released.add((kind, e.hold_id if kind == "legal" else e.flag_id))
        kept.append(e)
    index = index_of(*data.draw(st.permutations(kept)))
    assert {(h.kind, h.hold_id) for h in index.active("org-a")} == set(raises) - released


@PROPS
@given(misuse_flags(st.just("org-a")), small_times)
def test_r5_property_covers_is_the_half_open_window(f: MisuseFlag, t: int) -> None:
    """R5: outside REQUEST scope, a raised flag covers exactly [start, end) of its key/org."""
    f = replace(f, action=RAISE)
    index = index_of(f)
    start = f.window_start_ms if f.window_start_ms is not None else 0
    end = f.window_end_ms if f.window_end_ms is not None else 2**62
    for key in ("key-1", "key-2"):
        covered = bool(index.covering("org-a", key, "req-1", t))
        if f.scope == FlagScope.REQUEST:
            expected = f.request_id == "req-1"
        elif f.scope == FlagScope.API_KEY:
            expected = key == f.api_key_id and start <= t < end
        else:
            expected = start <= t < end
        assert covered == expected


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"action": "RAIZE"}, "unknown flag action"),
        ({"scope": "PLANET"}, "unknown flag scope"),
        ({"request_id": None}, "REQUEST flag without request_id"),
        ({"org_id": ""}, "empty flag_id or org_id"),
    ],
)
def test_validate_flag_rejects_unknown_values_fail_closed_R17_R5(
    changes: dict[str, object], reason: str
) -> None:
    """R17/R5: an unknown action is rejected (dead letter), never read as a release."""
    from streams.policy.holds import validate_flag
    from streams.policy.models import InvalidRecord

    record = {
        "flag_id": "f",
        "action": "RAISE",
        "scope": "REQUEST",
        "org_id": "o",
        "request_id": "r",
        "api_key_id": None,
        "window_start_ms": None,
        "window_end_ms": None,
        "reason": "abuse",
        "at_ms": 1,
    }
    record.update(changes)
    with pytest.raises(InvalidRecord) as caught:
        validate_flag(record)
    assert caught.value.reason == reason


def test_validate_legal_hold_rejects_empty_window_and_unknown_action_R17_R6() -> None:
    """R17/R6: a legal hold with an unknown action or an empty window is rejected."""
    from streams.policy.holds import validate_legal_hold
    from streams.policy.models import InvalidRecord

    good = {
        "hold_id": "h",
        "action": "PLACE",
        "org_id": "o",
        "window_start_ms": 1,
        "window_end_ms": 2,
        "matter": "m",
        "at_ms": 1,
    }
    assert validate_legal_hold(good).hold_id == "h"
    for bad in ({**good, "action": "LIFT"}, {**good, "window_end_ms": 1}):
        with pytest.raises(InvalidRecord):
            validate_legal_hold(bad)
